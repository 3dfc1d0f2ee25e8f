"""The C allocator of a long-running learner: settings that keep its arenas from growing, and a memory split
that tells a leak from fragmentation.

Why (issue 16). A serving learner's RSS crept ~2 MB/min for as long as it ran (60-minute soak: +2.06 MB/min,
95% CI 1.87 to 2.24) while nothing live grew: live JAX arrays, publishing, evaluations and the ingest path's
objects each measured flat or bounded. A probe of glibc's `mallinfo2` in the soak's learner (20 minutes, 64
clients) split it: once every bounded window was full (minute ~11), the bytes malloc had handed out stayed
flat (+0.1 MB/min, 95% CI -0.8 to +1.0) while its arenas grew +5.0 MB/min (4.0 to 6.0) — fragmentation. Each
gRPC handler thread allocates from its own arena (glibc makes up to 8 per core), and glibc's mmap threshold
is dynamic: once a large block (a multi-MB batch column, the dataset_info text) is freed, blocks up to that
size come from the arenas too, so every upload's and every batch's transient buffers (tens of KB to MBs) are
carved out of arenas between longer-lived small objects, and the holes they leave are never the right size
again. Handing free pages back (`malloc_trim(0)` every minute) did not help: 20-40 MB released per trim,
back within the minute, the slope unchanged (+1.81 MB/min over the later half of a 25-minute soak).

What does (`configure_allocator`'s settings, measured given as MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072;
20-minute soaks on one machine, minutes 11-20, 30-s probe samples): at most 2 arenas, and a fixed 128 KiB mmap
threshold, so every block of 128 KiB or more is its own mapping, returned to the OS the moment it is freed.
The arenas then stayed at 761 MB, flat from minute 1 (default: 1,188 MB, climbing +5.0 MB/min); malloc in use
415 MB, flat (the large blocks moved to mmap); RSS 2,779 MB on average (default 2,878) with a per-minute
later-half slope of +0.18 MB/min (95% CI -1.43 to +1.79; default +1.22, 0.18 to 2.26). What it costs: an
mmap/munmap pair and fresh page faults per large block (the learner's batch columns), and handler threads
sharing 2 arenas' locks. The soak's acks/s were 98.8, against 106.6 and 98.9 for two runs with the default
allocator (one of them trimming: the run-to-run spread); ack p99 1.30 s against 1.27 and 1.13.

The learner's entry points (`experiments.train`, `experiments.serve`, ingest replicas) call
`configure_allocator()` first thing. A setting the operator gave in the environment (MALLOC_ARENA_MAX,
MALLOC_MMAP_THRESHOLD_) is theirs and is left alone. Not glibc (macOS, musl): nothing to set, nothing done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Any

ARENA_MAX = 2  # malloc arenas for the whole process (glibc's default: 8 per core)
MMAP_THRESHOLD = 128 * 1024  # bytes: blocks this large or larger are mmapped, and unmapped when freed
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # mallopt's parameter numbers (glibc malloc.h)
_ENV = {"arena_max": "MALLOC_ARENA_MAX", "mmap_threshold": "MALLOC_MMAP_THRESHOLD_"}

_LIBC: Any = None
_LOOKED_UP = False


class _Mallinfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (2.33+; size_t fields, so no wrap at 4 GB as with mallinfo)."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    """The C library when it is glibc with `mallopt` and `mallinfo2`, else None."""
    global _LIBC, _LOOKED_UP
    if not _LOOKED_UP:
        _LOOKED_UP = True
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _Mallinfo2
            _LIBC = libc
        except (OSError, AttributeError):
            _LIBC = None
    return _LIBC


def configure_allocator(arena_max: int = ARENA_MAX, mmap_threshold: int = MMAP_THRESHOLD) -> dict[str, int]:
    """Caps malloc's arenas and fixes its mmap threshold (the module doc says why); returns what it set ({} where
    nothing could be, or the environment already chose). Call before the threads that should share the capped
    arenas start: a thread that already has an arena keeps it."""
    libc = _libc()
    if libc is None:
        return {}
    applied = {}
    settings = (("arena_max", _M_ARENA_MAX, arena_max), ("mmap_threshold", _M_MMAP_THRESHOLD, mmap_threshold))
    for name, param, value in settings:
        if os.environ.get(_ENV[name]):
            continue  # the operator's own setting, already read by glibc at start-up
        if value < 1:
            raise ValueError(f"configure_allocator: {name} must be >= 1, got {value}")
        if libc.mallopt(param, int(value)) != 1:
            raise RuntimeError(f"configure_allocator: glibc refused mallopt({name}={value})")
        applied[name] = int(value)
    return applied


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of process `pid` (this one by default) from Linux /proc; None elsewhere or once it has gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def memory_stats() -> dict[str, float]:
    """Where this process's memory is, in MB: `rss_mb` (resident), `malloc_in_use_mb` (what malloc handed out and
    did not get back: live C/C++ and numpy allocations), `malloc_arena_mb` (the arenas' size: in use + free
    inside them), `malloc_mmap_mb` (malloc's own mappings: large blocks such as the replay buffer's columns) and
    `python_blocks` (live pymalloc blocks, in thousands).

    Why these: RSS alone cannot tell a leak from the allocator — a leak grows in-use, fragmentation the arenas.
    The online stage logs them as memory/* and `make soak` reports their per-minute trends. Without glibc only
    rss_mb and python_blocks."""
    out: dict[str, float] = {"python_blocks": sys.getallocatedblocks() / 1000}
    rss = rss_bytes()
    if rss is not None:
        out["rss_mb"] = rss / 2**20
    libc = _libc()
    if libc is not None:
        m = libc.mallinfo2()
        out.update(malloc_in_use_mb=m.uordblks / 2**20, malloc_arena_mb=m.arena / 2**20,
                   malloc_mmap_mb=m.hblkhd / 2**20)
    return out
