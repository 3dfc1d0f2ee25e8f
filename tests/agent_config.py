"""The smoke-sized agent config the agent tests build their agents from."""

import ml_collections

from experiments.configs.multitask import get_config


def smoke_agent_config() -> ml_collections.ConfigDict:
    return get_config("smoke").agent
