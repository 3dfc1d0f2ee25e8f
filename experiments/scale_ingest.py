"""Issue 18's scale test: many robots over ingest replicas into one shared store, tailed by several learner hosts.

    python -m experiments.scale_ingest --robots 64 --replicas 2 --learners 2 --seconds 60 --kill-at 30

What runs (all real processes on this machine, loopback gRPC): `--replicas` replica processes
(`python -m lwd_jax.learner.replicas`, fsync before every ack) behind one address list; `--robots` uploader
processes, each a bridge client (LearnerClient) sending 200-step episodes at `--rate-hz` per robot, retrying
as a robot does; `--learners` learner-side processes, each tailing the store into its own fleet buffer
(FleetStore without a dataset of its own, as `online.ingest_replicas` runs it). At `--kill-at` seconds the
first replica gets SIGKILL. Reported (JSON): acks/s and steps/s, ack latency p50/p99 (upload call start ->
ack, retries included), commit -> sampleable lag on every learner (the episode's ack -> the tail put it in
that learner's buffer), and the audit: every acknowledged id committed exactly once and delivered to every
learner exactly once, none lost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from typing import Any

import numpy as np

from experiments.bench_ingest import BENCH_TASK, synthetic_episode
from lwd_jax.data.batching import InstructionTable
from lwd_jax.learner.auth import add_robot
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.replicas import ReplicaSet, SharedStore, StoreTail, iter_commits
from robot_bridge.client import ClientConfig, LearnerClient


def _robot(target: str, rid: str, token: str, steps: int, rate_hz: float, seconds: float, ready: Any, start: Any,
           out: Any) -> None:
    """One robot: episodes at a steady rate for `seconds`; reports (id, call start, ack time, attempts) per episode."""
    rng = np.random.default_rng(abs(hash(rid)) % 2**32)
    base = synthetic_episode(steps, rng, rid)
    acks, err = [], None
    try:
        cfg = ClientConfig(max_attempts=50, backoff_max_s=2.0, upload_timeout_s=30.0)
        with LearnerClient(target, rid, token, config=cfg) as client:
            client.policy_version()
            ready.put(rid)
            start.wait()
            t0 = time.monotonic()
            i = 0
            while time.monotonic() - t0 < seconds:
                time.sleep(max(0.0, t0 + i / rate_hz - time.monotonic()))
                ep = dataclasses.replace(base, episode_id=uuid.uuid4().hex)
                t = time.time()
                res = client.upload_episode(ep)
                acks.append((ep.episode_id, t, time.time(), res.attempts, res.duplicate))
                i += 1
    except Exception as e:  # reported: the run fails with it
        err = repr(e)
        ready.put(rid)
    out.put((rid, acks, err))


def _learner(root: str, name: str, finish: Any, out: Any) -> None:
    """One learner host's tail: every committed episode into its own fleet buffer; reports (id, time) per delivery."""
    import tensorflow_datasets  # noqa: F401  (a learner has it loaded; its first import, ~5 s, is not ingest lag)

    store = SharedStore(root)
    fleet = FleetStore(os.path.join(root, f"learner-{name}", "rlds"), chunk_len=5, n_chunks=1, gamma=0.99,
                       task_ids={BENCH_TASK: 0}, table=InstructionTable(lambda t: np.zeros((len(t), 4), np.float32), 4),
                       capacity=2_000_000, own_dataset=False)
    fleet.rebuild()
    got: list[tuple[str, float]] = []

    def deliver(ep) -> None:
        fleet.on_accept(ep)
        got.append((ep.episode_id, time.time()))

    tail, stop = StoreTail(store), threading.Event()
    th = threading.Thread(target=tail.run, args=(deliver, stop, 0.1))
    th.start()
    out.put((name, "ready", None))
    finish.wait()  # the robots are done (the tail then reads what is left, once more, and stops)
    stop.set()
    th.join()
    out.put((name, got, {"transitions": fleet.num_transitions(), "episodes": len(fleet), "orphans": tail.orphans,
                         "pending": tail.pending}))
    fleet.close()


def _pct(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_s": float(np.percentile(xs, 50)), "p99_s": float(np.percentile(xs, 99)),
            "max_s": float(np.max(xs))}


