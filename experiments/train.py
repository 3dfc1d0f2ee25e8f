"""Train the multi-task LWD policy: BC pretrain -> offline DIVL + QAM -> online with the fleet.

    python -m experiments.train --config=experiments/configs/multitask.py                  # all stages
    python -m experiments.train --config=experiments/configs/multitask.py --config.stage=offline

Reads top to bottom: config -> data -> mesh and agent -> resume -> loop (pretrain, then offline RL) with
logging, checkpoints and per-task evaluation -> online stage (lwd_jax/learner/online.py: learner service +
bridge daemons) -> final table (after pretrain vs after offline vs after online) and the success-vs-fleet plot.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import threading
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from experiments.cli import ConfigError, config_main, stop_on_signals
from fleet_api.embodiment import Embodiment, load_embodiment
from lwd_jax import sharding as shd
from lwd_jax.agent import LWDAgent
from lwd_jax.data import batching
from lwd_jax.data.replay import TransitionBuffer, mixed_batch
from lwd_jax.data.rlds_keymap import load_key_map_file
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.learner import eval_report, plots
from lwd_jax.learner.checkpoint import Checkpointer, init_from_pretrained
from lwd_jax.learner.critic_probe import CriticProbe
from lwd_jax.learner.evaluation import EvalCache
from lwd_jax.learner.heap import configure_allocator
from lwd_jax.learner.local_fleet import plan_fleet
from lwd_jax.learner.loop import Learner, Phase
from lwd_jax.learner.metrics_log import MetricsLogger
from lwd_jax.learner.online import check_serving, run_online
from lwd_jax.learner.task_catalog import load_catalog, parse_task_list, simulated
from lwd_jax.learner.task_catalog import task_ids as catalog_task_ids
from lwd_jax.nets.language import get_default_encoder
from lwd_jax.sim.tasks import task_names

STAGES = ("offline", "online", "all")
PRETRAIN_DATA = ("all", "demos")
ONLINE_LEARNERS = ("rl", "hg_dagger")
ONLINE_MIXES = ("fixed", "proportional")
ONLINE_PACINGS = ("episodes", "utd")
UNBOUNDED_UPDATES = 10**15  # the online stage's end with online.until_stopped (a stop request ends it first)


# ============================================================================================= config
def check_config(cfg: ml_collections.ConfigDict) -> list[str]:
    """Validates what ml_collections cannot (values, not keys); returns the task list. Errors name the key."""
    if cfg.stage not in STAGES:
        raise ValueError(f"config.stage: expected one of {STAGES}, got {cfg.stage!r}")
    for key in ("pretrain_steps", "critic_warmup_steps", "offline_steps", "online_steps"):
        if int(cfg[key]) < 0 or int(cfg[key]) % cfg.updates_per_call:
            raise ValueError(f"config.{key}: expected a non-negative multiple of updates_per_call ({cfg.updates_per_call}), got {cfg[key]}")
    oc = cfg.online
    u_online = int(oc.updates_per_call) or cfg.updates_per_call
    if int(oc.updates_per_call) < 0 or int(cfg.online_steps) % u_online:
        raise ValueError(f"config.online.updates_per_call: expected >= 0 (0: updates_per_call) and dividing "
                         f"online_steps ({cfg.online_steps}), got {oc.updates_per_call}")
    for key in ("publish_every", "log_window"):
        if int(oc[key]) < 1:
            raise ValueError(f"config.online.{key}: expected >= 1, got {oc[key]}")
    if oc.pacing not in ONLINE_PACINGS:
        raise ValueError(f"config.online.pacing: expected one of {ONLINE_PACINGS}, got {oc.pacing!r}")
    if not oc.utd_ratio > 0:
        raise ValueError(f"config.online.utd_ratio: expected > 0 (updates per robot step), got {oc.utd_ratio}")
    for key in ("fleet_episodes", "control_hz"):
        if oc[key] < 0:
            raise ValueError(f"config.online.{key}: expected >= 0, got {oc[key]}")
    for key in ("batch_size", "updates_per_call"):
        if int(cfg[key]) < 1:
            raise ValueError(f"config.{key}: expected >= 1, got {cfg[key]}")
    if cfg.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size: {cfg.batch_size} must divide over {jax.device_count()} devices")
    if not 0.0 < cfg.data.gamma <= 1.0:
        raise ValueError(f"config.data.gamma: expected in (0, 1], got {cfg.data.gamma}")
    embodiment_of(cfg)  # the robot's body: the policy's action size and chunk length must be its
    if int(cfg.eval.best_of_n) < 0 or int(cfg.eval.best_of_n) == 1:
        raise ValueError(f"config.eval.best_of_n: expected 0 (no best-of-N probe) or N >= 2, got {cfg.eval.best_of_n}")
    if cfg.data.pretrain_data not in PRETRAIN_DATA:
        raise ValueError(f"config.data.pretrain_data: expected one of {PRETRAIN_DATA}, got {cfg.data.pretrain_data!r}")
    if cfg.data.online_mix not in ONLINE_MIXES:
        raise ValueError(f"config.data.online_mix: expected one of {ONLINE_MIXES}, got {cfg.data.online_mix!r}")
    if cfg.online_learner not in ONLINE_LEARNERS:
        raise ValueError(f"config.online_learner: expected one of {ONLINE_LEARNERS}, got {cfg.online_learner!r}")
    if cfg.init_from and not os.path.isdir(os.path.join(cfg.init_from, "checkpoints")):
        raise ValueError(f"config.init_from: no checkpoints/ in {cfg.init_from!r}")
    tasks = parse_task_list(cfg.tasks, load_catalog(cfg.task_file), cfg.task_file)
    foreign = [t for t in tasks if not simulated(t)]
    if foreign and cfg.stage in ("online", "all") and cfg.online_steps and cfg.online.num_robots:
        raise ValueError(f"config.online.num_robots: the embedded robots are simulated and run only the simulator's "
                         f"tasks, not {foreign}; set config.online.num_robots=0 and connect your robots (make serve)")
    plan_fleet(cfg.online.num_robots, tasks, cfg.online.fleet_episodes, cfg.online.teleop_robots, cfg.seed)  # checks both
    if cfg.stage in ("online", "all") and (cfg.online_steps or cfg.online.until_stopped):
        if jax.process_count() > 1 and not (cfg.online.ingest_replicas > 0 or cfg.online.shared_store):
            raise ValueError(f"config.online.ingest_replicas: this run has {jax.process_count()} learner processes; the "
                             "online stage needs ingest replicas for them (online.ingest_replicas > 0, or "
                             "online.shared_store with replicas run elsewhere): every process then tails their store")
        check_serving(cfg.online)  # unreadable credentials fail here, before any training (CredentialsError)
    return tasks


def embodiment_of(cfg: ml_collections.ConfigDict) -> Embodiment:
    """The run's robot body (`config.embodiment`: "" the simulated UR5e, or a TOML file); the agent's action size
    and chunk length must be the body's (one source of truth for a robot, checked rather than overwritten)."""
    emb = load_embodiment(cfg.embodiment)
    for key, field in (("action_dim", "action_dim"), ("action_horizon", "chunk_len")):
        want = getattr(emb, field)
        if int(cfg.agent[key]) != want:
            raise ValueError(f"config.agent.{key}: {cfg.agent[key]}, but the embodiment {emb.describe()} has {field} "
                             f"{want}; set --config.agent.{key}={want}")
    return emb


