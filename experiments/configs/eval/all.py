"""Every task of the suite, each with the episode count of its own config file in this directory.

    make eval TASK=all RUN=runs/multitask POLICY=policy
"""

from experiments.configs.eval.common import get_config as _common


def get_config():
    return _common(tasks="all", episodes=0)
