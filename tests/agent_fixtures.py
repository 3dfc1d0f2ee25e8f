"""Random but fixed-shape agent batches and a smoke-sized agent config, shared by the agent tests."""

import numpy as np

from experiments.configs.multitask import get_config
from lwd_jax.data.schema import PROPRIO_DIM, STATE_DIM

LANG_DIM = 384


def smoke_agent_config():
    return get_config("smoke").agent


def random_obs(rng: np.random.Generator, n: int) -> dict:
    return {
        "state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
        "state_mask": np.ones((n, STATE_DIM), bool),
        "proprio": rng.normal(size=(n, PROPRIO_DIM)).astype(np.float32),
        "lang": rng.normal(size=(n, LANG_DIM)).astype(np.float32),
    }


def random_batches(seed: int, num: int, batch: int, horizon: int = 5, action_dim: int = 5) -> dict:
    """[num, batch, ...] stacked batches (the lax.scan layout of `LWDAgent.update`)."""
    rng = np.random.default_rng(seed)
    n = num * batch

    def split(x):
        return x.reshape(num, batch, *x.shape[1:])

    b = {
        "observations": random_obs(rng, n),
        "next_observations": random_obs(rng, n),
        "actions": rng.uniform(-1, 1, (n, horizon, action_dim)).astype(np.float32),
        "action_valid": np.ones((n, horizon), bool),
        "reward": (rng.uniform(size=n) < 0.2).astype(np.float32),
        "discount": np.full(n, 0.99, np.float32),
        "intervention": rng.uniform(size=n) < 0.1,
    }
    return {k: ({kk: split(vv) for kk, vv in v.items()} if isinstance(v, dict) else split(v)) for k, v in b.items()}
