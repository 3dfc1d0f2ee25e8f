"""Normalization transforms are inverse pairs and survive serialization."""

import numpy as np
import pytest

from lwd_jax.data.normalize import NormStats, compute_stats


def test_round_trip_and_json():
    rng = np.random.default_rng(0)
    obs = {"state": rng.normal(3.0, 2.0, (500, 6)).astype(np.float32), "proprio": rng.normal(size=(500, 4)).astype(np.float32)}
    obs["state"][:, 5] = 0.0  # a padding dim: constant, must not divide by zero
    st = compute_stats(obs, action_low=[-2, -1, -1, -1, 0], action_high=[2, 1, 1, 1, 1])
    n = st.normalize_obs(obs)
    assert np.allclose(n["state"][:, :5].mean(0), 0, atol=1e-4) and np.allclose(n["state"][:, :5].std(0), 1, atol=1e-3)
    assert np.all(np.isfinite(n["state"]))
    back = st.unnormalize_obs(n)
    assert np.allclose(back["state"], obs["state"], atol=1e-4)
    a = rng.uniform([-2, -1, -1, -1, 0], [2, 1, 1, 1, 1], (100, 5)).astype(np.float32)
    na = st.normalize_action(a)
    assert na.min() >= -1 - 1e-6 and na.max() <= 1 + 1e-6
    assert np.allclose(st.unnormalize_action(na), a, atol=1e-5)
    st2 = NormStats.from_json(st.to_json())
    assert np.allclose(st2.normalize_obs(obs)["state"], n["state"])


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="'state'"):
        compute_stats({"state": np.zeros((0, 3)), "proprio": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="action_high"):
        compute_stats({"state": np.zeros((2, 3)), "proprio": np.zeros((2, 2))}, action_low=1.0, action_high=0.0)
