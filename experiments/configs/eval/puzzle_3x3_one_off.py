"""Evaluate a run on puzzle_3x3_one_off (long, 250-step budget): "on the lit 3x3 button grid, turn off only the top left light".

    make eval TASK=puzzle_3x3_one_off RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="puzzle_3x3_one_off", episodes=LONG_EPISODES)
