"""Evaluate a run on puzzle_3x3_all_on (long, 400-step budget): "turn on all nine lights of the checkerboard button grid".

    make eval TASK=puzzle_3x3_all_on RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="puzzle_3x3_all_on", episodes=LONG_EPISODES)
