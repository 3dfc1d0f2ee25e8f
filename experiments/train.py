"""Train the multi-task LWD policy: BC pretrain -> offline DIVL + QAM -> online with the fleet.

    python -m experiments.train --config=experiments/configs/multitask.py                  # all stages
    python -m experiments.train --config=experiments/configs/multitask.py --config.stage=offline

Reads top to bottom: config -> data -> mesh and agent -> resume -> loop (pretrain, then offline RL) with
logging, checkpoints and per-task evaluation -> online stage (lwd_jax/learner/online.py: learner service +
bridge daemons) -> final table (BC pretrain vs offline LWD vs online LWD) and the success-vs-fleet plot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import logging as absl_logging
from ml_collections import config_flags
from tqdm import tqdm

from lwd_jax import sharding as shd
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data import batching
from lwd_jax.data.replay import TransitionBuffer, mixed_batch
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.learner import evaluation, plots
from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.local_fleet import plan_fleet
from lwd_jax.learner.metrics_log import MetricsLogger, check_finite
from lwd_jax.policy import encode_policy
from lwd_jax.sim.tasks import get_task, task_names

STAGES = ("offline", "online", "all")
PRETRAIN_DATA = ("all", "demos")
_OFFLINE_CACHE: dict[tuple, tuple] = {}  # (settings) -> (instruction table, offline buffer, pretrain buffer)
ONLINE_LEARNERS = ("rl", "hg_dagger")
ONLINE_MIXES = ("fixed", "proportional")


# ============================================================================================= config
def check_config(cfg: ml_collections.ConfigDict) -> list[str]:
    """Validates what ml_collections cannot (values, not keys); returns the task list. Errors name the key."""
    if cfg.stage not in STAGES:
        raise ValueError(f"config.stage: expected one of {STAGES}, got {cfg.stage!r}")
    for key in ("pretrain_steps", "critic_warmup_steps", "offline_steps", "online_steps"):
        if int(cfg[key]) < 0 or int(cfg[key]) % cfg.updates_per_call:
            raise ValueError(f"config.{key}: expected a non-negative multiple of updates_per_call ({cfg.updates_per_call}), got {cfg[key]}")
    oc = cfg.online
    for key in ("publish_every", "log_window"):
        if int(oc[key]) < 1:
            raise ValueError(f"config.online.{key}: expected >= 1, got {oc[key]}")
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
    if cfg.agent.action_dim != 5:
        raise ValueError(f"config.agent.action_dim: the manipspace suite has 5-d actions, got {cfg.agent.action_dim}")
    if cfg.data.pretrain_data not in PRETRAIN_DATA:
        raise ValueError(f"config.data.pretrain_data: expected one of {PRETRAIN_DATA}, got {cfg.data.pretrain_data!r}")
    if cfg.data.online_mix not in ONLINE_MIXES:
        raise ValueError(f"config.data.online_mix: expected one of {ONLINE_MIXES}, got {cfg.data.online_mix!r}")
    if cfg.online_learner not in ONLINE_LEARNERS:
        raise ValueError(f"config.online_learner: expected one of {ONLINE_LEARNERS}, got {cfg.online_learner!r}")
    if cfg.init_from and not os.path.isdir(os.path.join(cfg.init_from, "checkpoints")):
        raise ValueError(f"config.init_from: no checkpoints/ in {cfg.init_from!r}")
    known = task_names()
    tasks = known if cfg.tasks == "all" else [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"config.tasks: unknown task(s) {unknown} (known: {known})")
    plan_fleet(cfg.online.num_robots, tasks, cfg.online.fleet_episodes, cfg.online.teleop_robots, cfg.seed)  # checks both
    return tasks


# =============================================================================================== data
def load_offline(
    cfg: ml_collections.ConfigDict, tasks: list[str], task_ids: dict[str, int], table: batching.InstructionTable
) -> tuple[TransitionBuffer, TransitionBuffer]:
    """RLDS offline dataset -> (buffer of chunked n-step transitions for `tasks`, the BC-pretrain buffer).

    The second is the same buffer unless `data.pretrain_data = "demos"`: then it holds the transitions of
    the episodes whose `episode_metadata/source` is "demo" (SFT clones demonstrations only).
    """
    n_chunks = {
        t: cfg.data.n_chunks_offline_long if get_task(t).is_long else cfg.data.n_chunks_offline_short for t in task_ids
    }
    reader = RLDSReader(cfg.data.offline_dir)
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
    """U batches for one jitted call, from a generator keyed by (seed, step): resume replays the same stream."""
    rng = np.random.default_rng([cfg.seed, step])
    n = cfg.batch_size * cfg.updates_per_call
    cols = mixed_batch(rng, buf, online, n, cfg.data.online_fraction, balanced=cfg.data.task_balanced)
    return batching.stack(batching.agent_batch(cols, stats, table), cfg.updates_per_call)


# ============================================================================================== main
def run(cfg: ml_collections.ConfigDict) -> dict:
    """Runs the configured stages; returns {method: per-task summary} (the final table's columns)."""
    tasks = check_config(cfg)
    os.makedirs(cfg.workdir, exist_ok=True)
    all_tasks = task_names()
    task_ids = {t: i for i, t in enumerate(all_tasks)}  # registry order: stable ids across runs

    # ---- data
    from lwd_jax.nets.language import get_default_encoder

    encoder = get_default_encoder()
    t0 = time.time()
    # One process running several experiments (experiments/benchmark.py) reads the dataset once per setting.
    key = (cfg.data.offline_dir, tuple(tasks), cfg.data.n_chunks_offline_long, cfg.data.n_chunks_offline_short,
           cfg.data.gamma, cfg.data.stride, cfg.agent.action_horizon, cfg.data.pretrain_data)
    if key not in _OFFLINE_CACHE:
        table = batching.InstructionTable(encoder.encode, encoder.embed_dim)
        _OFFLINE_CACHE.clear()  # keep at most one dataset in memory
        _OFFLINE_CACHE[key] = (table, *load_offline(cfg, tasks, task_ids, table))
    table, offline, pretrain_buf = _OFFLINE_CACHE[key]
    stats = batching.stats_from_buffer(offline)
    with open(os.path.join(cfg.workdir, "norm_stats.json"), "w") as f:  # what `make eval` rebuilds a policy with
        f.write(stats.to_json())
    print(f"offline buffer: {len(offline)} transitions ({len(pretrain_buf)} for BC pretrain), {len(table)} instructions, "
          f"{time.time() - t0:.1f}s", flush=True)

    # ---- mesh and agent
    mesh = shd.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    agent = LWDAgent(cfg.agent, mesh)
    example = batching.example_obs(offline.gather(np.arange(1)), encoder.embed_dim)
    state = agent.init(cfg.seed, example)

    # ---- resume
    ckpt = Checkpointer(os.path.join(cfg.workdir, "checkpoints"), max_to_keep=cfg.keep_checkpoints)
    if cfg.resume and ckpt.latest_step() is not None:
        state, meta, step = ckpt.restore(agent.abstract_state(example))
        print(f"resumed from step {step} ({meta.get('phase')})", flush=True)
    elif cfg.init_from:
        state = init_from_pretrained(cfg.init_from, agent, state, example, cfg.pretrain_steps)
        print(f"BC flow from {cfg.init_from} (step {int(state.step)})", flush=True)
    logger = MetricsLogger(os.path.join(cfg.workdir, "logs"), console_every=1)

    # ---- stages: [0, p_end) BC pretrain, [p_end, c_end) critic warm-up (the flows stay put), [c_end, o_end)
    # offline RL, [o_end, total) online with the fleet
    p_end = cfg.pretrain_steps
    c_end = p_end + cfg.critic_warmup_steps
    o_end = c_end + cfg.offline_steps
    total = o_end + (cfg.online_steps if cfg.stage in ("online", "all") else 0)
    step = int(state.step)
    if cfg.stage == "online" and step < o_end:
        raise ValueError(
            f"config.stage='online': the checkpoint in {cfg.workdir} is at step {step}, before the end of the offline "
            f"stage ({o_end}); run --config.stage=offline first, or --config.stage=all"
        )
    evals = EvalCache(cfg, agent, stats, tasks, all_tasks)
    probe = CriticProbe(cfg, agent, offline, stats, table)
    u = cfg.updates_per_call
    bar = tqdm(total=total, initial=step, desc="train", unit="upd", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    if step >= p_end:
        evals.get("BC pretrain", state, "base", p_end)
    while step < o_end:
        phase = "pretrain" if step < p_end else "critic" if step < c_end else "offline"
        batches = sample_batches(cfg, pretrain_buf if phase == "pretrain" else offline, None, step, stats, table)
        if phase == "pretrain":
            state, metrics = agent.pretrain_update(state, batches)
        elif phase == "critic":
            state, metrics = agent.critic_update(state, batches, stage="offline")
        else:
            state, metrics = agent.update(state, batches, stage="offline")
        step += u
        bar.update(u)
        if step % cfg.log_every < u or step >= o_end or step == c_end:
            scalars = logger.log(step, jax.device_get(metrics), prefix=phase)
            check_finite(scalars, step)
            if phase != "pretrain":
                probe.log(state, step, logger)
        if step % cfg.checkpoint_every < u or step >= o_end or step == p_end or step == c_end:
            ckpt.save(step, state, {"phase": phase, "step": step, "version": 0, "config": cfg.to_json()}, force=True)
        if step == p_end:
            evals.get("BC pretrain", state, "base", step, logger)
        if phase == "offline" and step % cfg.eval.every < u and step < o_end:
            evals.log_only(state, step, logger)
    results = {"BC pretrain": evals.get("BC pretrain", state, "base", p_end)}
    if o_end > p_end and cfg.online_learner == "rl":
        probe.save(state, o_end, "offline")
    if cfg.offline_steps and cfg.eval.offline:
        results["offline LWD"] = evals.get("offline LWD", state, "policy", o_end, logger)
    report = None
    if total > o_end:
        from lwd_jax.learner.online import run_online

        hg = cfg.online_learner == "hg_dagger"  # BC on demos + human chunks; the fleet runs the BC flow
        state, report = run_online(cfg, agent, state, pretrain_buf if hg else offline, stats, table, tasks, task_ids,
                                   logger, ckpt, total, bar)
        results["online LWD"] = evals.get("online LWD", state, "base" if hg else "policy", total, logger)
        if not hg:
            probe.save(state, total, "online")
    bar.close()
    ckpt.wait()

    # ---- final table (and the online stage's plot)
    long_tasks = {t for t in tasks if get_task(t).is_long}
    table_md = evaluation.markdown_table(results, long_tasks)
    if report is not None:
        table_md += "\n\n" + online_summary(cfg, report)
        with open(os.path.join(cfg.workdir, "fleet_episodes.jsonl"), "w") as f:  # the plot's data, for reuse
            f.writelines(json.dumps(dataclasses.asdict(e)) + "\n" for e in report.fleet_episodes)
        plots.success_vs_fleet_episodes(
            report.fleet_episodes, os.path.join(cfg.workdir, "success_vs_fleet_episodes.png"),
            autonomous=set(report.autonomous_robots), window=3 * len(tasks),
            evals={**({"offline LWD": (0, results["offline LWD"])} if "offline LWD" in results else {}),
                   "online LWD": (len(report.fleet_episodes), results["online LWD"])},
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


def init_from_pretrained(src_workdir: str, agent: LWDAgent, state, example: dict, pretrain_steps: int):
    """`state` with the BC flow (base, its frozen reference, the policy copied from it, the base's optimizer)
    and the step counter of `src_workdir`'s latest checkpoint, which must be a finished BC pretrain.

    Why only the BC flow: critics and value heads differ between methods (scalar vs distributional), but
    every method starts from the same pretrained policy, exactly as every method in the paper starts from SFT.
    """
    src = Checkpointer(os.path.join(src_workdir, "checkpoints"))
    step = src.latest_step()
    if step is None:
        raise ValueError(f"config.init_from: no checkpoint in {src_workdir}/checkpoints")
    src_cfg = ml_collections.ConfigDict(json.loads(src.meta(step)["config"]))
    src_agent = LWDAgent(src_cfg.agent, agent.mesh)
    src_state, meta, step = src.restore(src_agent.abstract_state(example), step)
    src.close()
    if meta.get("phase") != "pretrain" or step != pretrain_steps:
        raise ValueError(f"config.init_from: {src_workdir} is at step {step} ({meta.get('phase')}); expected the end of "
                         f"BC pretraining at step {pretrain_steps}")
    take = ("base", "base_ref", "actor")
    for k in take:
        want, got = jax.tree.map(jnp.shape, state.params[k]), jax.tree.map(jnp.shape, src_state.params[k])
        if want != got:
            raise ValueError(f"config.init_from: params['{k}'] of {src_workdir} have other shapes than this config's nets")
    params = dict(state.params, **{k: src_state.params[k] for k in take})
    opt_state = dict(state.opt_state, base=src_state.opt_state["base"])
    return state.replace(step=src_state.step, params=params, opt_state=opt_state)


def online_summary(cfg: ml_collections.ConfigDict, report) -> str:
    """The online stage's budget and fleet outcome, as markdown under the table."""
    eps = report.fleet_episodes
    auto = [e for e in eps if e.robot_id in set(report.autonomous_robots)]
    human = sum(e.intervention_steps for e in eps)
    steps = sum(e.steps for e in eps)
    lines = [
        f"Online budget: {len(eps)} fleet episodes ({steps} robot steps; {human / max(steps, 1):.1%} driven by the "
        f"simulated human) from {cfg.online.num_robots} bridge processes at {cfg.online.control_hz:g} Hz, "
        f"{cfg.online_steps} learner updates, {len(report.versions_published)} policy versions, "
        f"{report.seconds / 60:.1f} min wall.",
    ]
    if auto:
        half = len(auto) // 2
        first, last = auto[:half] or auto, auto[half:]
        lines.append(
            f"Fleet success (robots without a human): first half {np.mean([e.success for e in first]):.2f} "
            f"({len(first)} episodes) -> second half {np.mean([e.success for e in last]):.2f} ({len(last)} episodes)."
        )
    return "\n".join(lines)


class CriticProbe:
    """The critic's values on a fixed, task-balanced set of offline transitions against their Monte-Carlo
    returns (lwd_jax/learner/critic_probe.py): logged as probe/* and saved per stage in workdir/probe.json."""

    def __init__(self, cfg, agent: LWDAgent, offline: TransitionBuffer, stats, table):
        rows = offline.sample(np.random.default_rng([cfg.seed, 7]), cfg.probe_size, balanced=cfg.data.task_balanced)
        batch = batching.agent_batch(rows, stats, table)
        self.agent, self.obs, self.actions, self.mc = agent, batch["observations"], batch["actions"], rows["mc_return"]
        self.path = os.path.join(cfg.workdir, "probe.json")

    def stats(self, state) -> dict[str, float]:
        from lwd_jax.learner.critic_probe import probe_stats

        vals = jax.device_get(self.agent.critic_values(state.params, self.obs, self.actions))
        return probe_stats(vals["q"], vals["v"], self.mc)

    def log(self, state, step: int, logger: MetricsLogger) -> None:
        logger.log(step, self.stats(state), prefix="probe")

    def save(self, state, step: int, stage: str) -> None:
        saved = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
        saved[stage] = {"step": int(step), **self.stats(state)}
        with open(self.path + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(self.path + ".tmp", self.path)


class EvalCache:
    """Per-task simulator evaluations, stored in workdir/evals/<name>.json so a resumed run reuses them."""

    def __init__(self, cfg, agent, stats, tasks, all_tasks):
        self.cfg, self.agent, self.stats, self.tasks, self.all_tasks = cfg, agent, stats, tasks, all_tasks
        self.dir = os.path.join(cfg.workdir, "evals")
        os.makedirs(self.dir, exist_ok=True)

    def get(self, name: str, state, kind: str, step: int, logger: MetricsLogger | None = None) -> dict:
        """The evaluation `name` (taken at `step`), computed from `state` unless already on disk."""
        path = os.path.join(self.dir, name.replace(" ", "_") + ".json")
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            if saved["step"] == step and saved["tasks"] == self.tasks:
                return saved["summary"]
        summary = evaluate_state(self.cfg, self.agent, state, self.stats, self.tasks, self.all_tasks, kind)
        with open(path + ".tmp", "w") as f:
            json.dump({"step": step, "tasks": self.tasks, "summary": summary}, f)
        os.replace(path + ".tmp", path)
        if logger is not None:
            self._log(logger, step, summary, name)
        return summary

    def log_only(self, state, step: int, logger: MetricsLogger) -> None:
        summary = evaluate_state(self.cfg, self.agent, state, self.stats, self.tasks, self.all_tasks, "policy")
        self._log(logger, step, summary, "policy")

    @staticmethod
    def _log(logger: MetricsLogger, step: int, summary: dict, name: str) -> None:
        logger.log(step, {t: {"success": s["success_rate"], "score": s["stepwise_score"], "cycle_time": s["cycle_time_all"]}
                          for t, s in summary.items()}, prefix="eval/" + name.replace(" ", "_"))


def evaluate_state(cfg, agent, state, stats, tasks, all_tasks, kind: str) -> dict:
    """Per-task summary of the policy ('policy': fine-tuned LWD; 'base': the BC flow) in the simulator."""
    if cfg.eval.episodes_per_task <= 0:
        return {}
    params = jax.device_get(policy_params(state, kind))
    blob = encode_policy(cfg.agent, params, stats, version=int(state.step), kind=kind)
    res = evaluation.evaluate(blob, tasks, cfg.eval.episodes_per_task, cfg.eval.seed, cfg.eval.workers, all_tasks)
    return evaluation.summarize(res)


def main() -> None:
    """CLI: flags are defined here, not at import, so tests can import this module beside other entry points."""
    config = config_flags.DEFINE_config_file("config", "experiments/configs/multitask.py", "experiment config")
    shd.maybe_initialize_distributed()  # multi-host only when LWD_COORDINATOR is set (see lwd_jax/sharding.py)

    def main_(_argv: list[str]) -> None:
        absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
        run(config.value)

    app.run(main_)


if __name__ == "__main__":
    main()
