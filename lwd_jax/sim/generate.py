"""`make data`: generate the offline RLDS dataset with the simulated suite's scripted experts.

    python -m lwd_jax.sim.generate --config=experiments/configs/data.py --config.out_dir=data/offline

Why worker processes and one writer: MuJoCo stepping is single-threaded, so episodes are simulated in
parallel (spawned workers, one env per task reused across episodes), while one process owns the RLDS
writer (the writer is single-writer by design and commits shards atomically). Every episode's seed is a
pure function of (config seed, task, kind, index), so the dataset is reproducible whatever the worker
count and completion order; episodes are written in completion order, which only changes shard layout.
A `.complete` marker is written last, so `make data` regenerates a dataset that was interrupted.
"""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import shutil
import time
from typing import Any

import ml_collections
import numpy as np
from absl import app
from ml_collections import config_flags
from tqdm import tqdm

from lwd_jax.data.rlds_writer import RLDSWriter
from lwd_jax.sim.env import make_env
from lwd_jax.sim.experts import ExpertConfig
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.tasks import get_task, parse_tasks, task_names
from lwd_jax.sim.teleop import TeleopConfig

COMPLETE_MARKER = ".complete"
KIND_STREAM = {"demo": 0, "rollout": 1, "exploration": 2, "intervention": 3}
_ENVS: dict[str, Any] = {}


def dataset_episode_seed(seed: int, task_index: int, kind: str, index: int) -> int:
    """Distinct, reproducible reset/expert seed per (task, kind, episode)."""
    return int(np.random.SeedSequence([seed, task_index, KIND_STREAM[kind], index]).generate_state(1)[0])


def make_jobs(cfg: ml_collections.ConfigDict, tasks: list[str], all_tasks: list[str]) -> list[tuple[str, str, int]]:
    """(task, kind, seed) for every episode; long tasks first so the slow jobs start early."""

    jobs = []
    for kind, spec in cfg.kinds.items():
        if kind not in KIND_STREAM:
            raise ValueError(f"config.kinds.{kind}: unknown kind; expected one of {sorted(KIND_STREAM)}")
        for task in tasks:
            for i in range(int(spec.episodes)):
                jobs.append((task, kind, dataset_episode_seed(cfg.seed, all_tasks.index(task), kind, i)))
    jobs.sort(key=lambda j: -get_task(j[0]).step_budget)
    return jobs


def _run_job(args: tuple[str, str, int, dict]) -> Any:
    """Worker: one episode of `task` by the expert configured for `kind` (envs cached per task)."""

    task, kind, seed, spec = args
    expert = ExpertConfig(
        noise_std=spec["noise_std"], p_drop=spec["p_drop"], p_wrong_order=spec["p_wrong_order"], p_stall=spec["p_stall"]
    )
    teleop = TeleopConfig() if spec["teleop"] else None
    if task not in _ENVS:  # building a MuJoCo scene costs more than a short episode: reuse it
        _ENVS[task] = make_env(task)
    res = record_episode(task, expert, seed=seed, teleop=teleop, env=_ENVS[task], robot_id=f"datagen-{kind}")
    return kind, res.episode


def resolve_tasks(spec: str) -> tuple[list[str], list[str]]:
    return parse_tasks(spec), task_names()


def generate(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """Writes the dataset to `cfg.out_dir` (replacing an incomplete one); returns per-task statistics."""

    tasks, all_tasks = resolve_tasks(cfg.tasks)
    jobs = make_jobs(cfg, tasks, all_tasks)
    if os.path.exists(cfg.out_dir):
        if os.path.exists(os.path.join(cfg.out_dir, COMPLETE_MARKER)):
            raise FileExistsError(f"config.out_dir: {cfg.out_dir} already holds a complete dataset; remove it first")
        shutil.rmtree(cfg.out_dir)  # an interrupted generation: start over, never mix two runs
    specs = {k: dict(v) for k, v in cfg.kinds.items()}
    t0 = time.time()
    stats: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    pending: list = []
    steps = 0
    with RLDSWriter(cfg.out_dir, durable=cfg.durable) as writer:
        args = [(t, k, s, specs[k]) for t, k, s in jobs]
        if cfg.workers > 1:
            pool = mp.get_context("spawn").Pool(cfg.workers)
            results = pool.imap_unordered(_run_job, args)
        else:
            pool, results = None, map(_run_job, args)
        try:
            for kind, ep in tqdm(results, total=len(args), desc="episodes", unit="ep", dynamic_ncols=True):
                s = stats[ep.task]
                s[f"{kind}_success"].append(ep.success)
                if kind == "demo":
                    s["demo_len"].append(ep.num_steps)
                s["interventions"].append(float(ep.intervention.mean()))
                steps += ep.num_steps
                pending.append(ep)
                if len(pending) >= cfg.episodes_per_shard:
                    writer.append(pending)
                    pending = []
            if pending:
                writer.append(pending)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    elapsed = time.time() - t0
    summary = {
        "episodes": len(jobs),
        "steps": steps,
        "seconds": round(elapsed, 1),
        "steps_per_s": round(steps / max(elapsed, 1e-9), 1),
        "per_task": {
            t: {
                **{k: float(np.mean(v)) for k, v in s.items() if k.endswith("_success")},
                "demo_mean_len": float(np.mean(s["demo_len"])) if s["demo_len"] else float("nan"),
            }
            for t, s in stats.items()
        },
    }
    with open(os.path.join(cfg.out_dir, "generation.json"), "w") as f:
        json.dump({"config": cfg.to_dict(), **summary}, f, indent=1)
    with open(os.path.join(cfg.out_dir, COMPLETE_MARKER), "w") as f:
        f.write("ok\n")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{summary['episodes']} episodes, {summary['steps']} steps in {summary['seconds']} s ({summary['steps_per_s']} steps/s)")
    print("| task | demo success | demo mean length | rollout success | exploration success | intervention success |")
    print("|---|---|---|---|---|---|")
    for t, s in summary["per_task"].items():
        cells = [s.get(f"{k}_success", float("nan")) for k in ("demo", "rollout", "exploration", "intervention")]
        print(f"| {t} | {cells[0]:.2f} | {s['demo_mean_len']:.0f} | " + " | ".join(f"{c:.2f}" for c in cells[1:]) + " |")


def main() -> None:
    """CLI: flags are defined here, not at import, so tests can import this module beside other entry points."""
    config = config_flags.DEFINE_config_file("config", "experiments/configs/data.py", "data generation config")
    app.run(lambda _: print_summary(generate(config.value)))


if __name__ == "__main__":
    main()