# =============================================================================================== data
def load_offline(
    cfg: ml_collections.ConfigDict, tasks: list[str], task_ids: dict[str, int], table: batching.InstructionTable
) -> tuple[TransitionBuffer, TransitionBuffer]:
    """RLDS offline dataset -> (buffer of chunked n-step transitions for `tasks`, the BC-pretrain buffer).

    The second is the same buffer unless `data.pretrain_data = "demos"`: then it holds the transitions of
    the episodes whose `episode_metadata/source` is "demo" (SFT clones demonstrations only).
    """
    catalog = load_catalog(cfg.task_file)
    n_chunks = {
        t: cfg.data.n_chunks_offline_long if catalog[t].is_long else cfg.data.n_chunks_offline_short for t in task_ids
    }
    key_map, defaults = load_key_map_file(cfg.data.key_map_file) if cfg.data.key_map_file else (None, None)
    reader = RLDSReader(cfg.data.offline_dir, key_map=key_map, defaults=defaults, embodiment=embodiment_of(cfg))
    if cfg.agent.use_image and not reader.has_image:  # else the first update fails deep in the encoder
        raise ValueError(f"config.agent.use_image: the offline dataset {cfg.data.offline_dir} has no camera images "
                         "(field 'observation/image'); generate it with data.render=True, or map an image "
                         "feature in data.key_map_file")
    cols = reader.load_transitions(
        chunk_len=cfg.agent.action_horizon, n_chunks=n_chunks, gamma=cfg.data.gamma, task_ids=task_ids, stride=cfg.data.stride
    )
    if not cols:
        raise ValueError(f"config.data.offline_dir: no transitions in {cfg.data.offline_dir}")
    keep = np.isin(cols["task_id"], [task_ids[t] for t in tasks])
    cols = {k: v[keep] for k, v in cols.items()}

    def buffer(rows: np.ndarray) -> TransitionBuffer:
        buf = TransitionBuffer(capacity=max(1, int(rows.sum())))
        buf.add(batching.buffer_columns({k: v[rows] for k, v in cols.items()}, table))
        return buf

    everything = buffer(np.ones(len(cols["task_id"]), bool))
    if cfg.data.pretrain_data == "all":
        return everything, everything
    demos = [i for i, src in reader.episode_sources().items() if src == "demo"]
    rows = np.isin(cols["episode_index"], demos)
    missing = sorted(set(tasks) - {t for t in tasks if np.any(rows & (cols["task_id"] == task_ids[t]))})
    if missing:
        raise ValueError(f"config.data.pretrain_data='demos': {cfg.data.offline_dir} has no demo episodes of {missing}")
    return everything, buffer(rows)


