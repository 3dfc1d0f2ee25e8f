"""Evaluate a run on cube_pick_place_diagonal (short, 250-step budget): "move the red cube from the back left corner to the front right corner".

    make eval TASK=cube_pick_place_diagonal RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import SHORT_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="cube_pick_place_diagonal", episodes=SHORT_EPISODES)
