"""Per-task evaluation of a trained run's checkpoint in the simulator (issue 7).

    python -m experiments.eval --config=experiments/configs/eval/cube_stack.py --config.run=runs/multitask
    python -m experiments.eval --config=experiments/configs/eval/all.py --config.policy=base --config.teleop=True
    make eval TASK=cube_stack RUN=runs/multitask POLICY=policy EVAL_ARGS="--config.episodes=50"

Reads top to bottom: config -> checkpoint to policy blob (lwd_jax/learner/export.py) -> episodes in worker
processes (lwd_jax/learner/evaluation.py) -> `<out_dir>/<task|all>_<policy>[_teleop].json/.md` and the table on
stdout. Deterministic given `seed`: the same checkpoint and config give the same files.
"""

from __future__ import annotations

import os
import time

import ml_collections

from experiments.cli import ConfigError, config_main
from experiments.configs.eval.common import episodes_for
from lwd_jax.learner import eval_report, evaluation
from lwd_jax.learner.export import export_policy
from lwd_jax.policy import KINDS, needs_image
from lwd_jax.sim.tasks import parse_tasks, task_names


# ============================================================================================= config
def check_config(cfg: ml_collections.ConfigDict) -> tuple[list[str], dict[str, int]]:
    """Validates values; returns the tasks and each task's episode count. Errors name the key."""
    if cfg.policy not in KINDS:
        raise ValueError(f"config.policy: expected one of {KINDS}, got {cfg.policy!r}")
    tasks = parse_tasks(cfg.tasks)
    if cfg.episodes < 0:
        raise ValueError(f"config.episodes: expected >= 0 (0: each task's own count), got {cfg.episodes}")
    if cfg.workers < 1:
        raise ValueError(f"config.workers: expected >= 1, got {cfg.workers}")
    if cfg.step is not None and cfg.step < 0:
        raise ValueError(f"config.step: expected a saved step >= 0 or None (latest), got {cfg.step}")
    if cfg.episodes:
        return tasks, {t: int(cfg.episodes) for t in tasks}

    return tasks, {t: episodes_for(t) for t in tasks}


def report_stem(cfg: ml_collections.ConfigDict, tasks: list[str]) -> str:
    """`<out_dir>/<task|all>_<policy>[_teleop]` (several tasks: their names joined with '+')."""
    name = "all" if cfg.tasks == "all" else "+".join(tasks)
    out_dir = cfg.out_dir if cfg.out_dir is not None else os.path.join(cfg.run, "eval")
    ind = "" if cfg.recap_indicator is None else f"_indicator{cfg.recap_indicator:+g}"
    return os.path.join(out_dir, f"{name}_{cfg.policy}{ind}" + ("_teleop" if cfg.teleop else ""))


# =============================================================================================== main
def run(cfg: ml_collections.ConfigDict) -> dict:
    """Evaluates the configured checkpoint; writes the report files and returns the report dict. A bad value
    or run directory raises ConfigError (one line, exit 2 from the command line)."""
    try:
        tasks, episodes = check_config(cfg)
        exported = export_policy(cfg.run, cfg.policy, cfg.step, cfg.recap_indicator)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"config.run={cfg.run!r}: {e}" if isinstance(e, FileNotFoundError) else str(e)) from None
    print(f"eval: {cfg.run} step {exported.step} ({exported.phase or 'unknown phase'}), {cfg.policy} policy; "
          f"{sum(episodes.values())} episodes over {len(tasks)} task(s), {cfg.workers} worker(s), "
          f"teleop {'on' if cfg.teleop else 'off'}", flush=True)
    t0 = time.time()
    results = evaluation.evaluate(
        exported.blob, tasks, episodes, cfg.seed, cfg.workers, all_tasks=task_names(), teleop=cfg.teleop,
        render=needs_image(exported.blob),  # an image policy is evaluated by rendering workers
    )
    stem = report_stem(cfg, tasks)
    report = eval_report.write_report(
        results, stem, seed=cfg.seed, policy={"run": cfg.run, **exported.info(), "recap_indicator": cfg.recap_indicator},
        teleop=cfg.teleop,
    )
    with open(stem + ".md") as f:
        print(f.read(), flush=True)
    print(f"eval: {len(results)} episodes in {time.time() - t0:.0f}s -> {stem}.json, {stem}.md", flush=True)
    return report


def main() -> None:
    config_main("experiments/configs/eval/all.py", "evaluation config", run)


if __name__ == "__main__":
    main()