def sample_batches(cfg, buf: TransitionBuffer, online: TransitionBuffer | None, step: int, stats, table) -> dict:
    """U batches for one jitted call, from a generator keyed by (seed, step): resume replays the same stream.
    With several processes each builds only its rows (batch_size / processes) from its own stream, keyed by
    (seed, step, process); the agent assembles the global batch (`sharding.global_batch`)."""
    multi = jax.process_count() > 1
    rng = np.random.default_rng([cfg.seed, step, jax.process_index()] if multi else [cfg.seed, step])
    n = shd.local_batch_size(cfg.batch_size) * cfg.updates_per_call
    cols = mixed_batch(rng, buf, online, n, cfg.data.online_fraction, balanced=cfg.data.task_balanced)
    return batching.stack(batching.agent_batch(cols, stats, table), cfg.updates_per_call)


# ============================================================================================== main
@dataclasses.dataclass
class OfflineData:
    """What the offline dataset gives a run: the instruction table, the RL buffer and the BC-pretrain buffer.

    Why a value: one process running several experiments on the same data (experiments/benchmark.py) loads
    it once with `load_data` and passes it to each `run`."""

    table: batching.InstructionTable
    offline: TransitionBuffer
    pretrain: TransitionBuffer


def data_settings(cfg: ml_collections.ConfigDict) -> tuple:
    """Every setting `load_data` reads: two configs with equal settings can share one `OfflineData`."""
    d = cfg.data
    return (d.offline_dir, cfg.tasks, d.n_chunks_offline_long, d.n_chunks_offline_short, d.gamma, d.stride,
            cfg.agent.action_horizon, d.pretrain_data, d.key_map_file, cfg.embodiment, cfg.task_file)


