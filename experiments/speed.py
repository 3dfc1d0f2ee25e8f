"""`make bench`: learner, inference and fleet-transport speed as one JSON document (never a timed test).

    python -m experiments.speed --out results/bench.json            # full (~5-10 min on 2 CPU cores)
    python -m experiments.speed --quick --only matmul,update         # a fast subset

Entries: the matmul roof of this machine; the full LWD update (DIVL + QAM) and BC at the default and the
`gpu` (reference-size) configs: updates/s, samples/s, true GFLOP per update (every K-loop unrolled so XLA's
`cost_analysis` counts it K times) and achieved GFLOP/s against the roof; acting latency; episode ingestion
over gRPC on loopback; parameter push latency to N robots. The load average is recorded at start and end,
because on a shared machine it says how far to trust the numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import bench_bridge as bench_bridge_probe
from experiments import bench_ingest as ingest
from experiments import bench_pipeline as pipeline
from experiments import bench_qam_ref as qam_ref
from experiments import benchmark
from experiments.configs.benchmark import get_config as benchmark_config
from experiments.configs.multitask import get_config
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data.normalize import compute_stats
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.data.rlds_writer import RLDSWriter
from lwd_jax.fake import random_batches, random_obs
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.local_fleet import ROBOT_ENV
from lwd_jax.learner.online import fleet_log_path
from lwd_jax.learner.service import FleetServicer, PolicyStore, serve
from lwd_jax.policy import Policy, encode_policy
from robot_bridge.client import LearnerClient

PARTS = ("matmul", "update", "update_gpu", "methods", "inference", "bridge", "ingest", "push", "store", "pipeline",
         "publish", "qam_ref")


def _timeit(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call, best of `repeats` after one warm-up (one definition: `bench_pipeline.best_call_s`)."""
    return pipeline.best_call_s(fn, repeats)


def bench_matmul(repeats: int) -> dict[str, float]:
    out = {}
    for m, k, n in ((256, 512, 512), (1024, 1024, 1024)):
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        f = jax.jit(lambda x, y: x @ y)
        s = _timeit(lambda f=f, a=a, b=b: f(a, b), repeats * 10)
        out[f"gflops_{m}x{k}x{n}"] = 2 * m * k * n / s / 1e9
    out["roof_gflops"] = max(out.values())
    return out


def bench_update(variant: str, batch: int, updates_per_call: int, repeats: int, roof: float | None) -> dict[str, Any]:
    """Full LWD update and BC step of `multitask.py:<variant>` on random batches of the real shapes."""

    cfg = get_config(variant)
    agent = LWDAgent(cfg.agent)
    example = random_obs(np.random.default_rng(0), 2)
    state = agent.init(0, example)
    batches = jax.device_put(random_batches(0, updates_per_call, batch))
    holder = {"state": state}

    def rl():
        holder["state"], m = agent.update(holder["state"], batches)
        return m

    def bc():
        holder["state"], m = agent.pretrain_update(holder["state"], batches)
        return m

    def critic():  # the warm-up's critic-only update (value, critic, target EMA; no flow)
        holder["state"], m = agent.critic_update(holder["state"], batches)
        return m

    t = time.perf_counter()
    jax.block_until_ready(rl())
    compile_s = time.perf_counter() - t
    rl_s = _timeit(rl, repeats) / updates_per_call
    bc_s = _timeit(bc, repeats) / updates_per_call
    critic_s = _timeit(critic, repeats) / updates_per_call
    unrolled = cfg.agent.copy_and_resolve_references()
    unrolled.qam.scan_unroll = True
    agent_u = LWDAgent(unrolled)
    one = jax.tree.map(lambda x: x[0], batches)
    cost = jax.jit(functools.partial(agent_u._rl_step, stage="offline")).lower(agent_u.init(0, example), one).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    gflop = float(cost["flops"]) / 1e9
    out = {
        "config": variant or "default",
        "batch": batch,
        "updates_per_call": updates_per_call,
        "compile_s": compile_s,
        "rl_updates_per_s": 1.0 / rl_s,
        "rl_samples_per_s": batch / rl_s,
        "bc_updates_per_s": 1.0 / bc_s,
        "critic_only_updates_per_s": 1.0 / critic_s,
        "gflop_per_update": gflop,
        "achieved_gflops": gflop / rl_s,
    }
    if roof:
        out["fraction_of_roof"] = out["achieved_gflops"] / roof
    return out


