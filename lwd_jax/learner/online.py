"""The online stage: learner service + embedded fleet + continuous DIVL/QAM training on offline ⊕ fleet data.

    offline buffer ──┐
                     ├─ mixed batch (online_fraction, task-balanced) ─► agent.update(stage="online") ─┐
    fleet buffer ◄───┘                                                                                 │
        ▲   FleetStore.on_accept ◄─ RLDS shard (persist) ◄─ FleetServicer ◄── gRPC ── bridge daemons   │
        │                                                        │ params vN (every publish_every) ◄──┘
        └──────────────── rebuilt from the fleet RLDS dataset after a restart

Why the order of shutdown: the fleet is stopped first (SIGTERM: each daemon ends its episode, spools it and
flushes its spool to the still-running learner), then the server, so the budget's last episodes land too.

Several learner processes (`jax.distributed`, README "Multi-host"): only with ingest replicas (the robots talk to
the replicas, not to a learner). Every process tails the shared store into its own fleet buffer and builds its
own rows of every batch from it; process 0 alone runs the embedded fleet and the replicas, paces the stage by
the fleet's episodes and publishes policies (one writer of `policies/`); the others pace by what their tail has
read (never waiting long: process 0's pace holds every process through the collectives of the update) and
start once process 0 has warmed up (`warm.<step>` in the store: the episode count it started with, which
their tails reach before they begin). Stop and wall-clock decisions are agreed in `Learner` (one step for all).

The same stage serves a real fleet (`experiments/serve.py`): `online.host`/`port` where robots reach it,
`online.tokens_file` (the operator's hashed tokens, re-read when it changes, so `auth add`/`remove` act
without a restart), `online.tls_cert`/`tls_key` (+ `tls_client_ca` for mTLS), zero or more embedded
simulated robots, and an end by update budget, `online.duration_s`, or a stop request (SIGTERM). With no
embedded robots nobody "finishes": the learner waits for the fleet's data as long as it takes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from fleet_api.embodiment import load_embodiment
from fleet_api.wire import is_loopback
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data import batching
from lwd_jax.data.normalize import NormStats
from lwd_jax.data.replay import TransitionBuffer
from lwd_jax.learner.auth import CredentialsError, TokenAuth, add_robot, load_token_hashes
from lwd_jax.learner.fleet_store import FleetEpisode, FleetStore, fleet_summary
from lwd_jax.learner.heap import memory_stats
from lwd_jax.learner.local_fleet import LocalFleet, plan_fleet
from lwd_jax.learner.loop import Learner, Phase, UpdateFn
from lwd_jax.learner.replicas import DirectoryPolicies, ReplicaSet, SharedStore, StoreTail
from lwd_jax.learner.service import FleetServicer, PolicyStore, ServerTLS, serve
from lwd_jax.learner.task_catalog import load_catalog
from lwd_jax.policy import encode_policy
from lwd_jax.sharding import host_local, local_batch_size

log = logging.getLogger(__name__)


FOLLOWER_WAIT_S = 2.0  # a process other than 0 gives up waiting for its pace after this long without an episode


class FleetFailed(RuntimeError):
    """Every robot of the embedded fleet exited with an error; the message points at their logs."""


DEFAULT_TLS_TARGET = "localhost"  # the name embedded robots check in the learner's certificate


def check_serving(oc: ml_collections.ConfigDict) -> None:
    """Fails fast (before any training) on serving settings that cannot work: unreadable credentials raise
    CredentialsError naming the key; inconsistent settings raise ValueError naming the key."""
    if bool(oc.tls_cert) != bool(oc.tls_key):
        raise ValueError("config.online.tls_cert and tls_key: set both (TLS) or neither")
    if oc.tls_client_ca and not oc.tls_cert:
        raise ValueError("config.online.tls_client_ca: mTLS needs the server's own tls_cert and tls_key too")
    if oc.num_robots and oc.tls_cert and not oc.tls_ca:
        raise ValueError("config.online.tls_ca: with TLS on, the embedded robots need the CA that signed tls_cert "
                         "(or set online.num_robots=0)")
    if oc.num_robots and oc.tls_client_ca:
        raise ValueError("config.online.tls_client_ca: the embedded simulated robots have no client certificates; "
                         "mTLS serves a real fleet only (online.num_robots=0)")
    if oc.duration_s < 0:
        raise ValueError(f"config.online.duration_s: expected >= 0, got {oc.duration_s}")
    if oc.ingest_replicas < 0:
        raise ValueError(f"config.online.ingest_replicas: expected >= 0 (0: the learner serves the robots), got "
                         f"{oc.ingest_replicas}")
    if oc.shared_store and oc.ingest_replicas == 0 and oc.num_robots:
        raise ValueError("config.online.num_robots: with replicas run elsewhere (online.shared_store set, "
                         "ingest_replicas 0) the embedded robots would not know their addresses; set num_robots=0 "
                         "or let the learner start the replicas (online.ingest_replicas > 0)")
    for key in ("tls_cert", "tls_key", "tls_client_ca", "tls_ca"):
        if oc[key] and not os.access(oc[key], os.R_OK):
            raise CredentialsError(f"config.online.{key}: cannot read {oc[key]!r}")
    if oc.tokens_file:
        try:
            load_token_hashes(oc.tokens_file)
        except (OSError, ValueError) as e:
            raise CredentialsError(f"config.online.tokens_file: {e}") from None
    elif not oc.num_robots:
        raise CredentialsError("config.online.tokens_file: required with no embedded robots (the fleet's robots "
                               "need credentials: python -m lwd_jax.learner.auth add --tokens tokens.json robot-0)")


@dataclasses.dataclass
class OnlineReport:
    """What the online stage did: its budget in fleet episodes and learner updates, and the fleet's log."""

    fleet_episodes: list[FleetEpisode]
    learner_updates: int
    versions_published: list[int]
    seconds: float
    autonomous_robots: list[str]
    robot_logs: dict[str, list[dict]]
    spooled_left: dict[str, int]
    robot_exit_codes: dict[str, int | None]


