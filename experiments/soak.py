"""Soak benchmark (`make soak`): 64 bridge clients stream episodes to one real learner for 10 minutes.

Why: a fleet store whose cost grows with its size, or a learner whose memory grows with every episode,
passes every test and fails a fleet after a day. This runs the learner robots really reach
(`experiments.serve`, a separate process, tokens file, durable RLDS fleet store, the online stage training
while it ingests) against `--clients` authenticated bridge clients (`robot_bridge.client.LearnerClient`, in
`--procs` spawned processes, one gRPC channel and one robot id each) that upload episodes back to back for
`--minutes`. Then the learner is stopped with SIGTERM, restarted on the same work dir (the fleet store is
rebuilt from disk: its time is measured) and stopped again, and the store on disk is counted against
what the clients were acknowledged.

    make soak                                      # 64 clients, 10 minutes -> results/soak.json
    python -m experiments.soak --clients 8 --minutes 1 --out /tmp/soak.json
    python -m experiments.soak --replicas 2 --learner-procs 2 --kill-replica-at 120 --minutes 4 \
        --out results/scale_soak.json              # issue 18's scale test (below)

Scale-out (issue 18): `--replicas N` puts N ingest replicas (started by learner process 0) between the clients
and the learner; the clients get their address list; `--learner-procs P` runs the learner as P `jax.distributed`
processes (every one tails the replicas' store, process 0 publishes); `--kill-replica-at S` SIGKILLs the first
replica S seconds into the run (its clients go on with the others). The store is then counted by its commit
records, and process 0's fleet log after the restart (a fresh re-read of the store) by episode id.

Figures, per minute of the run: acks/s, ack latency p50/p99 (client side, retries included), learner RSS (max of
5 s samples), the learner's own malloc split (bytes in use and arena size, from its memory/* log lines: a leak
grows the first, allocator fragmentation the second; lwd_jax/learner/heap.py) and fleet-buffer fill; totals:
episodes sent / acknowledged / stored / lost / duplicated, and the restart's rebuild time. Goals (issue 16): no
downward trend in acks/s, RSS flat once the replay buffer is full, 0 lost, 0 duplicated. The episodes are
synthetic but schema-valid for the dataset's real tasks (random states and actions, lengths up to the task's step
budget), so the learner's whole ingest path runs: wire decode, validation, the durable shard + manifest append,
transitions into the replay buffer, and training on them. Everything shares this machine's cores, clients
included: compare minutes of one run, not runs of two machines.

Cadences: the learner runs serve's smoke config (tiny nets, so the clients and the learner fit on 2 cores) but
checkpoints every `CHECKPOINT_EVERY` updates, as a serving learner does, not every 2 as the smoke tests do. Why
(measured, issue 16): each orbax save leaves ~60-130 KB behind inside orbax/tensorstore (a standalone loop of
saves grows by the same amount per save whether or not its CheckpointManager is closed and re-created), so at
one save every ~2 s the soak's learner RSS crept ~6-7 MB per minute; offline training of the same nets with
saves off stayed flat within 0.5 MB over 15,700 updates. Evaluations (every 4 updates) and publishing (every 2)
keep the smoke cadence: they exercise the evaluation workers and every robot's policy download under load.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats

from experiments.bench_ingest import synthetic_episode
from experiments.configs.data import get_config as data_config
from experiments.configs.serve import get_config as serve_config
from fleet_api.schema import Episode, validate_episode
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.learner.auth import add_robot
from lwd_jax.learner.heap import rss_bytes
from lwd_jax.learner.replicas import SharedStore, iter_commits
from lwd_jax.sim.generate import generate
from lwd_jax.sim.tasks import get_task
from robot_bridge.client import ClientConfig, FleetError, LearnerClient

CHECKPOINT_EVERY = 250  # learner updates between checkpoints: ~4 minutes at the soak's update rate (docstring)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE_TIMEOUT_S = 900.0  # smoke pretrain + offline + jit compile on 2 busy cores
STOP_TIMEOUT_S = 300.0
RSS_EVERY_S = 5.0
POOL = 8  # distinct episode bodies per client thread (each upload gets a fresh id)
REBUILT = re.compile(r"rebuilt the fleet buffer from disk: (\d+) episodes \((\d+) read, by ([a-z ]+)\), (\d+) transitions "
                     r"in ([0-9.]+) s")
TAIL_READ = re.compile(r"read (\d+) committed episodes from the shared store \S+ \((\d+) transitions\) in ([0-9.]+) s")


def soak_episode(task: str, steps: int, rng: np.random.Generator, robot_id: str) -> Episode:
    """A schema-valid episode of `task`: the ingest benchmark's random states and actions, with the task's
    instruction and sub-goals rising to success or not (so the learner's buffer and fleet log see real tasks)."""
    spec = get_task(task)
    k = spec.num_subgoals
    success = bool(rng.random() < 0.5)
    reached = k if success else int(rng.integers(0, k))
    subgoals = np.sort(rng.integers(0, reached + 1, steps + 1)).astype(np.int32)
    subgoals[-1] = reached
    reward = np.zeros(steps, np.float32)
    reward[-1] = float(success)
    return dataclasses.replace(
        synthetic_episode(steps, rng, robot_id), reward=reward, subgoals=subgoals, terminal=success,
        language_instruction=spec.instructions[0], task=task, success=success, num_subgoals=k)


def _client_thread(target: str, robot_id: str, token: str, tasks: list[str], max_len: int, end_at: float,
                   seed: int, out: Any, lock: threading.Lock) -> None:
    """One robot: uploads fresh-id copies of its POOL episodes back to back until `end_at` (wall clock)."""
    rng = np.random.default_rng(seed)
    pool = [soak_episode(tasks[i % len(tasks)], int(rng.integers(max_len // 4, max_len + 1)), rng, robot_id)
            for i in range(POOL)]
    for ep in pool:
        validate_episode(ep, known_tasks=tasks, max_steps=max_len, where=f"soak client {robot_id}")

    def line(rec: dict[str, Any]) -> None:
        with lock:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    cfg = ClientConfig(max_attempts=8, backoff_max_s=2.0)
    with LearnerClient(target, robot_id, token, config=cfg) as client:
        client.policy_version()  # connected before the clock starts
        i = 0
        while time.time() < end_at:
            ep = dataclasses.replace(pool[i % POOL], episode_id=uuid.uuid4().hex)
            i += 1
            line({"sent": ep.episode_id, "t": time.time()})
            t0 = time.perf_counter()
            try:
                res = client.upload_episode(ep)
            except FleetError as e:  # counted, never fatal: a soak measures what the learner answers
                line({"error": ep.episode_id, "t": time.time(), "what": f"{type(e).__name__}: {e}"[:300]})
                continue
            line({"ack": ep.episode_id, "t": time.time(), "lat": time.perf_counter() - t0, "dup": res.duplicate,
                  "steps": ep.num_steps})


def _worker(target: str, creds: list[tuple[str, str]], tasks: list[str], max_len: int, end_at: float,
            log_path: str) -> None:
    """One spawned process holding len(creds) client threads (one channel each); lines to its own log."""
    lock = threading.Lock()
    with open(log_path, "w") as out:
        def client(rid: str, tok: str) -> None:
            try:
                _client_thread(target, rid, tok, tasks, max_len, end_at, 1000 + int(rid.split("-")[1]), out, lock)
            except Exception as e:  # a client that died is a figure of the soak, not a silent gap in it
                with lock:
                    out.write(json.dumps({"died": rid, "t": time.time(), "what": f"{type(e).__name__}: {e}"[:300]}) + "\n")

        threads = [threading.Thread(target=client, args=cred, daemon=True) for cred in creds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def rss_mb(pid: int) -> float | None:
    """Resident memory of `pid` in MB (None once it has gone): the figure every memory experiment reports, read as
    the learner reads its own (lwd_jax/learner/heap.py)."""
    rss = rss_bytes(pid)
    return None if rss is None else rss / 2**20


def _tree_rss_mb(pid: int) -> float | None:
    """RSS of `pid` and every process below it (learner process 0 with the replicas it started)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo, any_ = 0.0, [pid], False
    while todo:
        p = todo.pop()
        mb = rss_mb(p)
        if mb is not None:
            total, any_ = total + mb, True
        todo += children.get(p, [])
    return total if any_ else None


def _kill_replica(name: str) -> bool:
    """SIGKILL the replica process started with `--name <name>` (found by its command line)."""
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"lwd_jax.learner.replicas" in argv and name.encode() in argv:
                os.kill(int(d), signal.SIGKILL)
                return True
    return False


def _free_port() -> int:
    import socket

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _wait_for(path: str, proc: subprocess.Popen, timeout_s: float, log: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise RuntimeError(f"soak: the learner exited {proc.returncode} before serving; see {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"soak: the learner did not serve within {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


def _stop(procs: list[subprocess.Popen]) -> list[int]:
    """SIGTERM to every learner process (they agree on the step to stop at), then their exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    try:
        return [p.wait(timeout=STOP_TIMEOUT_S) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise RuntimeError(f"soak: the learner did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM") from None


def learner_memory(metrics_path: str) -> list[tuple[float, dict[str, float]]]:
    """(time, {malloc_in_use_mb, malloc_arena_mb, ...}) of every online log line of the learner's metrics.jsonl
    that carries the memory/* scalars (lwd_jax/learner/heap.py:memory_stats); [] when there is no such file."""
    out = []
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            for ln in f:
                if '"memory/' in ln:
                    rec = json.loads(ln)
                    memory = {k.split("/", 1)[1]: v for k, v in rec.items() if k.startswith("memory/")}
                    out.append((float(rec["time"]), memory))
    return out


def per_minute(acks: list[dict[str, Any]], rss: list[tuple[float, float]], t0: float, t1: float,
               episodes_to_fill: float | None, rss_all: list[tuple[float, float]] | None = None,
               memory: list[tuple[float, dict[str, float]]] | None = None) -> list[dict[str, Any]]:
    """Minute-by-minute figures from the clients' ack lines and the learner's RSS samples over [t0, t1)
    (a last partial minute is a rate over its own length). `memory`: the learner's own memory/* log lines; each
    minute then gets its last malloc in-use and arena sizes (a leak grows the first, fragmentation the second)."""
    rows = []
    n_acked = 0
    for m in range(int(np.ceil((t1 - t0) / 60.0))):
        lo, hi = t0 + 60 * m, min(t0 + 60 * (m + 1), t1)
        lat = np.array([a["lat"] for a in acks if lo <= a["t"] < hi])
        n_acked += len(lat)
        mem = [mb for t, mb in rss if lo <= t < hi]
        mem_all = [mb for t, mb in rss_all or [] if lo <= t < hi]
        rows.append({
            "minute": m + 1, "acks_per_s": len(lat) / (hi - lo),
            "ack_p50_s": float(np.percentile(lat, 50)) if len(lat) else None,
            "ack_p99_s": float(np.percentile(lat, 99)) if len(lat) else None,
            "rss_mb": max(mem) if mem else None,
            **({"rss_all_mb": max(mem_all) if mem_all else None} if rss_all is not None else {}),
            "buffer_full": bool(episodes_to_fill is not None and n_acked >= episodes_to_fill),
        })
        if memory is not None:
            heap = [h for t, h in memory if lo <= t < hi and "malloc_in_use_mb" in h]
            rows[-1].update(malloc_in_use_mb=heap[-1]["malloc_in_use_mb"] if heap else None,
                            malloc_arena_mb=heap[-1]["malloc_arena_mb"] if heap else None)
    return rows


def linear_trend(y: list[float]) -> dict[str, float | int | None]:
    """Least-squares slope of `y` per step of its index, with a 95% t-interval.

    Why an interval: "no downward trend" and "flat" are claims about a slope that per-minute noise (the
    learner's evaluations and publishes, the clients' scheduling on shared cores) moves by several units, so
    the point estimate alone cannot support them. Minutes are treated as independent; their noise is mildly
    autocorrelated, so the interval is if anything a little narrow.
    """
    y_arr = np.asarray(y, dtype=float)
    n = len(y_arr)
    if n < 3:
        return {"n": n, "slope": None, "lo": None, "hi": None, "mean": float(y_arr.mean()) if n else None}
    res = stats.linregress(np.arange(n, dtype=float), y_arr)
    half = float(stats.t.ppf(0.975, n - 2) * res.stderr)
    return {"n": n, "slope": float(res.slope), "lo": float(res.slope) - half, "hi": float(res.slope) + half,
            "mean": float(y_arr.mean())}


def trends(rows: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    """The goals' statistics from the per-minute rows: the acks/s trend over the whole minutes of the run, and
    learner RSS once the replay buffer is full — its growth, its slope, and the slope over the later half of
    those minutes (memory that levels off has a later-half slope near 0 even where the whole-range one is not).
    A pure function of the rows, so `--summarize` recomputes it for a results file."""
    whole = [r for r in rows if r["minute"] <= int(minutes)]
    full = [r["rss_mb"] for r in whole if r["buffer_full"] and r["rss_mb"] is not None]
    later = full[len(full) // 2:]
    out = {
        "acks_per_s": linear_trend([r["acks_per_s"] for r in whole]),
        "rss_after_full": {"minutes": len(full), "first_mb": full[0] if full else None,
                           "last_mb": full[-1] if full else None,
                           "growth_mb": (full[-1] - full[0]) if len(full) > 1 else None,
                           "slope_mb_per_min": linear_trend(full),
                           "later_half_slope_mb_per_min": linear_trend(later)},
    }
    for key in ("malloc_in_use_mb", "malloc_arena_mb"):  # the learner's own split (rows from before it lack it)
        series = [r[key] for r in whole if r["buffer_full"] and r.get(key) is not None]
        if series:
            out[key.replace("_mb", "_after_full")] = {
                "slope_mb_per_min": linear_trend(series),
                "later_half_slope_mb_per_min": linear_trend(series[len(series) // 2:])}
    return out


def run(clients: int = 64, procs: int = 8, minutes: float = 10.0, workdir: str | None = None,
        overrides: list[str] | None = None, replicas: int = 0, learner_procs: int = 1,
        kill_replica_at: float = 0.0) -> dict[str, Any]:
    """The whole soak; returns the figures (see the module docstring)."""
    root = workdir or tempfile.mkdtemp(prefix="lwd-soak-")
    os.makedirs(root, exist_ok=True)
    dc = data_config("smoke")
    dc.out_dir = os.path.join(root, "offline")
    if not os.path.exists(os.path.join(dc.out_dir, "dataset_info.json")):
        generate(dc)
    tasks = dc.tasks.split(",")
    max_len = max(get_task(t).step_budget for t in tasks)
    capacity = int(serve_config("smoke").data.online_capacity)
    tokens_file = os.path.join(root, "tokens.json")
    creds = [(f"soak-{i}", add_robot(tokens_file, f"soak-{i}")) for i in range(clients)]
    run_dir = os.path.join(root, "run")
    addr_file = os.path.join(run_dir, "fleet", "learner.json")
    cmd = [sys.executable, "-m", "experiments.serve", "--config=experiments/configs/serve.py:smoke",
           f"--config.checkpoint_every={CHECKPOINT_EVERY}", f"--config.workdir={run_dir}",
           f"--config.data.offline_dir={dc.out_dir}", f"--config.tasks={dc.tasks}",
           "--config.online.host=127.0.0.1", "--config.online.port=0", f"--config.online.tokens_file={tokens_file}",
           *([f"--config.online.ingest_replicas={replicas}"] if replicas else []),
           *[f"--config.{o}" for o in overrides or []]]
    env = {**os.environ, "MUJOCO_GL": "disable"}

    def start(log: str) -> list[subprocess.Popen]:
        """The learner: one process, or `learner_procs` jax.distributed processes (process i logs to log-i)."""
        if os.path.exists(addr_file):
            os.remove(addr_file)
        multi = {"LWD_COORDINATOR": f"127.0.0.1:{_free_port()}", "LWD_NUM_PROCESSES": str(learner_procs)}
        out = []
        for i in range(learner_procs):
            e = {**env, **multi, "LWD_PROCESS_ID": str(i)} if learner_procs > 1 else env
            with open(log if i == 0 else log.replace(".log", f"-{i}.log"), "w") as fh:
                out.append(subprocess.Popen(cmd, cwd=ROOT, env=e, stdout=fh, stderr=subprocess.STDOUT))
        return out

    log1 = os.path.join(root, "learner.log")
    learners = start(log1)
    rss: list[tuple[float, float]] = []
    rss_all: list[tuple[float, float]] = []  # every learner process and the replicas
    sampling = threading.Event()
    killed_at: list[float] = []
    try:
        _wait_for(addr_file, learners[0], SERVE_TIMEOUT_S, log1)
        served = json.load(open(addr_file))
        target = ",".join(served["replicas"]) if served.get("replicas") else f"127.0.0.1:{served['port']}"

        def sample() -> None:
            while not sampling.wait(RSS_EVERY_S):
                mb = rss_mb(learners[0].pid)
                if mb is not None:
                    rss.append((time.time(), mb))
                every = [_tree_rss_mb(p.pid) for p in learners]
                if any(m is not None for m in every):
                    rss_all.append((time.time(), sum(m for m in every if m is not None)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_start = time.time() + 20.0  # the clients' episode pools are built and their channels connected by then
        end_at = t_start + 60.0 * minutes
        ctx = mp.get_context("spawn")  # never fork a process that holds gRPC threads
        logs = [os.path.join(root, f"clients-{p}.jsonl") for p in range(procs)]
        workers = [ctx.Process(target=_worker, args=(target, creds[p::procs], tasks, max_len, end_at, logs[p]))
                   for p in range(procs)]
        for w in workers:
            w.start()
        if replicas > 1 and kill_replica_at > 0:
            time.sleep(max(0.0, t_start + kill_replica_at - time.time()))
            if not _kill_replica("r0"):
                raise RuntimeError("soak: found no replica r0 to kill")
            killed_at.append(time.time() - t_start)
        for w in workers:
            w.join(timeout=60.0 * minutes + 600)
        crashed = [w.exitcode for w in workers if w.exitcode != 0]
        rc1 = _stop(learners)
    finally:
        sampling.set()
        for p in learners:
            if p.poll() is None:
                p.kill()

    # restart on the same work dir: the fleet store is rebuilt from disk before the learner serves again
    log2 = os.path.join(root, "learner_restart.log")
    t = time.perf_counter()
    learners = start(log2)
    try:
        _wait_for(addr_file, learners[0], SERVE_TIMEOUT_S, log2)
        restart_to_serving_s = time.perf_counter() - t
    finally:
        rc2 = _stop(learners)
    text = open(log2).read()
    m = REBUILT.search(text)
    tail_read = TAIL_READ.search(text)

    # The learner's RSS samples and the clock go to disk before the store is counted: a count that fails (as
    # the 100k-shard naming bug made it) must not take the run's figures with it (the clients' logs are there).
    with open(os.path.join(root, "samples.json"), "w") as f:
        json.dump({"t_start": t_start, "end_at": end_at, "rss": rss, "rss_all": rss_all}, f)
    recs = [json.loads(ln) for path in logs for ln in open(path) if ln.strip()]
    sent = [r["sent"] for r in recs if "sent" in r]
    acks = [r for r in recs if "ack" in r]
    errors = [r for r in recs if "error" in r]
    died = [r for r in recs if "died" in r]
    learned: Counter | None = None
    if replicas:  # the commit records are the store's truth; process 0's fleet log is what the learner read
        stored = Counter(eid for eid, _ in iter_commits(SharedStore(os.path.join(run_dir, "fleet", "shared"))))
        with open(os.path.join(run_dir, "fleet", "rlds.episodes.jsonl")) as f:
            learned = Counter(json.loads(x)["episode_id"] for x in f if x.strip())
    else:
        stored = Counter(ep.episode_id for ep in RLDSReader(os.path.join(run_dir, "fleet", "rlds")).episodes())
    acked = {a["ack"] for a in acks}
    mean_steps = float(np.mean([a["steps"] for a in acks])) if acks else 0.0
    rows = per_minute(acks, rss, t_start, end_at, capacity / mean_steps if mean_steps else None,
                      rss_all if (replicas or learner_procs > 1) else None,
                      learner_memory(os.path.join(run_dir, "logs", "metrics.jsonl")))
    rates = np.array([r["acks_per_s"] for r in rows])
    slope = float(np.polyfit(np.arange(len(rates)), rates, 1)[0]) if len(rates) > 1 else 0.0
    full_rss = [r["rss_mb"] for r in rows if r["buffer_full"] and r["rss_mb"] is not None]
    return {
        "clients": clients, "procs": procs, "minutes": minutes, "tasks": tasks, "mean_steps_per_episode": mean_steps,
        "replicas": replicas, "learner_procs": learner_procs, "replica_killed_at_s": killed_at[0] if killed_at else None,
        "replay_capacity_transitions": capacity, "per_minute": rows,
        "acks_per_s_slope_per_minute": slope, "trends": trends(rows, minutes),
        "rss_growth_mb_after_buffer_full": (full_rss[-1] - full_rss[0]) if len(full_rss) > 1 else None,
        "episodes": {"sent": len(sent), "acked": len(acked), "stored": len(stored),
                     "lost": len(acked - set(stored)), "duplicated": sum(1 for c in stored.values() if c > 1),
                     "stored_unacked": len(set(stored) - acked), "client_errors": len(errors),
                     "ack_duplicates": sum(1 for a in acks if a["dup"]),
                     **({"learned_after_restart": len(learned), "learned_twice": sum(1 for c in learned.values() if c > 1),
                         "acked_not_learned": len(acked - set(learned))} if learned is not None else {})},
        "errors_sample": [e["what"] for e in errors[:5]],
        "learner_exit_codes": [rc1, rc2], "client_process_failures": crashed,
        "clients_died": [f"{d['died']}: {d['what']}" for d in died],
        "restart": {"rebuilt_episodes": int(m.group(1)) if m else None,
                    "episodes_read": int(m.group(2)) if m else None, "rebuild_mode": m.group(3) if m else None,
                    "rebuilt_transitions": int(m.group(4)) if m else None,
                    "rebuild_s": float(m.group(5)) if m else None, "to_serving_s": restart_to_serving_s,
                    **({"tail_read_episodes": int(tail_read.group(1)), "tail_read_s": float(tail_read.group(3))}
                       if tail_read else {})},
        "workdir": root,
    }


def write_results(res: dict[str, Any], out: str, markdown: Callable[[dict[str, Any]], str]) -> None:
    """`out` (JSON) and its markdown table beside it (`.md`), and the table on stdout: every experiment's results."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(res) + "\n")
    print(markdown(res))


def markdown(res: dict[str, Any]) -> str:
    """The per-minute table and the totals, as the README and the issue note show them."""
    scale = res.get("replicas") or res.get("learner_procs", 1) > 1
    lines = [f"{res['clients']} clients, {res['minutes']:g} min, {res['mean_steps_per_episode']:.0f} steps per episode"
             + (f"; {res['replicas']} ingest replicas, {res['learner_procs']} learner processes"
                + (f", replica r0 SIGKILLed at {res['replica_killed_at_s']:.0f} s" if res.get('replica_killed_at_s') else "")
                if scale else ""),
             "", "| minute | acks/s | ack p50 (s) | ack p99 (s) | learner RSS (MB) | " + ("all processes RSS (MB) | " if scale else "")
             + "replay buffer full |", "|---|---|---|---|---|" + ("---|" if scale else "") + "---|"]
    f = lambda x, d=2: "–" if x is None else f"{x:.{d}f}"  # noqa: E731
    for r in res["per_minute"]:
        lines.append(f"| {r['minute']} | {r['acks_per_s']:.1f} | {f(r['ack_p50_s'])} | {f(r['ack_p99_s'])} | "
                     f"{f(r['rss_mb'], 0)} | " + (f"{f(r.get('rss_all_mb'), 0)} | " if scale else "")
                     + f"{'yes' if r['buffer_full'] else 'no'} |")
    e, rs = res["episodes"], res["restart"]
    lines += ["", f"Episodes: sent {e['sent']}, acked {e['acked']}, stored {e['stored']}, lost {e['lost']}, "
              f"duplicated {e['duplicated']}, stored but unacked {e['stored_unacked']}, client errors {e['client_errors']}, "
              f"clients died {len(res['clients_died'])}.",
              f"acks/s slope {res['acks_per_s_slope_per_minute']:+.2f} per minute; RSS growth after the buffer filled "
              f"{f(res['rss_growth_mb_after_buffer_full'], 1)} MB; restart: rebuilt {rs['rebuilt_episodes']} episodes in "
              f"{rs['rebuild_s']} s, serving again after {rs['to_serving_s']:.1f} s; learner exits {res['learner_exit_codes']}."]
    if "trends" in res:
        a, m = res["trends"]["acks_per_s"], res["trends"]["rss_after_full"]
        iv = lambda d, u: ("–" if d["slope"] is None  # noqa: E731
                           else f"{d['slope']:+.2f} {u} (95% CI {d['lo']:+.2f} to {d['hi']:+.2f}, {d['n']} minutes)")
        lines.append(f"Trends: acks/s {iv(a, 'per minute')} on a mean of {a['mean']:.1f}; learner RSS over the "
                     f"{m['minutes']} minutes with the buffer full {f(m['first_mb'], 0)} -> {f(m['last_mb'], 0)} MB, slope "
                     f"{iv(m['slope_mb_per_min'], 'MB/min')}, over their later half {iv(m['later_half_slope_mb_per_min'], 'MB/min')}.")
        for key, what in (("malloc_in_use_after_full", "malloc in use (live allocations)"),
                          ("malloc_arena_after_full", "malloc arenas (in use + free inside)")):
            if key in res["trends"]:
                h = res["trends"][key]
                lines.append(f"Learner {what}: slope {iv(h['slope_mb_per_min'], 'MB/min')}, over the later half "
                             f"{iv(h['later_half_slope_mb_per_min'], 'MB/min')}.")
    if "learned_after_restart" in e:
        lines.append(f"Committed (commit records) {e['stored']}; process 0 re-read {e['learned_after_restart']} after the "
                     f"restart ({rs.get('tail_read_episodes')} in {rs.get('tail_read_s')} s), {e['learned_twice']} twice, "
                     f"acked but not read {e['acked_not_learned']}; acks answered `duplicate` {e['ack_duplicates']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--procs", type=int, default=8, help="client processes (the clients are split over them)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--workdir", default=None, help="keep the learner's run dir and the client logs here")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="a learner config override key.path=value, e.g. data.online_capacity=200000")
    p.add_argument("--replicas", type=int, default=0, help="ingest replicas between the clients and the learner")
    p.add_argument("--learner-procs", type=int, default=1, help="learner processes (jax.distributed; needs --replicas)")
    p.add_argument("--kill-replica-at", type=float, default=0.0, help="SIGKILL replica r0 this many seconds in (0: never)")
    p.add_argument("--out", default="results/soak.json")
    p.add_argument("--summarize", metavar="RESULTS_JSON", default=None,
                   help="recompute the trend statistics and the table of an existing results file in place; no run")
    args = p.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as f:
            res = json.load(f)
        res["trends"] = trends(res["per_minute"], res["minutes"])
        write_results(res, args.summarize, markdown)
        return res
    if args.clients < 1 or args.procs < 1 or args.minutes <= 0:
        p.error("--clients and --procs must be >= 1 and --minutes > 0")
    if args.replicas < 0 or args.learner_procs < 1 or (args.learner_procs > 1 and not args.replicas):
        p.error("--replicas must be >= 0 and --learner-procs >= 1; several learner processes need --replicas")
    res = run(args.clients, min(args.procs, args.clients), args.minutes, args.workdir, args.overrides,
              args.replicas, args.learner_procs, args.kill_replica_at)
    write_results(res, args.out, markdown)
    return res


if __name__ == "__main__":
    main()
