"""The learner's allocator settings (lwd_jax/learner/heap.py; issue 16's creeping learner RSS).

The child processes reproduce the soak's mechanism in miniature, with real glibc and the child's own /proc RSS:
a worker thread (its own malloc arena, as a gRPC handler has) frees one large block — which raises glibc's
dynamic mmap threshold — then allocates transient 1 MB buffers interleaved with small objects that outlive
them, and frees the buffers. By default the buffers came from the arena and their pages stay resident (the
learner's creep); with `configure_allocator` each is its own mapping, gone when freed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lwd_jax.learner import heap

ROOT = Path(__file__).resolve().parents[1]
BUFFERS, BUFFER_KB = 120, 1024  # 120 MB of transient buffers

FRAGMENT = f"""
import json, sys, threading
from lwd_jax.learner import heap
if sys.argv[1] == "configured":
    heap.configure_allocator()

def mb():
    return heap.rss_bytes() / 2**20

kept, out = [], {{}}

def handler():  # a gRPC handler thread: one big block freed, then upload buffers between longer-lived objects
    big = bytearray(16 * 2**20)
    del big
    transient = []
    for _ in range({BUFFERS}):
        transient.append(bytearray({BUFFER_KB} * 1024))
        kept.append(bytearray(2048))
    out["allocated"] = mb()
    del transient

out["base"] = mb()
t = threading.Thread(target=handler)
t.start(); t.join()
out["freed"] = mb()
print(json.dumps(out))
"""

ARENAS = """
import sys, threading, ctypes
from lwd_jax.learner import heap
if sys.argv[1] == "configured":
    print(heap.configure_allocator(), file=sys.stderr)
ready = threading.Barrier(17)
keep = []

def thread():
    keep.append(bytearray(4096))  # this thread's first malloc: it gets an arena
    ready.wait()
    ready.wait()

ts = [threading.Thread(target=thread) for _ in range(16)]
for t in ts:
    t.start()
ready.wait()  # every thread holds its arena now
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
ready.wait()
for t in ts:
    t.join()
"""


def run_child(code: str, mode: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-c", code, mode], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, res.stderr
    return res


needs_glibc = pytest.mark.skipif(heap._libc() is None, reason="not glibc: no mallopt/mallinfo2")


@needs_glibc
def test_freed_transient_buffers_stay_resident_by_default_and_leave_with_the_learners_settings():
    default = json.loads(run_child(FRAGMENT, "default").stdout)
    grown = default["allocated"] - default["base"]
    assert grown > 0.8 * BUFFERS * BUFFER_KB / 1024, default
    assert default["freed"] - default["base"] > 0.7 * grown, default  # the creep: freed, still resident
    configured = json.loads(run_child(FRAGMENT, "configured").stdout)
    grown = configured["allocated"] - configured["base"]
    assert grown > 0.8 * BUFFERS * BUFFER_KB / 1024, configured
    assert configured["freed"] - configured["base"] < 0.2 * grown, configured  # unmapped when freed


@needs_glibc
def test_sixteen_threads_share_two_arenas_once_configured():
    def arenas(mode: str, env: dict[str, str] | None = None) -> int:
        return run_child(ARENAS, mode, env).stderr.count("Arena ")

    assert arenas("default") > 2  # glibc: up to 8 per core, a fresh one for each new thread until then
    assert arenas("configured") <= heap.ARENA_MAX
    assert arenas("configured", {"MALLOC_ARENA_MAX": "3"}) == 3  # the operator's setting wins


@needs_glibc
def test_memory_stats_see_live_allocations_apart_from_the_arena():
    """What the learner logs as memory/*: 40 MB of live 48 KB buffers show in malloc's in-use bytes (a leak would)
    and are gone from them once freed, while RSS alone cannot say which."""
    before = heap.memory_stats()
    assert {"rss_mb", "malloc_in_use_mb", "malloc_arena_mb", "malloc_mmap_mb", "python_blocks"} <= set(before)
    live = [bytearray(48 * 1024) for _ in range(850)]
    during = heap.memory_stats()
    assert during["malloc_in_use_mb"] - before["malloc_in_use_mb"] > 38, (before, during)
    del live
    after = heap.memory_stats()
    assert after["malloc_in_use_mb"] - before["malloc_in_use_mb"] < 5, (before, after)
    assert after["malloc_arena_mb"] >= after["malloc_in_use_mb"]


def test_without_glibc_nothing_is_set_and_rss_is_still_reported(monkeypatch):
    monkeypatch.setattr(heap, "_libc", lambda: None)
    assert heap.configure_allocator() == {}
    stats = heap.memory_stats()
    assert "malloc_in_use_mb" not in stats and stats["python_blocks"] > 0


@needs_glibc
def test_a_nonsense_setting_is_named():
    with pytest.raises(ValueError, match="arena_max"):
        heap.configure_allocator(arena_max=0)
