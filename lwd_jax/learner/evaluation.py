"""Per-task evaluation in the simulator: success rate, step-wise score and cycle time of a policy blob.

Why worker processes: MuJoCo stepping is single-threaded Python-bound work (~300 steps/s a core), so
episodes run in parallel processes, each loading the policy blob once. Evaluation is deterministic given
its seed: episode i of task k always resets with the same seed, and the policy's sampling key is derived
from it, so two runs of the same checkpoint give the same table.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
from collections.abc import Sequence
from typing import Any

import numpy as np

_WORKER: dict[str, Any] = {}


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int  # control steps until success, or the step budget on a failure
    subgoal_frac: float  # sub-goals reached / the task's number of sub-goals (step-wise score)
    budget: int
    intervention_rate: float = 0.0  # fraction of steps the simulated teleoperator drove (0 without one)


def episode_seed(base_seed: int, task_index: int, episode: int) -> int:
    """A fixed, collision-free reset seed per (task, episode), so every method meets the same scenes."""
    return int(base_seed) * 1_000_003 + task_index * 10_007 + episode


def run_policy_episode(policy: Any, task: str, seed: int, teleop: Any = None) -> EpisodeResult:
    """One episode with the sim's recorder (chunks executed open-loop, re-planned at each chunk end)."""
    from lwd_jax.sim.env import make_env
    from lwd_jax.sim.rollout import rollout

    env = _WORKER.setdefault("envs", {}).get(task)
    if env is None:  # building a MuJoCo scene costs as much as a short episode: one per task per worker
        env = _WORKER["envs"][task] = make_env(task)
    ep = rollout(task, policy, seed=seed, teleop=teleop, env=env, validate=False).episode
    return EpisodeResult(
        task, seed, bool(ep.success), ep.num_steps, ep.subgoal_frac, env.step_budget,
        float(ep.intervention.mean()),
    )


def _init_worker(blob: bytes, seed: int) -> None:
    import os

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ["MUJOCO_GL"] = "disable"  # EGL + TensorFlow in one process aborts at exit; eval never renders
    from lwd_jax.policy import Policy

    _WORKER["policy"] = Policy(blob, seed=seed)


def _run_job(job: tuple[str, int]) -> EpisodeResult:
    policy = _WORKER["policy"]
    task, seed = job
    policy.reseed(seed)  # sampling noise tied to the episode: reproducible whatever the worker
    return run_policy_episode(policy, task, seed)


def evaluate(
    blob: bytes, tasks: Sequence[str], episodes_per_task: int, seed: int, workers: int = 1, all_tasks: Sequence[str] | None = None
) -> list[EpisodeResult]:
    """Every (task, episode) once; results in job order whatever the worker count."""
    order = list(all_tasks) if all_tasks is not None else list(tasks)
    jobs = [(t, episode_seed(seed, order.index(t), i)) for t in tasks for i in range(episodes_per_task)]
    if workers <= 1:
        _init_worker(blob, seed)
        return [_run_job(j) for j in jobs]
    ctx = mp.get_context("spawn")  # never fork a process that holds JAX/TF threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=(blob, seed)) as pool:
        return pool.map(_run_job, jobs, chunksize=1)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (sane at 0/n and n/n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(results: Sequence[EpisodeResult]) -> dict[str, dict[str, float]]:
    """Per task: success rate (+ interval), step-wise score, cycle time on successes and with failures at budget."""
    out: dict[str, dict[str, float]] = {}
    for task in dict.fromkeys(r.task for r in results):
        rs = [r for r in results if r.task == task]
        wins = [r for r in rs if r.success]
        lo, hi = wilson_interval(len(wins), len(rs))
        out[task] = {
            "episodes": len(rs),
            "success_rate": len(wins) / len(rs),
            "success_lo": lo,
            "success_hi": hi,
            "stepwise_score": float(np.mean([r.subgoal_frac for r in rs])),
            "cycle_time_success": float(np.mean([r.steps for r in wins])) if wins else float("nan"),
            "cycle_time_all": float(np.mean([r.steps if r.success else r.budget for r in rs])),
        }
    return out


def markdown_table(columns: dict[str, dict[str, dict[str, float]]], long_tasks: set[str] | None = None) -> str:
    """`columns`: method -> summarize() output. Rows: tasks, then averages (all, and short/long)."""
    methods = list(columns)
    tasks = list(dict.fromkeys(t for m in methods for t in columns[m]))
    head = "| task | " + " | ".join(f"{m} success | {m} score | {m} cycle (steps)" for m in methods) + " |"
    sep = "|---" * (1 + 3 * len(methods)) + "|"
    lines = [head, sep]

    def cell(s: dict[str, float] | None) -> str:
        if s is None:
            return " – | – | – "
        ct = s["cycle_time_success"]
        return f" {s['success_rate']:.2f} [{s['success_lo']:.2f}, {s['success_hi']:.2f}] | {s['stepwise_score']:.2f} | {'–' if math.isnan(ct) else f'{ct:.0f}'} "

    for t in tasks:
        tag = " (long)" if long_tasks and t in long_tasks else ""
        lines.append(f"| {t}{tag} |" + "|".join(cell(columns[m].get(t)) for m in methods) + "|")
    groups = [("average", tasks)]
    if long_tasks:
        groups += [("average short", [t for t in tasks if t not in long_tasks]), ("average long", [t for t in tasks if t in long_tasks])]
    for name, ts in groups:
        if not ts:
            continue
        cells = []
        for m in methods:
            ss = [columns[m][t] for t in ts if t in columns[m]]
            sr = np.mean([s["success_rate"] for s in ss])
            sc = np.mean([s["stepwise_score"] for s in ss])
            ct = np.mean([s["cycle_time_all"] for s in ss])
            cells.append(f" {sr:.2f} | {sc:.2f} | {ct:.0f} (all) ")
        lines.append(f"| **{name}** |" + "|".join(cells) + "|")
    return "\n".join(lines)
