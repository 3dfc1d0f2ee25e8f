"""Shared defaults of the per-task evaluation configs (`experiments/eval.py`); one file per task beside this one.

    python -m experiments.eval --config=experiments/configs/eval/cube_stack.py --config.run=runs/multitask
    make eval TASK=cube_stack RUN=runs/multitask POLICY=base      # the same through make
    make eval TASK=all                                             # every task, each with its own episode count

Why more episodes on long tasks: with several stages to get through, their success rates tend to sit
mid-range, where a binomial interval is widest (Wilson half-width at 50%: ±0.26 at 10 episodes, ±0.20 at
20, ±0.17 at 30), and their step-wise scores are fractional.
"""

from __future__ import annotations

import importlib

import ml_collections
from ml_collections import config_dict

SHORT_EPISODES = 20
LONG_EPISODES = 30


def get_config(tasks: str, episodes: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.run = "runs/multitask"  # the training workdir: <run>/checkpoints and <run>/norm_stats.json
    c.policy = "policy"  # "policy": the fine-tuned LWD policy | "base": the BC (SFT) flow it started from
    c.step = config_dict.placeholder(int)  # checkpoint step; None = the latest
    c.tasks = tasks  # a task name, comma-separated names, or "all"
    c.episodes = episodes  # per task; 0 = each task's own count from its config file here
    c.seed = 12345  # evaluation seed (the training script's default eval seed: the same scenes)
    c.workers = 2  # episode worker processes
    c.teleop = False  # True: the simulated teleoperator watches every episode (reports its intervention rate)
    c.out_dir = config_dict.placeholder(str)  # None = <run>/eval
    # A RECAP run only: act with the advantage indicator -1 / 0 (dropped) / 1 instead of the trained +1.
    c.recap_indicator = config_dict.placeholder(float)
    c.lock()
    return c


def episodes_for(task: str) -> int:
    """The episode count of `task`'s own config file (what TASK=all runs it with)."""
    return int(importlib.import_module(f"experiments.configs.eval.{task}").get_config().episodes)