def bench_methods(quick: bool, repeats: int) -> dict[str, Any]:
    """Per benchmark method (experiments/configs/benchmark.py): learner updates/s of the update its fleet
    stage runs (offline-only ablations: the offline update), at the benchmark's net sizes and batch, and
    the budget it is given (BC pretrain, offline RL and online learner updates, fleet episodes). The fleet
    episodes a finished benchmark run actually stored are added from runs/benchmark when present."""

    bcfg = benchmark_config("smoke" if quick else "")
    out: dict[str, Any] = {}
    for method in (benchmark.SFT, *benchmark.bench_cfg.METHODS):
        cfg = benchmark.run_config(bcfg, 0, method)
        agent = LWDAgent(cfg.agent)
        holder = {"state": agent.init(0, random_obs(np.random.default_rng(0), 2))}
        batches = jax.device_put(random_batches(0, cfg.updates_per_call, cfg.batch_size))
        bc_learner = method == benchmark.SFT or cfg.online_learner == "hg_dagger" or benchmark.is_bc_reference(method)
        stage = "online" if cfg.stage == "all" else "offline"

        def step(agent=agent, holder=holder, batches=batches, bc_learner=bc_learner, stage=stage):  # bound now
            if bc_learner:
                holder["state"], m = agent.pretrain_update(holder["state"], batches)
            else:
                holder["state"], m = agent.update(holder["state"], batches, stage=stage)
            return m

        t = time.perf_counter()
        jax.block_until_ready(step())
        compile_s = time.perf_counter() - t
        sec = _timeit(step, repeats) / cfg.updates_per_call
        warmup = 0 if bc_learner else cfg.critic_warmup_steps
        if warmup:  # the critic-only updates that precede the method's extraction

            def critic_step(agent=agent, holder=holder, batches=batches):
                holder["state"], m = agent.critic_update(holder["state"], batches)
                return m

            jax.block_until_ready(critic_step())
            critic_sec = _timeit(critic_step, repeats) / cfg.updates_per_call
        online = cfg.stage == "all"
        row = {
            "update": "BC (flow matching)" if bc_learner else f"{cfg.agent.extraction} + {cfg.agent.divl.value_type} "
                      f"value, {cfg.agent.divl.critic_target} target ({stage})",
            "learner_updates_per_s": 1.0 / sec, "compile_s": compile_s, "batch": cfg.batch_size,
            "pretrain_steps": cfg.pretrain_steps, "critic_warmup_steps": warmup,
            "critic_warmup_updates_per_s": 1.0 / critic_sec if warmup else None,
            "offline_steps": cfg.offline_steps if method != benchmark.SFT else 0,
            "online_steps": cfg.online_steps if online else 0,
            "fleet_episodes": cfg.online.fleet_episodes if online else 0,
        }
        log = fleet_log_path(benchmark.workdir(bcfg, 0, method))
        if online and os.path.exists(log):
            with open(log) as f:
                row["fleet_episodes_stored_seed0"] = sum(1 for _ in f)
        out[method] = row
        print(f"bench methods: {method}: {row['learner_updates_per_s']:.1f} updates/s ({row['update']})", flush=True)
    return out


def bench_inference(repeats: int) -> dict[str, float]:
    """Acting latency of the default policy: one robot (batch 1) and a batch of 64."""

    agent = LWDAgent(get_config("suite").agent)
    state = agent.init(0, random_obs(np.random.default_rng(0), 2))
    out = {}
    for b in (1, 64):
        obs = random_obs(np.random.default_rng(1), b)
        key = jax.random.PRNGKey(0)
        jax.block_until_ready(agent.sample_actions(state.params, obs, key))
        times = []
        for _ in range(repeats * 20):
            t = time.perf_counter()
            jax.block_until_ready(agent.sample_actions(state.params, obs, key))
            times.append(time.perf_counter() - t)
        times.sort()
        out[f"batch{b}_p50_ms"] = 1e3 * statistics.median(times)
        out[f"batch{b}_p90_ms"] = 1e3 * times[int(0.9 * (len(times) - 1))]
        out[f"batch{b}_chunks_per_s"] = b / statistics.median(times)
    return out


