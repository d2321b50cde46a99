"""service/memory.py: with tune_malloc a new thread allocates from the main arena (no per-thread arena whose
heaps are created and deleted with every request's big blocks); samclip-serve applies it per the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service import __main__ as cli
from service import memory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc: Linux only")

# Counts the malloc arenas (glibc malloc_info's <heap nr=...> elements) while a new thread holds a 1 MiB block.
ARENAS = """
import ctypes, ctypes.util, os, sys, tempfile, threading
import numpy as np
if sys.argv[1] == "tuned":
    from service.memory import tune_malloc
    assert tune_malloc()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
held, ready, release = [], threading.Event(), threading.Event()
def worker():
    held.append(np.ones(1 << 18, np.float32))
    ready.set(); release.wait()
thread = threading.Thread(target=worker); thread.start(); ready.wait()
path = os.path.join(tempfile.mkdtemp(), "info.xml")
handle = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, handle); libc.fclose(handle)
release.set(); thread.join()
print(open(path).read().count("<heap nr="))
"""


def _arenas(mode: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", ARENAS, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(run.stdout.strip())


def test_tuned_threads_share_the_main_arena() -> None:
    assert _arenas("default") >= 2  # glibc's default: the thread got an arena of its own
    assert _arenas("tuned") == 1


def test_samclip_serve_applies_it_per_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[int] = []
    monkeypatch.setattr(cli, "tune_malloc", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli, "ensure_bundle", lambda settings: tmp_path)
    monkeypatch.setattr("service.server.serve", lambda app, settings: None)
    monkeypatch.setattr("service.main.create_app", lambda settings: None)
    monkeypatch.setenv("SAMCLIP_MALLOC_TUNING", "false")
    assert cli.main([]) == 0 and calls == []
    monkeypatch.setenv("SAMCLIP_MALLOC_TUNING", "true")
    assert cli.main([]) == 0 and calls == [1]


def test_no_glibc_means_nothing_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory.sys, "platform", "darwin")
    assert memory.tune_malloc() is False