def run_online(
    cfg: ml_collections.ConfigDict,
    agent: LWDAgent,
    state: Any,
    offline: TransitionBuffer,
    stats: NormStats,
    table: batching.InstructionTable,
    tasks: list[str],
    task_ids: dict[str, int],
    learner: Learner,
    update: UpdateFn,
    total_steps: int,
    expert: TransitionBuffer | None = None,
) -> tuple[Any, OnlineReport]:
    """Trains with `update` from `state.step` to `total_steps` while the fleet runs (the learner loop's
    "online" phase); returns the final state and the report. The phase also ends at `online.duration_s`
    and when `learner.stop` is set (SIGTERM): last checkpoint and policy written, fleet store flushed.
    `expert`: the data BC pretraining cloned; with agent.base_bc_data = "expert" every update also gets a
    batch of it and of the fleet's human-driven chunks (batch["bc"]), which the base flow clones."""
    oc = cfg.online
    check_serving(oc)
    primary = jax.process_index() == 0  # the fleet, the replicas and the policies are process 0's (module doc)
    if jax.process_count() > 1 and not (oc.ingest_replicas > 0 or oc.shared_store):
        raise ValueError(f"config.online.ingest_replicas: {jax.process_count()} learner processes need ingest replicas "
                         "(ingest_replicas > 0, or shared_store with replicas run elsewhere): robots answered by one "
                         "learner process would feed only its buffer")
    root = os.path.join(cfg.workdir, "fleet")  # fleet_log_path below names what it holds
    # Every registered wording, embedded in one batch (so the servicer's thread never has to embed one), and
    # carried in every blob (so robots need no text encoder).
    catalog = load_catalog(cfg.task_file)  # the suite's tasks and the robots' own (config.task_file)
    embodiment = load_embodiment(cfg.embodiment)  # every upload is checked against it; it rides in every blob
    wordings = [w for t in tasks for w in catalog[t].instructions]
    lang = dict(zip(wordings, table.embed(wordings), strict=True))
    n_online = {t: cfg.data.n_chunks_online for t in task_ids}
    # HG-DAgger: the fleet runs the BC flow, the learner keeps only human-driven chunks and retrains by BC.
    hg_dagger = cfg.online_learner == "hg_dagger"
    kind = "base" if hg_dagger else "policy"
    expert_bc = not hg_dagger and cfg.agent.base_bc_data == "expert"  # (the agent checked its base is trained)
    if expert_bc and expert is None:
        raise ValueError("run_online: agent.base_bc_data='expert' needs the expert buffer (BC pretraining's data)")
    # Ingest replicas: they store the uploads in a shared store; this learner tails it (learner/replicas.py).
    # ingest_replicas > 0: this learner starts them; shared_store alone: the operator runs them (README).
    shared = (SharedStore(oc.shared_store or os.path.join(root, "shared"))
              if oc.ingest_replicas > 0 or oc.shared_store else None)
    own = os.path.join(root, *(() if primary else (f"process-{jax.process_index()}",)), "rlds")  # (its log)
    store = FleetStore(own, chunk_len=cfg.agent.action_horizon,  # (process 0's log: fleet_log_path)
                       n_chunks=n_online, gamma=cfg.data.gamma, task_ids=task_ids, table=table,
                       capacity=cfg.data.online_capacity, keep="human" if hg_dagger else "all",
                       with_image=bool(cfg.agent.use_image), embodiment=embodiment, own_dataset=shared is None)
    t_rebuild = time.perf_counter()
    seen = store.rebuild()
    if seen:
        print(f"online: rebuilt the fleet buffer from disk: {len(seen)} episodes ({store.rebuild_stats['episodes_read']} "
              f"read, by {store.rebuild_stats['mode']}), {store.num_transitions()} transitions in "
              f"{time.perf_counter() - t_rebuild:.1f} s", flush=True)

    specs = plan_fleet(oc.num_robots, tasks, oc.fleet_episodes, oc.teleop_robots, cfg.seed) if primary else []
    # An image policy needs robots that render their camera (robot.toml `render`; a GL backend for them)
    extra = {"shutdown_drain_s": 30.0, **({"render": True} if cfg.agent.use_image else {})}
    fleet = LocalFleet(root, specs, control_hz=oc.control_hz, extra_config=extra)
    embedded_tokens = fleet.make_tokens()
    limits = {"max_inflight_bytes": int(oc.max_inflight_mb) << 20, "max_streams_per_robot": int(oc.max_streams_per_robot),
              "max_abs_reward": float(oc.max_abs_reward)}
    max_steps = max(catalog[t].step_budget for t in tasks)
    tls = ServerTLS.from_files(oc.tls_cert, oc.tls_key, oc.tls_client_ca or None) if oc.tls_cert else None
    if tls is None and not is_loopback(oc.host):
        print(f"online: WARNING: serving on {oc.host} without TLS: robots' tokens cross the network in the clear "
              "(set online.tls_cert and online.tls_key)", flush=True)
    server = replicas = tail = None
    tail_stop = threading.Event()
    if shared is None:  # this process answers the robots
        policies: PolicyStore | DirectoryPolicies = PolicyStore()
        auth = (TokenAuth.watching(oc.tokens_file, embedded_tokens) if oc.tokens_file
                else TokenAuth.from_plain_tokens(embedded_tokens))
        servicer = FleetServicer(
            persist=store.persist, on_accept=store.on_accept, known_tasks=task_ids, max_steps=max_steps,
            params_provider=policies, embodiment=embodiment, auth=auth, seen_episode_ids=seen, **limits,
        )
        server = serve(servicer, port=oc.port, host=oc.host, tls=tls)
        addresses = [f"127.0.0.1:{server.port}"]
    elif not primary:  # process 0 starts and configures the replicas; this process reads their store
        addresses = []
        policies = DirectoryPolicies(shared)
        tail = _start_tail(shared, embodiment, store, tail_stop)
    else:  # N replica processes answer them; the learner publishes through and tails the shared store
        shared.write_spec({"tasks": task_ids, "max_steps": max_steps, "with_image": bool(cfg.agent.use_image),
                           "embodiment": embodiment.to_dict(), **limits})
        extra_tokens = os.path.join(shared.root, "embedded_tokens")
        for rid, tok in embedded_tokens.items():  # hashed, 0600: what the replicas check the embedded robots by
            add_robot(extra_tokens, rid, tok)
        tls_args = [*(["--tls-cert", oc.tls_cert, "--tls-key", oc.tls_key] if tls else []),
                    *(["--tls-client-ca", oc.tls_client_ca] if oc.tls_client_ca else [])]
        if oc.ingest_replicas > 0:
            replicas = ReplicaSet(shared, int(oc.ingest_replicas), host=oc.host, tokens_file=oc.tokens_file,
                                  extra_tokens_file=extra_tokens if embedded_tokens else "", tls_args=tls_args)
            addresses = replicas.start()
        else:
            addresses = []
        policies = DirectoryPolicies(shared)
        tail = _start_tail(shared, embodiment, store, tail_stop)
    robot_tls = {"tls_root_ca": os.path.abspath(oc.tls_ca), "tls_target_name": oc.tls_target_name or DEFAULT_TLS_TARGET} if tls else {}
    fleet.write_configs(",".join(addresses), robot_tls)
    if primary:
        _write_address(root, oc.host, int(addresses[0].rsplit(":", 1)[1]) if addresses else 0, tls is not None,
                       tls is not None and tls.client_ca is not None, replicas=addresses if shared else None)

    versions: list[int] = []

    def publish(st: Any) -> None:
        version = int(st.step)
        if not primary:  # (the version is still counted: checkpoints record it on every process)
            versions.append(version)
            return
        params = host_local(policy_params(st, kind))
        policies.publish(version, encode_policy(cfg.agent, params, stats, version=version, kind=kind, instructions=lang,
                                                embodiment=embodiment))
        versions.append(version)

    step = int(state.step)
    start = step
    t0 = time.time()
    autonomous = {s.robot_id for s in specs if not s.teleop}
    u = online_updates_per_call(cfg)
    stop = learner.stop

    def over_time() -> bool:
        return bool(oc.duration_s) and time.time() - t0 >= oc.duration_s

    def finishing() -> bool:
        return stop.is_set() or over_time()

    def batches(at: int) -> dict:
        if oc.pacing == "episodes":
            # Same budget for every method: learner updates keep pace with fleet episodes (a fast learner does
            # not finish its updates on a fraction of the fleet's data; a slow one leaves the fleet idle).
            want = _paced_episodes(oc.fleet_episodes, at + u - start, total_steps - start)
            _wait_for(store, fleet, lambda: len(store) >= want, f"{want} fleet episodes", wait_s, finishing, primary)
        else:  # "utd": at most utd_ratio updates per robot step the fleet has delivered
            steps = math.ceil((at + u - start) / oc.utd_ratio)
            _wait_for(store, fleet, lambda: robot_steps(store) >= steps, f"{steps} robot steps", wait_s, finishing,
                      primary)
        # this process's rows (all of them with one process), from its own stream
        rng = np.random.default_rng([cfg.seed, at, 1, *([jax.process_index()] if jax.process_count() > 1 else [])])
        rows = local_batch_size(cfg.batch_size) * u
        cols = store.sample(rng, offline, rows, online_fraction(cfg, len(offline), store.num_transitions()),
                            cfg.data.task_balanced)
        out = batching.agent_batch(cols, stats, table)
        if expert_bc:
            bc = batching.agent_batch(store.sample_expert(rng, expert, rows, cfg.data.task_balanced),
                                      stats, table)
            out["bc"] = {k: bc[k] for k in ("observations", "actions", "action_valid")}
        return batching.stack(out, u)

    wait_s = oc.warmup_timeout_s if primary else FOLLOWER_WAIT_S

    def after_update(st: Any, at: int) -> None:
        if at % oc.publish_every < u or at >= total_steps or finishing():
            publish(st)
        _check_fleet(fleet)
        if replicas is not None and not replicas.alive():
            raise FleetFailed(f"every ingest replica exited; see {replicas.log_dir}/replica-*.log")

    def fleet_logs(at: int) -> dict[str, float]:
        eps = store.snapshot()
        summ = fleet_summary(eps, oc.log_window, tasks, autonomous or None)
        return {"fleet/episodes": len(store), "fleet/version": versions[-1], "fleet/transitions": store.num_transitions(),
                **{f"fleet/{t}/success": s["success"] for t, s in summ.items()},
                **{f"fleet/{t}/cycle_steps": s["cycle_steps"] for t, s in summ.items()
                   if s["cycle_steps"] == s["cycle_steps"]},  # NaN: no success in the window
                # a long-running learner's memory, split so a leak can be told from the allocator (learner/heap.py)
                **{f"memory/{k}": v for k, v in memory_stats().items()}}

    phase = Phase("online", total_steps, update, batches, after_update=after_update, extra_logs=fleet_logs,
                  checkpoint_meta=lambda: {"version": versions[-1], "fleet_episodes": len(store)},
                  probe=False, evaluate_every=True, eval_meta=lambda: {"fleet_episodes": len(store)}, done=over_time,
                  updates_per_call=u)
    try:
        warm = os.path.join(shared.root, f"warm.{start}") if shared is not None else ""
        if primary and warm and os.path.exists(warm):
            os.remove(warm)  # (a run that ended here before: this start is a new one)
        publish(state)
        fleet.start()
        budget = "until stopped" if oc.until_stopped else f"{total_steps - step} learner updates"
        where = (f"learner on {oc.host}:{server.port}" if server else f"{len(addresses)} ingest replicas {','.join(addresses)}"
                 if replicas else f"tailing the replicas' store {shared.root}")
        print(f"online: {where} (tls={tls is not None}, mtls={bool(tls and tls.client_ca)}, "
              f"tokens {'file ' + oc.tokens_file if oc.tokens_file else 'minted for the embedded robots'}); "
              f"{len(specs)} embedded bridge processes ({len(specs) - len(autonomous)} with a human attendant) at "
              f"{oc.control_hz:g} Hz; budget {oc.fleet_episodes or 'unbounded'} fleet episodes, {budget}"
              + (f", at most {oc.duration_s:g} s" if oc.duration_s else ""), flush=True)
        if primary:
            _wait_for_warmup(store, fleet, oc.warmup_episodes, oc.warmup_timeout_s, finishing)
            if jax.process_count() > 1:
                _write_json(warm, {"episodes": len(store)})
        else:
            _follow_warmup(store, warm, finishing)
        state = learner.run(state, phase)
    finally:
        codes = fleet.stop(timeout_s=oc.stop_timeout_s)
        if server is not None:
            server.stop()
        if replicas is not None:
            replicas.stop()
        if tail is not None:
            tail_stop.set()  # the tail reads what the replicas committed before they stopped, then ends
            tail.join()
        store.close()
    history = list(store.history())  # the whole fleet log, from its file
    report = OnlineReport(
        fleet_episodes=history, learner_updates=int(state.step), versions_published=versions,
        seconds=time.time() - t0, autonomous_robots=sorted(autonomous), robot_logs=fleet.episode_logs(),
        spooled_left=fleet.spooled(), robot_exit_codes=codes,
    )
    print(f"online: {len(report.fleet_episodes)} fleet episodes accepted, {len(versions)} versions published"
          f"{'' if primary else ' (by process 0)'}, "
          f"{report.seconds / 60:.1f} min; still spooled on robots: {report.spooled_left}", flush=True)
    return state, report


