"""Evaluate a run on cube_pick_place (short, 200-step budget): "move the red cube from the right side of the table to the left side".

    make eval TASK=cube_pick_place RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import SHORT_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="cube_pick_place", episodes=SHORT_EPISODES)