def load_data(cfg: ml_collections.ConfigDict, tasks: list[str]) -> OfflineData:
    """Reads the offline RLDS dataset of `cfg.data` for `tasks` (with the frozen language encoder's table)."""
    encoder = get_default_encoder()
    table = batching.InstructionTable(encoder.encode, encoder.embed_dim)
    task_ids = catalog_task_ids(load_catalog(cfg.task_file))  # stable ids across runs
    return OfflineData(table, *load_offline(cfg, tasks, task_ids, table))


def run(cfg: ml_collections.ConfigDict, data: OfflineData | None = None, stop: threading.Event | None = None) -> dict:
    """Runs the configured stages; returns {evaluation: per-task summary} (the final table's columns).

    Evaluations are named by the stage they follow: "pretrain" (the BC flow), "offline" and "online" (the
    policy the method deploys after that stage). `stop` set (SIGTERM/SIGINT in the entry points) ends the
    running stage with a checkpoint and returns the evaluations done so far; the same command resumes.
    Bad settings raise ConfigError (one line naming the key; exit 2 from the command line)."""
    # ---- config
    try:
        tasks = check_config(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if data is None and not os.path.isdir(cfg.data.offline_dir):
        raise ConfigError(f"config.data.offline_dir: no dataset at {cfg.data.offline_dir!r}; run `make data` "
                          "(or point config.data.offline_dir at an RLDS dataset)")
    try:
        os.makedirs(cfg.workdir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"config.workdir: cannot use {cfg.workdir!r} as the run directory: {e}") from None
    all_tasks = task_names()  # the simulator's tasks: their order seeds the evaluation scenes
    catalog = load_catalog(cfg.task_file)
    task_ids = catalog_task_ids(catalog)  # stable ids across runs
    emb = embodiment_of(cfg)

    # ---- data
    t0 = time.time()
    data = data if data is not None else load_data(cfg, tasks)
    table, offline, pretrain_buf = data.table, data.offline, data.pretrain
    stats = batching.stats_from_buffer(offline, emb.action_low, emb.action_high)
    # Several processes: all run every jitted computation (updates, probes); process 0 alone evaluates and writes
    # the run's files, the others log to logs/process-<i>/ (their scalars are the same global values).
    primary = jax.process_index() == 0
    if primary:
        with open(os.path.join(cfg.workdir, "norm_stats.json"), "w") as f:  # what `make eval` rebuilds a policy with
            f.write(stats.to_json())
    print(f"offline buffer: {len(offline)} transitions ({len(pretrain_buf)} for BC pretrain), {len(table)} instructions, "
          f"{time.time() - t0:.1f}s", flush=True)

    # ---- mesh and agent
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    agent = LWDAgent(cfg.agent, mesh)
    example = batching.example_obs(offline.gather(np.arange(1)), table.table.shape[1])
    state = agent.init(cfg.seed, example)

    # ---- resume
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    if cfg.resume and ckpt.latest_step() is not None:
        state, meta, step = ckpt.restore(agent.abstract_state(example))
        print(f"resumed from step {step} ({meta.get('phase')})", flush=True)
    elif cfg.init_from:
        state = init_from_pretrained(cfg.init_from, agent, state, example, cfg.pretrain_steps)
        print(f"BC flow from {cfg.init_from} (step {int(state.step)})", flush=True)

    # ---- stages: [0, p_end) BC pretrain, [p_end, c_end) critic warm-up (the flows stay put), [c_end, o_end)
    # offline RL, [o_end, total) online with the fleet
    p_end = cfg.pretrain_steps
    c_end = p_end + cfg.critic_warmup_steps
    o_end = c_end + cfg.offline_steps
    online_budget = UNBOUNDED_UPDATES if cfg.online.until_stopped else cfg.online_steps
    total = o_end + (online_budget if cfg.stage in ("online", "all") else 0)
    step = int(state.step)
    if cfg.stage == "online" and step < o_end:
        raise ValueError(
            f"config.stage='online': the checkpoint in {cfg.workdir} is at step {step}, before the end of the offline "
            f"stage ({o_end}); run --config.stage=offline first, or --config.stage=all"
        )
    logger = MetricsLogger(os.path.join(cfg.workdir, "logs", *(() if primary else (f"process-{jax.process_index()}",))),
                           console_every=1, quiet=not primary)
    # Only the simulator's tasks are evaluated (a robot's own tasks are measured by its fleet: `fleet status`)
    sim_tasks = [t for t in tasks if simulated(t)]
    if len(sim_tasks) < len(tasks):
        print(f"evaluation: {sorted(set(tasks) - set(sim_tasks))} are not simulated tasks: no simulator evaluation "
              "of them (the fleet's own success rates are in the logs and in `fleet status`)", flush=True)
    evals = EvalCache(cfg, agent, stats, sim_tasks if primary else [], all_tasks)
    probe = CriticProbe(cfg, agent, offline, stats, table, write=primary)
    bar = tqdm(total=None if cfg.online.until_stopped else total, initial=step, desc="train", unit="upd", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    learner = Learner(cfg, logger, ckpt, probe, evals, bar, stop=stop, place=agent.place_batches)
    results: dict = {}

    def stopped() -> bool:
        """After a stage: on a stop request, close cleanly (the checkpoint is written) and skip the rest."""
        if not learner.stopped:
            return False
        bar.close()
        ckpt.wait()
        print(f"stopped at step {int(state.step)} on request: checkpoint saved in {cfg.workdir}/checkpoints; "
              "the same command resumes from it", flush=True)
        logger.close()
        ckpt.close()
        return True

    def offline_batches(buf: TransitionBuffer):
        return lambda at: sample_batches(cfg, buf, None, at, stats, table)

    hg = cfg.online_learner == "hg_dagger"  # BC on demos + human chunks; the fleet runs the BC flow
    deployed = "base" if hg else "policy"
    state = learner.run(state, Phase("pretrain", p_end, agent.pretrain_update, offline_batches(pretrain_buf), probe=False))
    if stopped():
        return results
    results["pretrain"] = evals.get("pretrain", state, "base", p_end, logger)
    state = learner.run(state, Phase("critic", c_end, functools.partial(agent.critic_update, stage="offline"),
                                     offline_batches(offline)))
    state = learner.run(state, Phase("offline", o_end, functools.partial(agent.update, stage="offline"),
                                     offline_batches(offline), evaluate_every=True))
    if stopped():
        return results
    # The best-of-N probe: acting with the best of N BC samples under the target critic, on the same scenes as
    # every other evaluation. It asks whether the critic ranks actions *within* a state, before any extraction.
    n_best = int(cfg.eval.best_of_n)

    def best_of(stage: str, at: int) -> None:
        if n_best > 1 and not hg:
            results[f"{stage} best-of-{n_best}"] = evals.get(f"{stage} best-of-{n_best}", state, "best_of_n", at, logger)

    if cfg.offline_steps and cfg.eval.offline:
        results["offline"] = evals.get("offline", state, "policy", o_end, logger)
    if o_end > p_end and not hg:
        probe.save(state, o_end, "offline")
        best_of("offline", o_end)
    report = None
    if total > o_end:
        update = agent.pretrain_update if hg else functools.partial(agent.update, stage="online", stage_start=o_end)
        state, report = run_online(cfg, agent, state, pretrain_buf if hg else offline, stats, table, tasks, task_ids,
                                   learner, update, total, expert=pretrain_buf)
        if stopped():
            return results
        results["online"] = evals.get("online", state, deployed, total, logger)
        if not hg:
            probe.save(state, total, "online")
            best_of("online", total)
    bar.close()
    ckpt.wait()

    # ---- final table (and the online stage's plot)
    results = {name: summary for name, summary in results.items() if summary}  # none without simulated tasks
    long_tasks = {t for t in tasks if catalog[t].is_long}
    table_md = (eval_report.markdown_table(results, long_tasks) if results else
                "No simulator evaluation: none of the run's tasks is simulated (the fleet log has the robots' outcomes).")
    if not primary:  # process 0 writes the run's tables
        logger.close()
        ckpt.close()
        return results
    paired = paired_comparisons(evals, list(results))
    if paired:
        table_md += "\n\n" + eval_report.paired_markdown(paired)
        with open(os.path.join(cfg.workdir, "paired.json"), "w") as f:
            json.dump(paired, f, indent=1)
    if report is not None:
        table_md += "\n\n" + online_summary(cfg, report)
    if report is not None and "online" in results:
        plots.success_vs_fleet_episodes(
            report.fleet_episodes, os.path.join(cfg.workdir, "success_vs_fleet_episodes.png"),
            autonomous=set(report.autonomous_robots), window=3 * len(tasks),
            evals={**({"pretrain (SFT)": (0, results["pretrain"])} if "pretrain" in results else {}),
                   **({"offline": (0, results["offline"])} if "offline" in results else {}),
                   "online": (len(report.fleet_episodes), results["online"])},
            curve=[(e["meta"]["fleet_episodes"], e["summary"]) for e in evals.progress_evals("online")
                   if "fleet_episodes" in e.get("meta", {})],
            title=f"{cfg.workdir}: fleet success (robots without a human attendant)",
        )
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(cfg.workdir, "results.md"), "w") as f:
        f.write(table_md + "\n")
    print(table_md, flush=True)
    logger.close()
    ckpt.close()
    return results


def paired_comparisons(evals: EvalCache, names: list[str]) -> dict[str, dict[str, float]]:
    """Paired success tests (same scenes) of each later evaluation against the earlier ones it improves on:
    every evaluation against "pretrain", "online" against "offline", and each best-of-N probe against the
    policy of its stage."""
    wanted = [(n, "pretrain") for n in names if n != "pretrain"]
    wanted += [("online", "offline")] if {"online", "offline"} <= set(names) else []
    wanted += [(n, n.split(" ")[0]) for n in names if " best-of-" in n and n.split(" ")[0] in names]
    out = {}
    for a, b in wanted:
        ea, eb = evals.episodes(a), evals.episodes(b)
        if ea and eb:
            out[f"{a} vs {b}"] = eval_report.paired_success(ea, eb)
    return out


def online_summary(cfg: ml_collections.ConfigDict, report) -> str:
    """The online stage's budget and fleet outcome, as markdown under the table."""
    eps = report.fleet_episodes
    auto = [e for e in eps if e.robot_id in set(report.autonomous_robots)]
    human = sum(e.intervention_steps for e in eps)
    steps = sum(e.steps for e in eps)
    seen = sorted({e.policy_version for e in eps})
    lines = [
        f"Online budget: {len(eps)} fleet episodes ({steps} robot steps; {human / max(steps, 1):.1%} driven by the "
        f"simulated human) from {cfg.online.num_robots} bridge processes at {cfg.online.control_hz:g} Hz, "
        f"{cfg.online_steps} learner updates, {len(report.versions_published)} policy versions, "
        f"{report.seconds / 60:.1f} min wall.",
        f"Policy versions the fleet ran: {len(seen)} ({seen[0] if seen else '-'} .. {seen[-1] if seen else '-'})"
        + (" -- only the first: the fleet finished before a new version reached it" if len(seen) == 1 else "") + ".",
    ]
    if auto:
        half = len(auto) // 2
        first, last = auto[:half] or auto, auto[half:]
        lines.append(
            f"Fleet success (robots without a human): first half {np.mean([e.success for e in first]):.2f} "
            f"({len(first)} episodes) -> second half {np.mean([e.success for e in last]):.2f} ({len(last)} episodes)."
        )
    return "\n".join(lines)


def main() -> None:
    configure_allocator()  # first: before any thread (learner/heap.py: a serving learner's arenas fragment)
    shd.maybe_initialize_distributed()  # multi-host only when LWD_COORDINATOR is set (see lwd_jax/sharding.py)
    stop = stop_on_signals()
    config_main("experiments/configs/multitask.py", "experiment config", lambda cfg: run(cfg, stop=stop))


if __name__ == "__main__":
    main()
