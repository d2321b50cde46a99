"""glibc malloc settings for the serving process (setting `malloc_tuning`, applied by `samclip-serve` before any
worker thread starts).

Every mask of a request allocates original-size temporaries (a 2250 x 1500 photo: a 13.5 MB float32 map and the
3.4 MB mask) on the thread that runs the task; the JSON is rendered on another. With glibc's defaults each such
thread gets its own malloc arena made of 64 MiB heaps, and a request's big blocks fill a heap that is deleted
again once they are freed: the next request maps fresh memory and takes a page fault per 4 KiB page of its mask
(824 per 2250 x 1500 mask). On the virtual machines measured here such faults sometimes cost ~12 us each, and a
process then stays in that state: a cached 4-box `/segment/prompt` spent 28-55 ms in post-processing instead of
9.5-11 ms (9 of 15 server starts; 0 of 6 with these settings, and no page fault in the mask step).

`tune_malloc()` therefore makes every thread share the main arena (M_ARENA_MAX 1), keeps freed memory for reuse
instead of handing it back to the kernel below 1 GiB at the top of the heap (M_TRIM_THRESHOLD), and serves
blocks below 64 MiB from the heap (M_MMAP_THRESHOLD): the process's memory then stays at its high-water mark,
as with the allocators model servers often preload (jemalloc, tcmalloc). Not glibc (musl, macOS): nothing done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("service.memory")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h>
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, 64 << 20), (M_TRIM_THRESHOLD, 1 << 30))


def tune_malloc() -> bool:
    """Apply SETTINGS with glibc's mallopt; True when every one was accepted, False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (e.g. musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    accepted = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    log.info("malloc tuning (one arena, no trim below 1 GiB, mmap above 64 MiB): %s", accepted)
    return accepted
