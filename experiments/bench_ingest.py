"""Ingestion micro-benchmark: N uploader processes stream synthetic episodes to one learner on loopback.

Why: the learner's ingest path (decode + full schema validation + dedupe + ack) must keep up with a fleet;
DESIGN.md budgets ~100k steps/s with ~100-step chunks on 2 cores. This measures our actual path, with
auth on and a no-op `persist` (so the number is the gRPC/validation ceiling, not the disk's).

    python -m experiments.bench_ingest --uploaders 16 --episodes 20 --steps 200

Uploaders are `spawn`ed processes (never fork a process that holds gRPC threads), so a script calling
`run()` must do so under `if __name__ == "__main__":`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import threading
import time
import uuid
from typing import Any

import numpy as np

from fleet_api.schema import ACTION_DIM, PROPRIO_DIM, STATE_DIM, Episode
from lwd_jax.data.rlds_writer import RLDSWriter
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.service import FleetServicer, serve
from robot_bridge.client import ClientConfig, LearnerClient

BENCH_TASK = "bench"
START_TIMEOUT_S = 120.0  # uploader processes must be ready (imports + episode synthesis) by then
RUN_TIMEOUT_S = 600.0
JOIN_TIMEOUT_S = 5.0


def synthetic_episode(T: int, rng: np.random.Generator, robot_id: str) -> Episode:
    """A schema-valid episode with random contents (state observations, no image)."""
    return Episode(
        observation={
            "state": rng.standard_normal((T + 1, STATE_DIM)).astype(np.float32),
            "state_mask": np.ones((T + 1, STATE_DIM), bool),
            "proprio": rng.standard_normal((T + 1, PROPRIO_DIM)).astype(np.float32),
        },
        action=rng.uniform(-1, 1, (T, ACTION_DIM)).astype(np.float32),
        reward=np.zeros(T, np.float32),
        intervention=np.zeros(T, bool),
        subgoals=np.zeros(T + 1, np.int32),
        terminal=False,
        language_instruction="benchmark episode",
        task=BENCH_TASK,
        robot_id=robot_id,
        source="rollout",
    )


def _uploader(target: str, robot_id: str, token: str, episodes: int, steps: int, steps_per_chunk: int,
              ready: Any, start: Any, results: Any, rate_hz: float = 0.0, duration_s: float = 0.0) -> None:
    """One simulated robot: synthesize episodes, connect, wait for the start signal, upload them all (as fast
    as acks come back, or at a steady `rate_hz` episodes per second: a fleet's pace rather than a burst).
    With `duration_s`, it keeps uploading the same `episodes` under fresh ids until that much time has passed."""

    try:
        rng = np.random.default_rng(abs(hash(robot_id)) % (2**32))
        eps = [synthetic_episode(steps, rng, robot_id) for _ in range(episodes)]
        with LearnerClient(target, robot_id, token, config=ClientConfig(steps_per_chunk=steps_per_chunk)) as client:
            client.policy_version()  # connect (with retries) before the clock starts
            ready.put((robot_id, None))
            start.wait()
            t0 = time.monotonic()
            i = 0
            while i < len(eps) or (duration_s and time.monotonic() - t0 < duration_s):
                if rate_hz > 0:
                    time.sleep(max(0.0, t0 + i / rate_hz - time.monotonic()))
                ep = eps[i % len(eps)]
                client.upload_episode(ep if i < len(eps) else dataclasses.replace(ep, episode_id=uuid.uuid4().hex))
                i += 1
        results.put((robot_id, None))
    except Exception as e:  # reported to the parent, which fails the run with it
        ready.put((robot_id, repr(e)))
        results.put((robot_id, repr(e)))


def _collect(queue: Any, n: int, timeout_s: float, phase: str) -> None:
    for _ in range(n):
        robot_id, err = queue.get(timeout=timeout_s)
        if err is not None:
            raise RuntimeError(f"bench: uploader {robot_id} failed while {phase}: {err}")


def run(num_uploaders: int = 16, episodes: int = 20, steps: int = 200, steps_per_chunk: int = 100,
        durable_dir: str = "", duration_s: float = 0.0) -> dict[str, Any]:
    """Measures accepted steps/s (T + 1 steps per episode) for `num_uploaders` concurrent robots.

    `durable_dir`: episodes go into a real RLDS fleet store there, fsynced before each ack (the learner's
    path); otherwise `persist` only counts (the gRPC + validation ceiling). `duration_s`: each uploader keeps
    sending (its `episodes`, again under fresh ids) until that long has passed."""

    tokens = {f"bench-{i}": f"token-{i}" for i in range(num_uploaders)}
    accepted = [0]
    lock = threading.Lock()
    writer = RLDSWriter(durable_dir, durable=True, known_tasks={BENCH_TASK: 0}) if durable_dir else None

    def persist(ep: Episode) -> None:
        if writer is not None:
            writer.append(ep)
        with lock:
            accepted[0] += 1

    servicer = FleetServicer(persist=persist, known_tasks=[BENCH_TASK], max_steps=steps,
                             auth=TokenAuth.from_plain_tokens(tokens), serialize_callbacks=writer is not None)
    server = serve(servicer, host="127.0.0.1", max_workers=max(8, 2 * num_uploaders))
    ctx = mp.get_context("spawn")  # never fork a process that holds gRPC threads
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [
        ctx.Process(target=_uploader, args=(f"127.0.0.1:{server.port}", rid, tok, episodes, steps, steps_per_chunk,
                                            ready, start, results, 0.0, duration_s), daemon=True)
        for rid, tok in tokens.items()
    ]
    try:
        for p in procs:
            p.start()
        _collect(ready, len(procs), START_TIMEOUT_S, "starting")
        t0 = time.perf_counter()
        start.set()
        _collect(results, len(procs), RUN_TIMEOUT_S, "uploading")
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.pid is not None:
                p.join(timeout=JOIN_TIMEOUT_S)
                if p.is_alive():
                    p.terminate()
        server.stop(grace=0)
        if writer is not None:
            writer.close()
    n_eps = num_uploaders * episodes if not duration_s else accepted[0]
    if accepted[0] != n_eps or (writer is not None and writer.num_episodes != n_eps):
        raise RuntimeError(f"bench: learner accepted {accepted[0]} of {n_eps} episodes")
    total_steps = n_eps * (steps + 1)
    bytes_per_step = 4 * STATE_DIM + STATE_DIM + 4 * PROPRIO_DIM + 4 * ACTION_DIM + 4 + 1 + 4
    return {
        "steps_per_s": total_steps / wall,
        "episodes_per_s": n_eps / wall,
        "mbytes_per_s": total_steps * bytes_per_step / wall / 1e6,
        "wall_s": wall,
        "num_uploaders": num_uploaders,
        "episodes": n_eps,
        "steps_per_episode": steps,
        "steps_per_chunk": steps_per_chunk,
        "durable": writer is not None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploaders", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=20, help="episodes per uploader")
    parser.add_argument("--steps", type=int, default=200, help="actions per episode (T)")
    parser.add_argument("--steps-per-chunk", type=int, default=100)
    args = parser.parse_args()
    print(json.dumps(run(args.uploaders, args.episodes, args.steps, args.steps_per_chunk), indent=1))


if __name__ == "__main__":
    main()
