"""Measure the clean scripted expert of every task; prints a markdown table for the README.

    python -m lwd_jax.sim.measure_experts --episodes 20
    python -m lwd_jax.sim.measure_experts --episodes 5 --tasks cube_pick_place,scene_open_drawer

Why: the suite's promise is that each task's expert succeeds >= 95% at zero noise (so demos are demos and a
failed episode in the data is a failure on purpose); this script is how that number is produced and
re-checked after any change to tasks, skills or the pinned simulator. Steps/s counts env steps including the
expert's own compute, excluding the one-off model build.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from lwd_jax.sim.env import SimEnv
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.tasks import get_task, task_names

SUCCESS_TARGET = 0.95


@dataclasses.dataclass(frozen=True)
class ExpertStats:
    task: str
    instruction: str
    is_long: bool
    step_budget: int
    num_subgoals: int
    success_rate: float
    mean_length: float  # over all episodes (failures count at the budget)
    max_subgoal_gap: int  # longest run of steps without a new sub-goal (sizes the teleoperator's patience)
    steps_per_second: float


def longest_gap(subgoals: np.ndarray) -> int:
    """Longest stretch of steps between increases of the sub-goal count (including start and end)."""
    rises = np.flatnonzero(np.diff(subgoals) > 0) + 1
    marks = np.concatenate([[0], rises, [len(subgoals) - 1]])
    return int(np.diff(marks).max()) if len(marks) > 1 else 0


def measure_task(name: str, episodes: int, seed_offset: int = 0) -> ExpertStats:
    """Runs `episodes` clean expert episodes (seeds seed_offset..) on one reused env."""
    task = get_task(name)
    env = SimEnv(task)
    successes, lengths, gaps, steps = [], [], [], 0
    start = time.perf_counter()
    for seed in range(seed_offset, seed_offset + episodes):
        ep = record_episode(task, "expert", seed=seed, env=env).episode
        successes.append(ep.success)
        lengths.append(ep.num_steps)
        gaps.append(longest_gap(ep.subgoals))
        steps += ep.num_steps
    elapsed = time.perf_counter() - start
    return ExpertStats(
        task=name,
        instruction=task.instruction,
        is_long=task.is_long,
        step_budget=env.step_budget,
        num_subgoals=task.num_subgoals,
        success_rate=float(np.mean(successes)),
        mean_length=float(np.mean(lengths)),
        max_subgoal_gap=int(max(gaps)),
        steps_per_second=steps / elapsed,
    )


def markdown_table(rows: list[ExpertStats]) -> str:
    lines = [
        "| task | instruction | long/short | sub-goals | step budget | expert success | mean expert length (steps) "
        "| max steps between sub-goals | env steps/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| `{r.task}` | {r.instruction} | {'long' if r.is_long else 'short'} | {r.num_subgoals} | {r.step_budget} "
            f"| {r.success_rate:.0%} | {r.mean_length:.1f} | {r.max_subgoal_gap} | {r.steps_per_second:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=20, help="episodes (seeds) per task")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed")
    args = parser.parse_args(argv)
    names = [n for n in args.tasks.split(",") if n] or task_names()
    for n in names:
        get_task(n)  # unknown names fail before any simulation starts
    rows = []
    for n in names:
        rows.append(measure_task(n, args.episodes, args.seed_offset))
        print(f"measured {n}: {rows[-1].success_rate:.0%}", flush=True)
    print()
    print(
        f"Scripted experts, zero noise, {args.episodes} seeds per task (seeds {args.seed_offset}.."
        f"{args.seed_offset + args.episodes - 1}), one process:"
    )
    print()
    print(markdown_table(rows))
    below = [r.task for r in rows if r.success_rate < SUCCESS_TARGET]
    if below:
        print(f"\nBELOW {SUCCESS_TARGET:.0%}: {below}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
