"""Fake observations and agent batches of the right shapes: what benchmarks, shape checks and tests feed an
agent when the point is its compute, not what it learns (as openpi's `fake_obs`).

Why in the library: `make bench` and the GPU timing script time the real update on such batches, and
production code must never import the tests.

Shapes: obs {state [N,S], state_mask [N,S], proprio [N,P], lang [N,L]}; batches carry a leading [U] axis
(the `lax.scan` layout of `LWDAgent.update`).
"""

from __future__ import annotations

import numpy as np

from fleet_api.schema import PROPRIO_DIM, STATE_DIM

LANG_DIM = 384  # the default frozen sentence encoder's width (all-MiniLM-L6-v2)


def random_obs(rng: np.random.Generator, n: int, lang_dim: int = LANG_DIM) -> dict[str, np.ndarray]:
    """n observations with normal state, proprio and language features and a full state mask."""
    return {
        "state": rng.normal(size=(n, STATE_DIM)).astype(np.float32),
        "state_mask": np.ones((n, STATE_DIM), bool),
        "proprio": rng.normal(size=(n, PROPRIO_DIM)).astype(np.float32),
        "lang": rng.normal(size=(n, lang_dim)).astype(np.float32),
    }


def random_batches(seed: int, num: int, batch: int, horizon: int = 5, action_dim: int = 5) -> dict:
    """[num, batch, ...] stacked batches: sparse 0/1 rewards, 10% human-driven chunks, actions in [-1, 1]."""
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
