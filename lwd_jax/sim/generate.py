"""`make data`: generate the offline RLDS dataset with the simulated suite's scripted experts.

    python -m lwd_jax.sim.generate --config=experiments/configs/data.py --config.out_dir=data/offline

Why worker processes and one writer: MuJoCo stepping is single-threaded, so episodes are simulated in
parallel (spawned workers, one env per task reused across episodes), while one process owns the RLDS
writer (the writer is single-writer by design and commits shards atomically). Every episode's seed is a
pure function of (config seed, task, kind, index), so the dataset is reproducible whatever the worker
count and completion order; episodes are written in completion order, which only changes shard layout.
With `render`, every observation carries the 64x64 camera image (rendered in the workers, never here).
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
from lwd_jax.sim.jobs import children_render, dataset_job
from lwd_jax.sim.tasks import get_task, parse_tasks, task_names

COMPLETE_MARKER = ".complete"
KIND_STREAM = {"demo": 0, "rollout": 1, "exploration": 2, "intervention": 3}


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
    render = bool(cfg.render)
    with RLDSWriter(cfg.out_dir, durable=cfg.durable, with_image=render) as writer:
        args = [(t, k, s, specs[k], render) for t, k, s in jobs]
        if cfg.workers > 1 or render:  # rendering only ever in workers (lwd_jax/sim/jobs.py says why)
            with children_render(render):
                pool = mp.get_context("spawn").Pool(max(int(cfg.workers), 1))
            results = pool.imap_unordered(dataset_job, args)
        else:
            pool, results = None, map(dataset_job, args)
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