def bench_bridge(chunks: int) -> dict[str, float]:
    """The daemon process's RSS and per-chunk policy latency, in a process of its own on one CPU with the
    robots' environment (one XLA thread): experiments/bench_bridge.py."""
    path = os.path.join(tempfile.mkdtemp(prefix="lwd-bench-bridge-"), "policy.blob")
    with open(path, "wb") as f:
        f.write(bench_bridge_probe.toy_policy_blob())
    out = subprocess.run([sys.executable, "-m", "experiments.bench_bridge", "--chunks", str(chunks), "--blob", path],
                         capture_output=True, text=True, env={**os.environ, **ROBOT_ENV}, check=False,
                         preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    if out.returncode != 0:
        raise RuntimeError(f"bench bridge: exit {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ingest(quick: bool) -> dict[str, Any]:
    """gRPC ingestion: bursts into a counting store (the transport + validation ceiling), then 16 uploaders for
    30 s into the real fleet store, every episode fsynced before its ack (what a fleet gets)."""
    out = {}
    for m in (4,) if quick else (4, 16):
        out[f"uploaders_{m}"] = ingest.run(num_uploaders=m, episodes=5 if quick else 20, steps=200, steps_per_chunk=100)
    root = tempfile.mkdtemp(prefix="lwd-ingest-bench-")
    try:
        m, seconds = (4, 3.0) if quick else (16, 30.0)
        out[f"uploaders_{m}_durable"] = ingest.run(num_uploaders=m, episodes=5, steps=200, steps_per_chunk=100,
                                                   durable_dir=os.path.join(root, "rlds"), duration_s=seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def bench_store(appends: int, window: int, durable: bool) -> dict[str, Any]:
    """The fleet store's append latency against its size (one episode per append, the fleet path), and the
    time to re-read it all (a restart's rebuild). Goal: flat per-window latency (no growth with the store)."""
    import resource
    import tempfile

    rng = np.random.default_rng(0)
    eps = [ingest.synthetic_episode(int(rng.integers(20, 60)), rng, "robot-0") for _ in range(32)]
    root = tempfile.mkdtemp(prefix="lwd-store-bench-")
    times = []
    rss0 = 0
    try:
        with RLDSWriter(os.path.join(root, "rlds"), durable=durable) as writer:
            for i in range(appends):
                t = time.perf_counter()
                writer.append(eps[i % len(eps)])
                times.append(time.perf_counter() - t)
                if i == window - 1:  # after TensorFlow's import and the first window: growth is the store's
                    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        reread = sum(1 for _ in RLDSReader(os.path.join(root, "rlds")).episodes())
        reread_s = time.perf_counter() - t
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_window = [1e3 * float(np.mean(times[i:i + window])) for i in range(0, appends, window)]
    return {"appends": appends, "durable": durable, "window": window, "ms_per_append_by_window": by_window,
            "last_over_first_window": by_window[-1] / by_window[0],
            "p99_ms_last_window": 1e3 * float(np.percentile(times[-window:], 99)),
            "max_rss_growth_after_first_window_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024,
            "reread_episodes": reread, "reread_s": reread_s}


def bench_push(num_robots: int, repeats: int) -> dict[str, Any]:
    """Publish a default-size policy blob, then N robots fetch it concurrently (checksums verified)."""

    cfg = get_config("suite")
    agent = LWDAgent(cfg.agent)
    obs = random_obs(np.random.default_rng(0), 8)
    state = agent.init(0, obs)
    blob = encode_policy(cfg.agent, jax.device_get(policy_params(state)), compute_stats(obs), 1, "policy")
    store = PolicyStore()
    tokens = {f"robot-{i}": f"tok-{i}" for i in range(num_robots)}
    server = serve(FleetServicer(persist=lambda ep: None, params_provider=store, auth=TokenAuth.from_plain_tokens(tokens)), host="127.0.0.1")
    clients = [LearnerClient(f"127.0.0.1:{server.port}", rid, tok) for rid, tok in tokens.items()]
    lat = []
    try:
        for version in range(1, repeats + 2):
            t = time.perf_counter()
            store.publish(version, blob)
            got: list[int] = []
            threads = [threading.Thread(target=lambda c=c, got=got: got.append(c.fetch_policy()[0])) for c in clients]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if got != [version] * num_robots:
                raise RuntimeError(f"push: robots got versions {got}, expected {version}")
            if version > 1:  # the first round opens the channels
                lat.append(time.perf_counter() - t)
    finally:
        for c in clients:
            c.close()
        server.stop(0)
    return {"robots": num_robots, "blob_bytes": len(blob), "latency_s_median": statistics.median(lat), "latency_s_max": max(lat)}


def bench_publish(num_robots: int, versions: int, every_s: float) -> dict[str, Any]:
    """Publish -> robot loaded: the learner publishes a new version every `every_s` seconds; each of
    `num_robots` bridge clients follows WatchPolicy, downloads the blob (sha256-checked), decodes it into a
    `Policy` and acts once with it, as a daemon's watcher and loader do (all clients in this process: their
    decodes share its cores and GIL, so this is an upper bound on one robot's own time). A daemon swaps to the
    loaded version at its next episode boundary (it never changes policy mid-episode): add up to one episode."""
    cfg = get_config("suite")
    agent = LWDAgent(cfg.agent)
    obs = random_obs(np.random.default_rng(0), 8)
    params = jax.device_get(policy_params(agent.init(0, obs)))
    lang = {"bench": np.zeros(obs["lang"].shape[-1], np.float32)}
    one = {"state": np.zeros(obs["state"].shape[-1], np.float32), "state_mask": np.ones(obs["state"].shape[-1], bool),
           "proprio": np.zeros(obs["proprio"].shape[-1], np.float32)}
    store = PolicyStore()
    tokens = {f"robot-{i}": f"tok-{i}" for i in range(num_robots)}
    server = serve(FleetServicer(persist=lambda ep: None, params_provider=store, auth=TokenAuth.from_plain_tokens(tokens)),
                   host="127.0.0.1", max_workers=2 * num_robots + 8)
    published: dict[int, float] = {}
    loaded: dict[tuple[str, int], float] = {}
    errors: list[str] = []

    def follow(rid: str, tok: str) -> None:
        known = 0  # version 0 is published before the clock starts (every client loads it: warm-up)
        try:
            with LearnerClient(f"127.0.0.1:{server.port}", rid, tok) as client:
                while known < versions:
                    for v in client.watch_policy(known, timeout_s=30.0):
                        if v <= known:
                            continue
                        blob = client.fetch_policy_blob()
                        Policy(blob.data)(one, "bench")
                        loaded[(rid, blob.version)] = time.perf_counter()
                        known = blob.version
                        if known >= versions:
                            return
        except Exception as e:  # reported below: a client that failed fails the part
            errors.append(f"{rid}: {e!r}")

    blob0 = encode_policy(cfg.agent, params, compute_stats(obs), 0, "policy", instructions=lang)
    store.publish(0, blob0)
    Policy(blob0)(one, "bench")  # the first version compiles the sampler once per process (a robot's start)
    threads = [threading.Thread(target=follow, args=item, daemon=True) for item in tokens.items()]
    for th in threads:
        th.start()
    try:
        for v in range(1, versions + 1):
            time.sleep(every_s)
            blob = encode_policy(cfg.agent, params, compute_stats(obs), v, "policy", instructions=lang)
            published[v] = time.perf_counter()
            store.publish(v, blob)
        for th in threads:
            th.join(timeout=60.0)
    finally:
        server.stop(0)
    if errors or len(loaded) < num_robots * versions:
        raise RuntimeError(f"publish: {len(loaded)} of {num_robots * versions} loads; errors {errors[:3]}")
    lat = [loaded[(rid, v)] - published[v] for rid in tokens for v in published]
    every_robot = [max(loaded[(rid, v)] for rid in tokens) - published[v] for v in published]
    return {"robots": num_robots, "versions": versions, "every_s": every_s, "blob_bytes": len(blob0),
            "seconds": versions * every_s,
            "publish_to_loaded_p50_s": float(np.percentile(lat, 50)), "publish_to_loaded_p99_s": float(np.percentile(lat, 99)),
            "publish_to_every_robot_loaded_p50_s": float(np.percentile(every_robot, 50)),
            "publish_to_every_robot_loaded_p99_s": float(np.percentile(every_robot, 99))}


def _fmt(x: Any, spec: str = ".3g") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "–"


def markdown(doc: dict[str, Any]) -> str:
    """The figures the speed goals name, each beside its goal, as a markdown table (written next to the JSON).
    Parts not run are left out; everything else stays in the JSON."""
    rows: list[tuple[str, str, str]] = [(f"part `{k}`", f"failed: {v['error'][:300]}", "")
                                        for k, v in doc.items() if isinstance(v, dict) and "error" in v]
    full, doc = doc, {k: v for k, v in doc.items() if not (isinstance(v, dict) and "error" in v)}
    upd = doc.get("update_default")
    if upd:
        rows += [(f"learner update, {upd['config']} config (batch {upd['batch']})",
                  f"{_fmt(upd['rl_updates_per_s'])} updates/s; critic-only {_fmt(upd['critic_only_updates_per_s'])}; "
                  f"BC {_fmt(upd['bc_updates_per_s'])}", "")]
        if "fraction_of_roof" in upd:
            rows.append(("learner GFLOP/s / matmul roof", f"{_fmt(upd['achieved_gflops'])} / "
                         f"{_fmt(doc['matmul']['roof_gflops'])} = {_fmt(upd['fraction_of_roof'], '.2f')}", "≥ 0.9"))
    pipe = doc.get("pipeline")
    if pipe:
        for key in sorted(k for k in pipe if k.startswith("prefetch_")):
            r = pipe[key]
            label = (f"prefetch {r['prefetch_batches']}, {r.get('updates_per_call', pipe['updates_per_call'])} "
                     "updates per call")
            rows.append((f"online learner under {pipe['uploaders']} uploaders, {label} / pure update "
                         f"({pipe['updates_per_call']} per call)", f"{_fmt(r['updates_per_s'])} / "
                         f"{_fmt(pipe['pure_updates_per_s'])} = {_fmt(r['ratio_to_pure'], '.2f')}", "≥ 0.9"))
            lat = r["episode_to_sampleable"]
            rows.append((f"episode → sampleable, {label} (n={lat['n']})",
                         f"p50 {_fmt(lat['p50_s'])} s, p99 {_fmt(lat['p99_s'])} s", "p99 ≤ 1 s"))
    pub = doc.get("publish")
    if pub:
        rows.append((f"publish → every robot loaded ({pub['robots']} robots, {pub['versions']} versions over "
                     f"{_fmt(pub['seconds'])} s)", f"p50 {_fmt(pub['publish_to_every_robot_loaded_p50_s'])} s, "
                     f"p99 {_fmt(pub['publish_to_every_robot_loaded_p99_s'])} s", "p99 ≤ 2 s"))
    for _, r in sorted(doc.get("ingest", {}).items()):
        rows.append((f"ingestion, {r['num_uploaders']} uploaders, {'fsynced before the ack' if r['durable'] else 'burst, no store'}"
                     f" ({_fmt(r['wall_s'])} s)", f"{_fmt(r['steps_per_s'], ',.0f')} steps/s",
                     "≥ 50k (durable)" if r["durable"] else ""))
    ref = doc.get("qam_ref")
    if ref and "skipped" in ref:
        rows.append(("update vs the public QAM reference", f"skipped: {ref['skipped']}", "≥ 1.0 (CPU)"))
    elif ref:
        rows.append(("update vs the public QAM reference (its shapes: 4x512, 10 critics, K=10, batch 256)",
                     f"{_fmt(ref['ours']['updates_per_s'])} / {_fmt(ref['reference']['updates_per_s'])} updates/s = "
                     f"{_fmt(ref['updates_per_s_ratio'], '.2f')} (FLOPs per update {_fmt(ref['flop_ratio'], '.2f')}x, "
                     f"GFLOP/s {_fmt(ref['gflops_ratio'], '.2f')}x)", "≥ 1.0 (CPU)"))
    push = doc.get("push")
    if push:
        rows.append((f"push a {push['blob_bytes'] / 1e6:.1f} MB policy to {push['robots']} robots",
                     f"median {_fmt(push['latency_s_median'])} s", ""))
    inf = doc.get("inference")
    if inf:
        rows.append(("acting latency (batch 1 / 64)", f"p50 {_fmt(inf['batch1_p50_ms'])} / {_fmt(inf['batch64_p50_ms'])} ms", ""))
    br = doc.get("bridge")
    if br:
        rows.append(("bridge daemon", ", ".join(f"{k} {_fmt(v)}" for k, v in br.items() if isinstance(v, (int, float))), ""))
    st = doc.get("store")
    if st:
        rows.append((f"fleet store append, {st['appends']} appends", f"last/first window {_fmt(st['last_over_first_window'], '.2f')}, "
                     f"p99 last window {_fmt(st['p99_ms_last_window'])} ms", "flat"))
    m = full["machine"]
    head = (f"# make bench ({'quick' if full.get('quick') else 'full'})\n\n{m['cpus']} CPUs, {m['backend']}, jax {m['jax']}; "
            f"load average {m['loadavg_start']:.1f} at start, {m.get('loadavg_end', float('nan')):.1f} at end.\n\n")
    table = "| figure | measured | goal |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    return head + table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="results/bench.json")
    p.add_argument("--quick", action="store_true", help="few repeats, small sizes: a smoke run")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--qam-ref", default=os.environ.get("QAM_REF_DIR", ".bench/qam"),
                   help="a checkout of the public QAM reference (qam_ref part; default $QAM_REF_DIR or .bench/qam)")
    args = p.parse_args(argv)
    parts = [x for x in args.only.split(",") if x]
    bad = [x for x in parts if x not in PARTS]
    if bad:
        p.error(f"--only: unknown part(s) {bad}; known: {PARTS}")
    repeats = 2 if args.quick else 5
    doc: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "loadavg_start": os.getloadavg()[0],
        },
        "quick": args.quick,
    }
    q, qam_venv = args.quick, os.path.join(".bench", "qam_ref-venv")
    # Each part is a thunk, run in this order; one that fails is recorded as {"error": ...} and the others still
    # run, and the files are rewritten after every part (a 15-minute run never loses what it measured).
    runs: dict[str, tuple[str, Callable[[], Any]]] = {
        "matmul": ("matmul", lambda: bench_matmul(repeats)),
        "update": ("update_default", lambda: bench_update("smoke" if q else "suite", 16 if q else 256, 2 if q else 10,
                                                          repeats, _roof(doc))),
        "update_gpu": ("update_gpu_config", lambda: bench_update("gpu", 256, 2, 2 if q else 3, _roof(doc))),
        "methods": ("methods", lambda: bench_methods(q, repeats)),
        "inference": ("inference", lambda: bench_inference(repeats)),
        "bridge": ("bridge", lambda: bench_bridge(50 if q else 500)),
        "ingest": ("ingest", lambda: bench_ingest(q)),
        "push": ("push", lambda: bench_push(4, repeats)),
        # the online learner's input pipeline under fleet traffic (experiments/bench_pipeline.py)
        "pipeline": ("pipeline", lambda: pipeline.run("smoke", 16, 2, uploaders=4, seconds=10.0, repeats=2,
                                                         short_calls=(1,)) if q
                     else pipeline.run("suite", 256, 10, uploaders=16, seconds=60.0, repeats=repeats)),
        # publish -> every robot loaded, 16 clients over a minute
        "publish": ("publish", lambda: bench_publish(4, 4, 1.0) if q else bench_publish(16, 30, 2.0)),
        "store": ("store", lambda: bench_store(200 if q else 6000, 50 if q else 500, durable=False)),
        # the public QAM reference's update beside ours (experiments/bench_qam_ref.py)
        "qam_ref": ("qam_ref", lambda: qam_ref.run(args.qam_ref, qam_venv, calls=2 if q else 5, repeats=repeats,
                                                    rounds=1 if q else 2)),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for part in PARTS:
        if part not in parts:
            continue
        key, thunk = runs[part]
        t0 = time.perf_counter()
        try:
            doc[key] = thunk()
        except Exception as e:  # noqa: BLE001 (recorded in the JSON and printed; the run goes on)
            doc[key] = {"error": repr(e)[-2000:]}
            print(f"bench: part {part} failed: {e!r}", file=sys.stderr, flush=True)
        doc.setdefault("part_seconds", {})[part] = time.perf_counter() - t0
        _write(doc, args.out)
    doc["machine"]["loadavg_end"] = os.getloadavg()[0]
    _write(doc, args.out)
    print(json.dumps(doc, indent=1))
    return doc


def _roof(doc: dict[str, Any]) -> float | None:
    return doc.get("matmul", {}).get("roof_gflops")


def _write(doc: dict[str, Any], out: str) -> None:
    """The JSON and its markdown table, each replaced whole (a reader never sees half a file)."""
    for path, text in ((out, json.dumps(doc, indent=1)), (os.path.splitext(out)[0] + ".md", markdown(doc))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main()