def _start_tail(shared: SharedStore, embodiment: Any, store: FleetStore, stop: threading.Event) -> threading.Thread:
    """The store's tail: what is already committed (a restart: every episode; the buffers are not on disk in
    this mode) is read here, timed and said, then a thread follows the store until `stop`."""
    tail = StoreTail(shared, embodiment)
    t0 = time.perf_counter()
    n = tail.poll(store.on_accept)
    if n:
        print(f"online: read {n} committed episodes from the shared store {shared.root} ({store.num_transitions()} "
              f"transitions) in {time.perf_counter() - t0:.1f} s", flush=True)
    th = threading.Thread(target=tail.run, args=(store.on_accept, stop), name="store-tail", daemon=True)
    th.start()
    return th


def _write_json(path: str, doc: dict) -> None:
    """`doc` at `path`, whole or not at all (written beside it, then renamed)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _follow_warmup(store: FleetStore, warm: str, interrupted: Callable[[], bool]) -> None:
    """A process other than 0 starts when process 0 has warmed up (`warm` written) and its own tail has read as
    many episodes as process 0 started with (committed ones: the tail reaches them within its poll period)."""
    while not os.path.exists(warm) and not interrupted():
        time.sleep(0.1)
    if interrupted():
        return
    with open(warm) as f:
        want = json.load(f)["episodes"]
    while len(store) < want and not interrupted():
        time.sleep(0.1)


def _write_address(root: str, host: str, port: int, tls: bool, mtls: bool, replicas: list[str] | None = None) -> None:
    """`<workdir>/fleet/learner.json`: where this learner listens (port 0 picks one), for tools and tests; with
    ingest replicas, the first replica's port and every replica's address."""
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, ".learner.json.tmp")
    with open(tmp, "w") as f:
        json.dump({"host": host, "port": port, "tls": tls, "mtls": mtls, "pid": os.getpid(),
                   **({"replicas": replicas} if replicas else {})}, f)
    os.replace(tmp, os.path.join(root, "learner.json"))


def online_updates_per_call(cfg: ml_collections.ConfigDict) -> int:
    """U of the online stage's jitted calls: `online.updates_per_call`, or `updates_per_call` when 0. Why its own:
    a fleet episode becomes sampleable with the next batch built, one call ahead of the update that uses it, so
    the episode -> batch latency is about 1.5-2.5 calls (`make bench`, pipeline); shorter calls, fresher data."""
    return int(cfg.online.get("updates_per_call", 0) or cfg.updates_per_call)


def online_fraction(cfg: ml_collections.ConfigDict, n_offline: int, n_online: int) -> float:
    """The fleet buffer's share of a batch: `data.online_fraction`, or its share of all stored transitions
    when `data.online_mix` is "proportional" (the aggregate sampled uniformly, as DAgger retrains)."""
    if cfg.data.online_mix == "proportional":
        return n_online / max(n_offline + n_online, 1)
    return float(cfg.data.online_fraction)


def fleet_log_path(workdir: str) -> str:
    """The fleet log of a run's online stage (one JSON line per accepted episode: FleetStore's log beside the
    fleet dataset, `<workdir>/fleet/rlds.episodes.jsonl`): what plots and benchmarks read after the run."""
    return os.path.join(workdir, "fleet", "rlds.episodes.jsonl")


def _paced_episodes(fleet_episodes: int, updates_after: int, updates_total: int) -> int:
    """Fleet episodes that must have landed before the learner's update number `updates_after` (of the total):
    the same fraction of the episode budget as of the update budget, so the last update sees every episode."""
    if fleet_episodes <= 0 or updates_total <= 0:
        return 0
    return -(-fleet_episodes * updates_after // updates_total)  # ceil


def robot_steps(store: FleetStore) -> int:
    """Robot control steps in the fleet episodes stored so far (autonomous and human-driven alike)."""
    return store.robot_steps()


def _wait_for(store: FleetStore, fleet: LocalFleet, ready: Callable[[], bool], what: str, timeout_s: float,
              interrupted: Callable[[], bool] = lambda: False, say: bool = True) -> None:
    """Blocks until `ready()`, every robot has exited, `interrupted()` (a stop request), or `timeout_s` passes
    without a new fleet episode (a stalled fleet must not hang the learner: it then trains on what it has).
    Once the embedded fleet has finished, it returns at once (said once in the log, not at every call;
    `say=False`: never, for processes other than 0, whose give-up is routine)."""
    if fleet.all_exited():
        return
    last, t_last = len(store), time.monotonic()
    while not ready() and not interrupted():
        _check_fleet(fleet)
        if (n := len(store)) != last:
            last, t_last = n, time.monotonic()
        if fleet.all_exited():
            print(f"online: the fleet finished at {n} fleet episodes (the learner wanted {what}); it trains on "
                  "what the fleet delivered", flush=True)
            return
        if time.monotonic() - t_last > timeout_s:
            if say:
                print(f"online: pacing gave up waiting for {what} at {n} fleet episodes", flush=True)
            return
        time.sleep(0.1)


def _wait_for_warmup(store: FleetStore, fleet: LocalFleet, episodes: int, timeout_s: float,
                     interrupted: Callable[[], bool] = lambda: False) -> None:
    """Training on an empty fleet buffer would be offline RL with a different tau; wait for first data."""
    deadline = time.monotonic() + timeout_s
    while len(store) < episodes and not interrupted():
        _check_fleet(fleet)
        if fleet.all_exited() or time.monotonic() > deadline:
            print(f"online: warm-up ended with {len(store)} fleet episodes (wanted {episodes})", flush=True)
            return
        time.sleep(0.5)


def _check_fleet(fleet: LocalFleet) -> None:
    """Raises FleetFailed once every daemon has exited with an error (the stage cannot get new data)."""
    bad = fleet.failed()
    if fleet.specs and bad and len(bad) == len(fleet.specs):
        raise FleetFailed(f"every bridge daemon exited with an error {bad}; see {fleet.root}/robot-*/daemon.log")
