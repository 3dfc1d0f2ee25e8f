"""Evaluate a run on cube_stack (long, 400-step budget): "move the red cube to the middle of the table and stack the blue cube on top of it".

    make eval TASK=cube_stack RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="cube_stack", episodes=LONG_EPISODES)
