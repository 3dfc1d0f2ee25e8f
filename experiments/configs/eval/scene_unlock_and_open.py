"""Evaluate a run on scene_unlock_and_open (long, 400-step budget): "unlock and open both the drawer and the window".

    make eval TASK=scene_unlock_and_open RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="scene_unlock_and_open", episodes=LONG_EPISODES)
