"""Train the multi-task LWD policy: BC pretrain -> offline DIVL + QAM (-> online fleet stage, issue 4).

    python -m experiments.train --config=experiments/configs/multitask.py --config.stage=offline

Reads top to bottom: config -> data -> mesh and agent -> resume -> loop (pretrain, then offline RL) with
logging, checkpoints and per-task evaluation -> final table (BC pretrain vs offline LWD).
"""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lwd_jax import sharding as shd
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data import batching
from lwd_jax.data.replay import TransitionBuffer, mixed_batch
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.learner import evaluation
from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.metrics_log import MetricsLogger, check_finite
from lwd_jax.policy import encode_policy
from lwd_jax.sim.tasks import get_task, task_names

STAGES = ("offline", "online", "all")


# ============================================================================================= config
def check_config(cfg: ml_collections.ConfigDict) -> list[str]:
    """Validates what ml_collections cannot (values, not keys); returns the task list. Errors name the key."""
    if cfg.stage not in STAGES:
        raise ValueError(f"config.stage: expected one of {STAGES}, got {cfg.stage!r}")
    if cfg.stage != "offline":
        raise NotImplementedError(f"config.stage={cfg.stage!r}: the online fleet stage arrives with issue 4")
    for key in ("batch_size", "updates_per_call"):
        if int(cfg[key]) < 1:
            raise ValueError(f"config.{key}: expected >= 1, got {cfg[key]}")
    if cfg.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size: {cfg.batch_size} must divide over {jax.device_count()} devices")
    if not 0.0 < cfg.data.gamma <= 1.0:
        raise ValueError(f"config.data.gamma: expected in (0, 1], got {cfg.data.gamma}")
    if cfg.agent.action_dim != 5:
        raise ValueError(f"config.agent.action_dim: the manipspace suite has 5-d actions, got {cfg.agent.action_dim}")
    known = task_names()
    tasks = known if cfg.tasks == "all" else [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"config.tasks: unknown task(s) {unknown} (known: {known})")
    return tasks


# =============================================================================================== data
def load_offline(cfg: ml_collections.ConfigDict, tasks: list[str], task_ids: dict[str, int], table: batching.InstructionTable) -> TransitionBuffer:
    """RLDS offline dataset -> an in-memory buffer of chunked n-step transitions for `tasks`."""
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
    buf = TransitionBuffer(capacity=max(1, int(keep.sum())))
    buf.add(batching.buffer_columns(cols, table))
    return buf


def sample_batches(cfg, buf: TransitionBuffer, online: TransitionBuffer | None, step: int, stats, table) -> dict:
    """U batches for one jitted call, from a generator keyed by (seed, step): resume replays the same stream."""
    rng = np.random.default_rng([cfg.seed, step])
    n = cfg.batch_size * cfg.updates_per_call
    cols = mixed_batch(rng, buf, online, n, cfg.data.online_fraction, balanced=cfg.data.task_balanced)
    return batching.stack(batching.agent_batch(cols, stats, table), cfg.updates_per_call)


# ============================================================================================== main
def run(cfg: ml_collections.ConfigDict) -> dict:
    tasks = check_config(cfg)
    os.makedirs(cfg.workdir, exist_ok=True)
    all_tasks = task_names()
    task_ids = {t: i for i, t in enumerate(all_tasks)}  # registry order: stable ids across runs

    # ---- data
    from lwd_jax.nets.language import get_default_encoder

    encoder = get_default_encoder()
    table = batching.InstructionTable(encoder.encode, encoder.embed_dim)
    t0 = time.time()
    offline = load_offline(cfg, tasks, task_ids, table)
    stats = batching.stats_from_buffer(offline)
    print(f"offline buffer: {len(offline)} transitions, {len(table)} instructions, {time.time() - t0:.1f}s", flush=True)

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
    logger = MetricsLogger(os.path.join(cfg.workdir, "logs"), console_every=1)

    # ---- loop
    p_end = cfg.pretrain_steps
    total = cfg.pretrain_steps + cfg.offline_steps
    u = cfg.updates_per_call
    step = int(state.step)
    results: dict = {}
    bar = tqdm(total=total, initial=step, desc="train", unit="upd", dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    while step < total:
        phase = "pretrain" if step < p_end else "offline"
        batches = sample_batches(cfg, offline, None, step, stats, table)
        if phase == "pretrain":
            state, metrics = agent.pretrain_update(state, batches)
        else:
            state, metrics = agent.update(state, batches, stage="offline")
        step += u
        bar.update(u)
        if step % cfg.log_every < u or step >= total:
            scalars = logger.log(step, jax.device_get(metrics), prefix=phase)
            check_finite(scalars, step)
        if step % cfg.checkpoint_every < u or step >= total or step == p_end:
            ckpt.save(step, state, {"phase": phase, "step": step, "version": 0, "config": cfg.to_json()}, force=True)
        if phase == "offline" and (step % cfg.eval.every < u or step >= total):
            res = evaluate_state(cfg, agent, state, stats, tasks, all_tasks, "policy")
            logger.log(step, {t: {"success": s["success_rate"], "cycle_time": s["cycle_time_all"]} for t, s in res.items()}, prefix="eval")
            if step >= total:
                results["offline LWD"] = res
        if step == p_end or (p_end == 0 and "base" not in results):
            results["base"] = evaluate_state(cfg, agent, state, stats, tasks, all_tasks, "base")
    bar.close()
    ckpt.wait()

    # ---- final table: BC pretrain ("SFT") vs offline LWD
    if "base" not in results:
        results["base"] = evaluate_state(cfg, agent, state, stats, tasks, all_tasks, "base")
    if "offline LWD" not in results:  # resumed at the end, or no offline steps
        results["offline LWD"] = evaluate_state(cfg, agent, state, stats, tasks, all_tasks, "policy")
    results = {"BC pretrain": results.pop("base"), "offline LWD": results["offline LWD"]}
    long_tasks = {t for t in tasks if get_task(t).is_long}
    table_md = evaluation.markdown_table(results, long_tasks)
    with open(os.path.join(cfg.workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with open(os.path.join(cfg.workdir, "results.md"), "w") as f:
        f.write(table_md + "\n")
    print(table_md, flush=True)
    logger.close()
    ckpt.close()
    return results


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
    app.run(lambda _: run(config.value))


if __name__ == "__main__":
    main()
