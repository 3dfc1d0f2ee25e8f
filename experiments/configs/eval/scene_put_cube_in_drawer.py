"""Evaluate a run on scene_put_cube_in_drawer (long, 500-step budget): "unlock the drawer, open it, put the red cube inside and close the drawer".

    make eval TASK=scene_put_cube_in_drawer RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import LONG_EPISODES
from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="scene_put_cube_in_drawer", episodes=LONG_EPISODES)
