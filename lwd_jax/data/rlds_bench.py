"""Throughput of the RLDS writer and reader on a synthetic state-only dataset (~50k steps by default).

Run:  .venv/bin/python -m lwd_jax.data.rlds_bench [--steps 50000] [--episode_len 200] [--image]

Why a module and not a test: the numbers depend on the machine; tests check correctness, this prints
steps/s for the report and for regressions. It measures
  * writer, durable, one shard per episode (the fleet path: each episode fsynced before its ack);
  * writer, durable, shards of `--episodes_per_shard` (the offline bulk path);
  * reader: the integrity scan (`check`), `episodes()` to numpy Episodes, and chunked transitions
    (graph mode, batched) in transitions/s and RLDS steps/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from fleet_api import schema
from fleet_api.schema import Episode
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.data.rlds_writer import RLDSWriter

TASKS = ("cube-single", "scene-task1", "puzzle-3x3")


def synthetic_episodes(total_steps: int, episode_len: int, with_image: bool, seed: int = 0) -> list[Episode]:
    """Episodes of `episode_len` actions (the last one shorter) adding up to `total_steps` actions."""
    rng = np.random.default_rng(seed)
    episodes = []
    remaining = total_steps
    while remaining > 0:
        t = min(episode_len, remaining)
        remaining -= t
        terminal = bool(rng.random() < 0.5)
        obs = {
            "state": rng.normal(size=(t + 1, schema.STATE_DIM)).astype(np.float32),
            "state_mask": np.ones((t + 1, schema.STATE_DIM), np.bool_),
            "proprio": rng.normal(size=(t + 1, schema.PROPRIO_DIM)).astype(np.float32),
        }
        if with_image:
            obs["image"] = rng.integers(0, 256, size=(t + 1, *schema.IMAGE_SHAPE), dtype=np.uint8)
        reward = np.zeros(t, np.float32)
        reward[-1] = float(terminal)
        task = TASKS[len(episodes) % len(TASKS)]
        episodes.append(
            Episode(
                observation=obs,
                action=rng.uniform(-1, 1, size=(t, schema.ACTION_DIM)).astype(np.float32),
                reward=reward,
                intervention=rng.random(t) < 0.1,
                subgoals=np.zeros(t + 1, np.int32),
                terminal=terminal,
                success=terminal,
                language_instruction=f"solve {task}",
                task=task,
            )
        )
    return episodes


_CPU_SECONDS: list[float] = []  # CPU time of the last _timed call (all threads): load-independent cost


def _timed(fn):
    """(fn(), wall seconds); also records the process CPU seconds spent, which a busy shared machine
    does not inflate the way it inflates wall time."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    _CPU_SECONDS[:] = [time.process_time() - cpu]
    return out, time.perf_counter() - start


def _cpu() -> str:
    return f"cpu {_CPU_SECONDS[0]:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000, help="actions in the synthetic dataset")
    parser.add_argument("--episode_len", type=int, default=200)
    parser.add_argument("--episodes_per_shard", type=int, default=32)
    parser.add_argument("--image", action="store_true", help="add 64x64x3 images (PNG)")
    parser.add_argument("--chunk_len", type=int, default=5)
    parser.add_argument("--n_chunks", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir, removed after)")
    args = parser.parse_args()

    episodes = synthetic_episodes(args.steps, args.episode_len, args.image)
    rlds_steps = sum(ep.num_steps + 1 for ep in episodes)
    root = args.dir or tempfile.mkdtemp(prefix="lwd_rlds_bench_")
    task_ids = {t: i for i, t in enumerate(TASKS)}
    print(f"{len(episodes)} episodes, {args.steps} actions, {rlds_steps} RLDS steps, image={args.image}, dir={root}")
    try:
        per_episode = os.path.join(root, "per_episode")
        for durable in (True, False):
            path = per_episode if durable else os.path.join(root, "per_episode_nosync")
            with RLDSWriter(path, with_image=args.image, durable=durable) as writer:
                _, dt = _timed(lambda writer=writer: [writer.append(ep) for ep in episodes])
                print(
                    f"writer, {'durable' if durable else 'no fsync'}, 1 shard/episode : {rlds_steps / dt:9.0f} steps/s "
                    f"({dt:.2f} s, {_cpu()}, {1e3 * dt / len(episodes):.1f} ms per episode commit, {writer.stats.bytes / 1e6:.1f} MB)"
                )
        bulk = os.path.join(root, "bulk")
        with RLDSWriter(bulk, with_image=args.image) as writer:
            _, dt = _timed(lambda writer=writer: writer.write(episodes, episodes_per_shard=args.episodes_per_shard))
            print(f"writer, durable, {args.episodes_per_shard} episodes/shard: {rlds_steps / dt:9.0f} steps/s ({dt:.2f} s, {_cpu()})")

        for name, path in (("1 shard/episode", per_episode), (f"{args.episodes_per_shard} ep/shard", bulk)):
            reader = RLDSReader(path)
            report, dt = _timed(reader.check)
            assert report.ok, report.errors[:1]
            print(f"reader [{name}] check (scan, incl. trace): {rlds_steps / dt:9.0f} steps/s ({dt:.2f} s, {_cpu()})")
            got, dt = _timed(lambda reader=reader: sum(1 for _ in reader.episodes()))
            print(f"reader [{name}] episodes() -> Episode   : {rlds_steps / dt:9.0f} steps/s ({dt:.2f} s, {_cpu()}, {got} episodes)")
            kwargs = dict(chunk_len=args.chunk_len, n_chunks=args.n_chunks, gamma=0.99, task_ids=task_ids, batch_size=args.batch_size)
            for label, extra in (("in order", {}), ("shuffled", {"shuffle_buffer": 10_000, "seed": 0})):
                dataset, build = _timed(lambda reader=reader, extra=extra, kwargs=kwargs: reader.transitions_dataset(**kwargs, **extra))
                for epoch in ("first", "again"):
                    count, dt = _timed(lambda dataset=dataset: sum(len(b["step"]) for b in dataset.as_numpy_iterator()))
                    print(
                        f"reader [{name}] transitions {label:8s} {epoch}: {count / dt:9.0f} transitions/s = {rlds_steps / dt:.0f} steps/s "
                        f"({dt:.2f} s, {_cpu()}; pipeline build {build:.2f} s; H={args.chunk_len}, n={args.n_chunks}, batch {args.batch_size})"
                    )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
