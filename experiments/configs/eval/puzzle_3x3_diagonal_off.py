"""Evaluate a run on puzzle_3x3_diagonal_off (short, 150-step budget): "light every button except the diagonal from the top right to the bottom left".

    make eval TASK=puzzle_3x3_diagonal_off RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import SHORT_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="puzzle_3x3_diagonal_off", episodes=SHORT_EPISODES)
