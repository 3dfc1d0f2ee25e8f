"""Observation and action normalization as inverse pairs, with stats that travel with the policy.

Why: the nets see normalized state/proprio (zero mean, unit std per dimension, from the offline data)
and actions scaled to [-1, 1]; the robot sees raw values. Training, evaluation and the bridge must share
one definition, so the stats live in the checkpoint and in the `Policy` the bridge loads, and each
transform has its inverse next to it (a test checks the round trip).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

_STD_FLOOR = 1e-3  # constant dims (e.g. padding, a fixed object) must not blow up on division


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension mean/std for observation arrays, and the action box mapped to [-1, 1]."""

    obs_mean: dict[str, np.ndarray]
    obs_std: dict[str, np.ndarray]
    action_low: np.ndarray
    action_high: np.ndarray

    def normalize_obs(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Standardizes the keys that have stats; passes the others (masks, images) through."""
        out = dict(obs)
        for k, m in self.obs_mean.items():
            if k in obs:
                out[k] = ((np.asarray(obs[k], np.float32) - m) / self.obs_std[k]).astype(np.float32)
        return out

    def unnormalize_obs(self, obs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(obs)
        for k, m in self.obs_mean.items():
            if k in obs:
                out[k] = (np.asarray(obs[k], np.float32) * self.obs_std[k] + m).astype(np.float32)
        return out

    def normalize_action(self, action: np.ndarray) -> np.ndarray:
        """Raw action box -> [-1, 1]."""
        a = np.asarray(action, np.float32)
        return (2.0 * (a - self.action_low) / (self.action_high - self.action_low) - 1.0).astype(np.float32)

    def unnormalize_action(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] -> raw action box (clipped first: a flow sample may step slightly outside)."""
        a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        return ((a + 1.0) * 0.5 * (self.action_high - self.action_low) + self.action_low).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(
            {
                "obs_mean": {k: v.tolist() for k, v in self.obs_mean.items()},
                "obs_std": {k: v.tolist() for k, v in self.obs_std.items()},
                "action_low": self.action_low.tolist(),
                "action_high": self.action_high.tolist(),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> NormStats:
        d = json.loads(text)
        f32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
        return cls(
            obs_mean={k: f32(v) for k, v in d["obs_mean"].items()},
            obs_std={k: f32(v) for k, v in d["obs_std"].items()},
            action_low=f32(d["action_low"]),
            action_high=f32(d["action_high"]),
        )


def compute_stats(
    obs: Mapping[str, np.ndarray],
    keys: tuple[str, ...] = ("state", "proprio"),
    action_low: Any = -1.0,
    action_high: Any = 1.0,
    action_dim: int = 5,
) -> NormStats:
    """Stats over a block of observations `[N, D]` per key (padding dims get mean 0, std 1 via the floor)."""
    mean, std = {}, {}
    for k in keys:
        x = np.asarray(obs[k], np.float64)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"normalize: observation '{k}' must be a non-empty [N, D] array, got shape {x.shape}")
        mean[k] = x.mean(0).astype(np.float32)
        s = x.std(0)
        std[k] = np.where(s < _STD_FLOOR, 1.0, s).astype(np.float32)
    low = np.broadcast_to(np.asarray(action_low, np.float32), (action_dim,)).copy()
    high = np.broadcast_to(np.asarray(action_high, np.float32), (action_dim,)).copy()
    if np.any(high <= low):
        raise ValueError(f"normalize: action_high {high} must exceed action_low {low}")
    return NormStats(mean, std, low, high)
