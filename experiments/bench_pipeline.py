"""The online learner's pipeline under fleet traffic (issue 17), one part of `make bench`.

What a user of the online stage feels is not the pure jitted update: every call also samples the offline and
fleet buffers, normalises, stacks and transfers a batch, while gRPC threads decode, validate, persist
(fsynced) and cut arriving episodes into the same buffers. This runs exactly that: the real `FleetStore`
(durable RLDS appends) behind the real `FleetServicer` on loopback, M uploader processes streaming synthetic
episodes at a steady rate, and the real `Learner` loop running online LWD updates on batches built as the
online stage builds them (`FleetStore.sample` -> `agent_batch` -> `stack`), with the input pipeline off
(`prefetch_batches = 0`) and on (1). Figures:

  * updates/s of each pipeline, and its ratio to the pure update measured in the same run (goal >= 0.9);
  * episode -> sampleable latency p50/p99: from the learner accepting an episode (just before its ack is
    sent, so an upper bound on ack-received -> sampleable) to the start of the first update whose batch was
    built after it, i.e. the first batch that can contain it (goal p99 <= 1 s).

    python -m experiments.speed --only pipeline            # part of `make bench`
    python -m experiments.bench_pipeline --seconds 60      # alone

Uploaders are `spawn`ed processes (see experiments/bench_ingest.py), so call `run()` under `__main__`.
"""

from __future__ import annotations

import argparse
import bisect
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time
from typing import Any

import jax
import numpy as np

from experiments import bench_ingest as ingest
from experiments.configs.multitask import get_config
from fleet_api.embodiment import UR5E
from lwd_jax.agent import LWDAgent
from lwd_jax.data import batching
from lwd_jax.data.replay import TransitionBuffer
from lwd_jax.data.transitions import chunk_transitions
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.loop import Learner, Phase
from lwd_jax.learner.metrics_log import MetricsLogger
from lwd_jax.learner.service import FleetServicer, serve
from lwd_jax.nets.language import get_default_encoder

TASKS = {ingest.BENCH_TASK: 0}
N_CHUNKS = 4  # n-step chunks of the bench task's targets (any value: the batch shapes do not depend on it)


def _offline_buffer(cut: dict[str, Any], table: batching.InstructionTable, episodes: int, steps: int) -> TransitionBuffer:
    """The offline buffer: transitions of synthetic episodes, cut as the learner cuts RLDS episodes."""
    rng = np.random.default_rng(1)
    buf = TransitionBuffer(1_000_000)
    for _ in range(episodes):
        buf.add(batching.buffer_columns(chunk_transitions(ingest.synthetic_episode(steps, rng, "offline"), **cut), table))
    return buf


def _percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0, "p50_s": float("nan"), "p99_s": float("nan"), "max_s": float("nan")}
    return {"n": len(xs), "p50_s": float(np.percentile(xs, 50)), "p99_s": float(np.percentile(xs, 99)),
            "max_s": float(np.max(xs))}