def run(robots: int = 64, replicas: int = 2, learners: int = 2, seconds: float = 60.0, kill_at: float = 30.0,
        rate_hz: float = 0.5, steps: int = 200, root: str | None = None) -> dict[str, Any]:
    own = root is None
    root = root or tempfile.mkdtemp(prefix="lwd-scale-")
    store = SharedStore(root)
    store.write_spec({"tasks": {BENCH_TASK: 0}, "max_steps": steps})
    tokens_file = os.path.join(root, "tokens")
    tokens = {f"robot-{i}": add_robot(tokens_file, f"robot-{i}") for i in range(robots)}
    rs = ReplicaSet(store, replicas, tokens_file=tokens_file)
    ctx = mp.get_context("spawn")
    ready, start, out, lout = ctx.Queue(), ctx.Event(), ctx.Queue(), ctx.Queue()
    try:
        addresses = rs.start()
        target = ",".join(addresses)
        finish = ctx.Event()
        lprocs = [ctx.Process(target=_learner, args=(root, f"l{i}", finish, lout)) for i in range(learners)]
        for p in lprocs:
            p.start()
        for _ in lprocs:
            lout.get(timeout=300)
        procs = [ctx.Process(target=_robot, args=(target, rid, tok, steps, rate_hz, seconds, ready, start, out))
                 for rid, tok in tokens.items()]
        for p in procs:
            p.start()
        for _ in procs:  # every robot connected (each polls the version first) before the clock
            ready.get(timeout=600)
        t0 = time.time()
        start.set()
        killed = None
        if replicas > 1 and 0 < kill_at < seconds:
            time.sleep(kill_at)
            victim = rs.procs[rs.names[0]]
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.time() - t0
        results = {}
        for _ in procs:
            rid, acks, err = out.get(timeout=seconds + 600)
            if err:
                raise RuntimeError(f"scale: robot {rid} failed: {err}")
            results[rid] = acks
        wall = time.time() - t0
        time.sleep(2.0)  # (a tail polls every 0.1 s; its last poll after `finish` reads the rest)
        finish.set()
        learned = {}
        for _ in lprocs:
            name, got, info = lout.get(timeout=600)
            learned[name] = (got, info)
        for p in procs + lprocs:
            p.join(timeout=60)
    finally:
        codes = rs.stop()
    acks = [a for rows in results.values() for a in rows]
    acked_ids = {a[0] for a in acks}
    ack_at = {a[0]: a[2] for a in acks}
    commits = dict(iter_commits(store))
    per_learner = {}
    for name, (got, info) in learned.items():
        ids = [g[0] for g in got]
        per_learner[name] = {
            **info, "delivered": len(ids), "duplicates": len(ids) - len(set(ids)),
            "missing_acked": len(acked_ids - set(ids)),
            "ack_to_sampleable": _pct([t - ack_at[i] for i, t in got if i in ack_at]),
            "ack_to_sampleable_by_10s": {  # when in the run the lag happens (the replica kill, the first read)
                f"{w * 10}-{w * 10 + 10}s": _pct([t - ack_at[i] for i, t in got if i in ack_at
                                                  and int((ack_at[i] - t0) // 10) == w])
                for w in range(int(wall // 10) + 1)},
        }
    doc = {
        "robots": robots, "replicas": replicas, "learners": learners, "seconds": seconds, "rate_hz_per_robot": rate_hz,
        "steps_per_episode": steps, "replica_killed_at_s": killed, "replica_exit_codes": codes,
        "episodes_acked": len(acks), "acks_per_s": len(acks) / wall, "steps_per_s": len(acks) * (steps + 1) / wall,
        "ack_latency": _pct([a[2] - a[1] for a in acks]),
        "uploads_retried": sum(a[3] > 1 for a in acks), "acked_as_duplicate": sum(a[4] for a in acks),
        "committed": len(commits), "acked_not_committed": len(acked_ids - set(commits)),
        "commits_by_replica": {n: sum(c.replica == n for c in commits.values()) for n in rs.names},
        "learners_detail": per_learner,
    }
    if own:
        shutil.rmtree(root, ignore_errors=True)
    return doc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--robots", type=int, default=64)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--learners", type=int, default=2)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--kill-at", type=float, default=30.0, help="SIGKILL the first replica this long in (0: never)")
    p.add_argument("--rate-hz", type=float, default=0.5, help="episodes per second per robot")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--out", default="")
    args = p.parse_args()
    doc = run(args.robots, args.replicas, args.learners, args.seconds, args.kill_at, args.rate_hz, args.steps)
    text = json.dumps(doc, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
