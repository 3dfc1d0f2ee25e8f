"""Evaluate a run on scene_close_and_lock (long, 500-step budget): "close the drawer and the window and leave both locked".

    make eval TASK=scene_close_and_lock RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="scene_close_and_lock", episodes=LONG_EPISODES)
