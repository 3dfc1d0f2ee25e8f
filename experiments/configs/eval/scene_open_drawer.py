"""Evaluate a run on scene_open_drawer (short, 150-step budget): "open the drawer".

    make eval TASK=scene_open_drawer RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import SHORT_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="scene_open_drawer", episodes=SHORT_EPISODES)
