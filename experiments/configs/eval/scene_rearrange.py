"""Evaluate a run on scene_rearrange (long, 800-step budget): "put the red cube away in the drawer, open the window, and leave the drawer and the window locked".

    make eval TASK=scene_rearrange RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="scene_rearrange", episodes=LONG_EPISODES)