def best_call_s(fn: Any, repeats: int) -> float:
    """Seconds per call, best of `repeats` after one warm-up (the least-disturbed run on a shared machine)."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


def sampleable_latencies(accepted: list[float], built: list[tuple[float, float]]) -> list[float]:
    """Per accepted episode (learner clock at acceptance): seconds until the start of the first update whose
    batch was built after it. `built`: (build start, update start) per call, in call order. Episodes accepted
    after the last build started are not counted (no batch could contain them yet)."""
    starts = [b for b, _ in built]
    out = []
    for t in accepted:
        i = bisect.bisect_left(starts, t)
        if i < len(built):
            out.append(built[i][1] - t)
    return out


def run(variant: str = "suite", batch: int = 256, updates_per_call: int = 10, uploaders: int = 16,
        episode_steps: int = 200, upload_hz: float = 0.5, seconds: float = 60.0, depths: tuple[int, ...] = (0, 1),
        repeats: int = 3, short_calls: tuple[int, ...] = (2,)) -> dict[str, Any]:
    """Pure update vs the online learner's pipeline under a steady fleet upload, in one process. `short_calls`:
    U values (`online.updates_per_call`) also run with prefetch 1, each beside its own pure update; their
    ratio is to the pure update at `updates_per_call` (what shorter calls cost, dispatch included)."""
    cfg = get_config(variant)
    cfg.batch_size, cfg.updates_per_call, cfg.log_every, cfg.checkpoint_every = batch, updates_per_call, 10**9, 10**9
    agent = LWDAgent(cfg.agent)
    encoder = get_default_encoder()
    table = batching.InstructionTable(encoder.encode, encoder.embed_dim)
    table.embed(["benchmark episode"])
    cut = dict(chunk_len=cfg.agent.action_horizon, n_chunks=N_CHUNKS, gamma=cfg.data.gamma, task_ids=TASKS)
    offline = _offline_buffer(cut, table, 64, episode_steps)
    stats = batching.stats_from_buffer(offline, UR5E.action_low, UR5E.action_high)
    example = batching.example_obs(offline.gather(np.arange(1)), table.table.shape[1])
    state = agent.init(0, example)

    def builder(u: int):
        def build(step: int, store: FleetStore | None = None) -> dict:
            rng = np.random.default_rng([0, step])
            n = batch * u
            cols = store.sample(rng, offline, n, 0.5) if store is not None else offline.sample(rng, n)
            return batching.stack(batching.agent_batch(cols, stats, table), u)
        return build

    build = builder(updates_per_call)
    holder = {"state": state}

    def pure_rate(u: int) -> float:
        """Updates/s of the pure update: one batch already on the device, nothing else running."""
        placed = agent.place_batches(builder(u)(0))

        def pure() -> Any:
            holder["state"], m = agent.update(holder["state"], placed, stage="online")
            return m

        return u / best_call_s(pure, repeats)

    out: dict[str, Any] = {"config": variant, "batch": batch, "updates_per_call": updates_per_call,
                           "pure_updates_per_s": pure_rate(updates_per_call), "uploaders": uploaders,
                           "episode_steps": episode_steps, "upload_hz_per_uploader": upload_hz, "seconds": seconds}

    # ---- the pipeline: fleet store + servicer + uploaders, the learner loop on online batches
    root = tempfile.mkdtemp(prefix="lwd-pipeline-bench-")
    try:
        for depth in depths:  # (each run donates the state it is given and hands back its last one)
            out[f"prefetch_{depth}"], holder["state"] = _pipeline(
                cfg, agent, holder["state"], build, table, cut, os.path.join(root, str(depth)), depth, uploaders,
                episode_steps, upload_hz, seconds)
            out[f"prefetch_{depth}"]["ratio_to_pure"] = out[f"prefetch_{depth}"]["updates_per_s"] / out["pure_updates_per_s"]
        for u in short_calls:  # shorter online calls (online.updates_per_call = u), prefetch 1
            key = f"prefetch_1_u{u}"
            short = cfg.copy_and_resolve_references()
            short.updates_per_call = u
            pure_u = pure_rate(u)
            out[key], holder["state"] = _pipeline(short, agent, holder["state"], builder(u), table, cut,
                                                  os.path.join(root, key), 1, uploaders, episode_steps, upload_hz,
                                                  seconds)
            out[key].update(updates_per_call=u, pure_updates_per_s=pure_u,
                            ratio_to_pure=out[key]["updates_per_s"] / out["pure_updates_per_s"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def _pipeline(cfg, agent: LWDAgent, state: Any, build, table, cut, root: str, depth: int, uploaders: int,
              episode_steps: int, upload_hz: float, seconds: float) -> tuple[dict[str, Any], Any]:
    store = FleetStore(os.path.join(root, "rlds"), table=table, capacity=1_000_000, durable=True, **cut)
    accepted: list[float] = []

    def on_accept(ep) -> None:
        store.on_accept(ep)
        accepted.append(time.perf_counter())

    tokens = {f"bench-{i}": f"token-{i}" for i in range(uploaders)}
    servicer = FleetServicer(persist=store.persist, on_accept=on_accept, known_tasks=TASKS, max_steps=episode_steps,
                             auth=TokenAuth.from_plain_tokens(tokens))
    server = serve(servicer, host="127.0.0.1", max_workers=max(8, 2 * uploaders))
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    per_uploader = int(np.ceil((seconds + 30) * upload_hz))  # enough to last the measurement
    procs = [ctx.Process(target=ingest._uploader, args=(f"127.0.0.1:{server.port}", rid, tok, per_uploader, episode_steps,
                                                        100, ready, start, results, upload_hz), daemon=True)
             for rid, tok in tokens.items()]
    times: dict[int, list[float]] = {}  # step -> [build start, update start]
    lock = threading.Lock()

    def batches(step: int) -> dict:
        with lock:
            times[step] = [time.perf_counter(), float("nan")]
        return build(step, store)

    def update(st: Any, b: dict) -> Any:
        # The previous call must have finished: an update's start is then when it really runs (no queue of
        # dispatched calls ahead of the device), and the rate is completed updates, as the pure figure's.
        jax.block_until_ready(st)
        with lock:
            times[int(st.step)][1] = time.perf_counter()
        return agent.update(st, b, stage="online")

    logger = MetricsLogger(os.path.join(root, "logs"), quiet=True)
    ckpt = Checkpointer(os.path.join(root, "checkpoints"))
    cfg = cfg.copy_and_resolve_references()
    cfg.prefetch_batches = depth
    learner = Learner(cfg, logger, ckpt, None, None, place=agent.place_batches)
    try:
        for p in procs:
            p.start()
        ingest._collect(ready, len(procs), ingest.START_TIMEOUT_S, "starting")
        start.set()
        while len(store) < uploaders:  # every uploader is streaming: measure the steady state
            time.sleep(0.05)
        first = int(state.step)
        # one call to compile the online update for this phase's batch shape, outside the clock
        state = learner.run(state, Phase("warmup", first + cfg.updates_per_call, update, batches, probe=False))
        t0 = time.perf_counter()
        state = learner.run(state, Phase("online", 10**9, update, batches, probe=False,
                                         done=lambda: time.perf_counter() - t0 >= seconds))
        jax.block_until_ready(state)
        calls = sorted(s for s in times if s >= first + cfg.updates_per_call and times[s][1] == times[s][1])
        # k calls started at u_1 .. u_k, each when the previous had finished: (k - 1) calls in u_k - u_1
        u_first, u_last = times[calls[0]][1], times[calls[-1]][1]
        wall = u_last - u_first
        updates = (len(calls) - 1) * cfg.updates_per_call
        window = [t for t in accepted if u_first <= t <= u_last]
        lat = sampleable_latencies(window, [tuple(times[s]) for s in calls])
    finally:
        start.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=ingest.JOIN_TIMEOUT_S)
        server.stop(grace=0)
        store.close()
        ckpt.close()
        logger.close()
    return {"updates_per_s": updates / wall, "episodes_accepted_per_s": len(window) / wall,
            "steps_accepted_per_s": len(window) * (episode_steps + 1) / wall,
            "episode_to_sampleable": _percentiles(lat), "prefetch_batches": depth}, state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="suite")
    p.add_argument("--uploaders", type=int, default=16)
    p.add_argument("--upload-hz", type=float, default=0.5, help="episodes per second per uploader")
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    print(json.dumps(run(args.variant, uploaders=args.uploaders, upload_hz=args.upload_hz, seconds=args.seconds), indent=1))


if __name__ == "__main__":
    main()
