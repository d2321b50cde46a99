"""How many CPUs this process may really use, for thread-pool defaults in a container.

`os.cpu_count()` reports the host's cores, which oversubscribes a container limited to a few of them. The
usable count is the minimum of

- the scheduler affinity mask (`os.sched_getaffinity(0)`: cpusets, `taskset`, Kubernetes static CPU manager),
- the CFS bandwidth quota, rounded up: cgroup v2 `/sys/fs/cgroup/cpu.max` ("QUOTA PERIOD" or "max PERIOD"),
  or cgroup v1 `cpu.cfs_quota_us / cpu.cfs_period_us` (Kubernetes `resources.limits.cpu`).

Every backend uses the same rule so that `intra_op_threads = 0` ("auto") means the same thing everywhere:
one inference thread pool sized to the usable CPUs, one stream (latency), and no inter-op parallelism.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
_CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _affinity_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """CPUs allowed by the cgroup CFS quota (e.g. 1.5), or None when unlimited or unknown.

    root: a directory standing in for `/sys/fs/cgroup` (tests); the real files are read when None.
    """
    v2 = (root / "cpu.max") if root else _CGROUP_V2
    v1q = (root / "cpu" / "cpu.cfs_quota_us") if root else _CGROUP_V1_QUOTA
    v1p = (root / "cpu" / "cpu.cfs_period_us") if root else _CGROUP_V1_PERIOD
    try:
        if v2.is_file():
            quota, _, period = v2.read_text().strip().partition(" ")
            if quota == "max":
                return None
            return int(quota) / int(period or 100000)
        if v1q.is_file() and v1p.is_file():
            quota_us = int(v1q.read_text().strip())
            return None if quota_us <= 0 else quota_us / int(v1p.read_text().strip())
    except (OSError, ValueError):
        return None
    return None


def available_cpus(root: Path | None = None) -> int:
    """Usable CPUs: min(affinity mask, ceil(cgroup quota)), at least 1."""
    count = _affinity_count()
    quota = cgroup_cpu_quota(root)
    if quota is not None and quota > 0:
        count = min(count, max(1, math.ceil(quota)))
    return count


def resolve_threads(requested: int | None, root: Path | None = None) -> int:
    """Thread count for an inference pool: `requested` when > 0, else `available_cpus()`."""
    if requested and requested > 0:
        return int(requested)
    return available_cpus(root)
