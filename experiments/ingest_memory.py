"""Learner RSS per episode of the ingest path alone (issue 16: the soak's RSS grew ~1.9 KB per episode).

Why: the soak runs ingest and training in one process, so its growth cannot say which side holds the bytes.
This runs only the learner's ingest path — the real FleetServicer over gRPC on loopback in front of a durable
FleetStore (fsync before every ack, a small replay buffer that is full within seconds) — against uploader
threads in a separate process, and reports the learner's RSS growth per accepted episode after the first third
of the run (past start-up and the buffer filling). `--dedupe dict` seeds the servicer with a plain mapping,
the all-in-RAM table of before the bounded index, for the before/after.

    python -m experiments.ingest_memory --dedupe index --seconds 300   # -> JSON lines, the last one the figure
    python -m experiments.ingest_memory --tracemalloc 8 --seconds 300  # + where Python-heap growth was allocated

`--tracemalloc N` traces Python's allocations (N frames each; numpy's buffers included) from the uploads' start, adds the
traced heap to every sample and lists the allocation sites that grew most between the first third and the end.
Growth of RSS that the traced heap does not show is native: gRPC, TensorFlow's file writers, the allocator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
import tracemalloc
import uuid
from typing import Any

import numpy as np

from experiments.bench_ingest import BENCH_TASK, synthetic_episode
from experiments.soak import rss_mb
from lwd_jax.data.batching import InstructionTable
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.service import FleetServicer, serve
from robot_bridge.client import LearnerClient

STEPS = 100
EPISODES_PER_THREAD = 8  # distinct contents each uploader cycles through (fresh ids every time)


def _uploaders(target: str, seconds: float, threads: int) -> None:
    """One process of `threads` robots uploading back to back until `seconds` have passed."""
    end = time.time() + seconds

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        eps = [synthetic_episode(STEPS, rng, f"robot-{i}") for _ in range(EPISODES_PER_THREAD)]
        with LearnerClient(target, f"robot-{i}", None) as client:
            k = 0
            while time.time() < end:
                client.upload_episode(dataclasses.replace(eps[k % len(eps)], episode_id=uuid.uuid4().hex))
                k += 1

    pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def run(dedupe: str = "index", seconds: float = 300.0, threads: int = 16, window: int = 2000,
        capacity: int = 20_000, every_s: float = 10.0, trace_frames: int = 0) -> dict[str, Any]:
    """Returns the samples (seconds, episodes accepted, RSS MB[, traced Python heap MB]) and the growth per
    episode after a third; with `trace_frames` also the allocation sites that grew most over that span."""
    if dedupe not in ("index", "dict"):
        raise ValueError(f"--dedupe: expected 'index' or 'dict', got {dedupe!r}")
    root = tempfile.mkdtemp(prefix="lwd-ingest-memory-")
    table = InstructionTable(lambda texts: np.zeros((len(texts), 4), np.float32), 4)
    store = FleetStore(os.path.join(root, "rlds"), chunk_len=5, n_chunks=1, gamma=0.99, task_ids={BENCH_TASK: 0},
                       table=table, capacity=capacity, durable=True, acked_window=window)
    index = store.rebuild()
    servicer = FleetServicer(persist=store.persist, on_accept=store.on_accept, known_tasks={BENCH_TASK: 0},
                             max_steps=STEPS, seen_episode_ids=index if dedupe == "index" else dict(index.items()))
    server = serve(servicer, host="127.0.0.1")
    if trace_frames:  # from here: tracing TensorFlow's import and the store's set-up would take minutes
        tracemalloc.start(trace_frames)
    proc = mp.get_context("spawn").Process(target=_uploaders, args=(f"127.0.0.1:{server.port}", seconds, threads))
    proc.start()
    samples: list[tuple[float, ...]] = []
    base: tracemalloc.Snapshot | None = None
    grew: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        while proc.is_alive():
            now = time.perf_counter() - t0
            traced = (tracemalloc.get_traced_memory()[0] / 2**20,) if trace_frames else ()
            samples.append((now, servicer.fleet_status()["episodes_accepted"], rss_mb(os.getpid()), *traced))
            print(json.dumps(samples[-1]), flush=True)
            if trace_frames and base is None and now >= seconds / 3:
                base = tracemalloc.take_snapshot()
            proc.join(every_s)
        if base is not None:
            diff = tracemalloc.take_snapshot().compare_to(base, "traceback")
            grew = [{"kb": d.size_diff / 1024, "blocks": d.count_diff, "where": d.traceback.format(limit=trace_frames)}
                    for d in diff[:12]]
    finally:
        server.stop(0)
        store.close()
        if trace_frames:
            tracemalloc.stop()
    later = [s for s in samples if s[0] >= seconds / 3]
    a, b = later[0], later[-1]
    return {"dedupe": dedupe, "window": window, "seconds": seconds, "threads": threads, "steps": STEPS,
            "episodes": b[1], "rss_mb_from": a[2], "rss_mb_to": b[2], "episodes_from": a[1],
            "kb_per_episode": (b[2] - a[2]) * 1024 / max(b[1] - a[1], 1),
            **({"traced_kb_per_episode": (b[3] - a[3]) * 1024 / max(b[1] - a[1], 1), "grew_most": grew}
               if trace_frames else {}),
            "samples": samples}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dedupe", default="index", choices=("index", "dict"))
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--window", type=int, default=2000, help="ids the index keeps in RAM")
    p.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                   help="trace Python allocations with this many frames each (0: off)")
    args = p.parse_args(argv)
    res = run(args.dedupe, args.seconds, args.threads, args.window, trace_frames=args.tracemalloc)
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}), flush=True)
    return res


if __name__ == "__main__":
    main()
