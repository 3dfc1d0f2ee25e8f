"""Nets: shapes, the obs-dict encoder's switches and errors, ensemble independence, FLOP counting."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lwd_jax.algos.common import ema_update, flops_of, masked_mean
from lwd_jax.nets.critic import CriticEnsemble
from lwd_jax.nets.encoder import EncodedNet, ObsEncoder
from lwd_jax.nets.flow import VelocityField, time_embedding
from lwd_jax.nets.mlp import MLP
from lwd_jax.nets.value import CategoricalValue, ScalarValue

B, S, P, L, H, A = 4, 12, 5, 384, 3, 2


def _obs(with_image=False):
    rng = np.random.default_rng(0)
    mask = np.zeros((B, S), bool)
    mask[:, :7] = True
    obs = {
        "state": jnp.asarray(rng.normal(size=(B, S)), jnp.float32),
        "state_mask": jnp.asarray(mask),
        "proprio": jnp.asarray(rng.normal(size=(B, P)), jnp.float32),
        "lang": jnp.asarray(rng.normal(size=(B, L)), jnp.float32),
    }
    if with_image:
        obs["image"] = jnp.asarray(rng.integers(0, 255, (B, 64, 64, 3)), jnp.uint8)
    return obs


def test_mlp_shapes_and_zero_init():
    x = jnp.ones((B, 7))
    mlp = MLP((8, 8), out_dim=3)
    p = jax.jit(mlp.init)(jax.random.PRNGKey(0), x)
    assert jax.jit(mlp.apply)(p, x).shape == (B, 3)
    zero = MLP((8,), out_dim=3, final_init_scale=0.0)
    assert float(jnp.max(jnp.abs(jax.jit(zero.apply)(jax.jit(zero.init)(jax.random.PRNGKey(0), x), x)))) == 0.0
    with pytest.raises(ValueError, match="activation"):
        MLP((8,), 1, activation="nope").init(jax.random.PRNGKey(0), x)


def test_encoder_fuses_obs_dict_and_masks_padding():
    enc = ObsEncoder(hidden_dims=(32,), out_dim=16)
    obs = _obs()
    p = jax.jit(enc.init)(jax.random.PRNGKey(0), obs)
    f = jax.jit(enc.apply)(p, obs)
    assert f.shape == (B, 16) and bool(jnp.all(jnp.isfinite(f)))
    # Values in padded state entries (mask False) do not change the features.
    noisy = dict(obs, state=obs["state"].at[:, 7:].set(1e3))
    np.testing.assert_allclose(jax.jit(enc.apply)(p, noisy), f, rtol=1e-5, atol=1e-5)
    # The language embedding conditions the features (one policy for all tasks).
    other = dict(obs, lang=obs["lang"][::-1])
    assert float(jnp.max(jnp.abs(jax.jit(enc.apply)(p, other) - f))) > 1e-3
    # A switched-on input that is missing is named in the error.
    with pytest.raises(KeyError, match="proprio"):
        enc.apply(p, {k: v for k, v in obs.items() if k != "proprio"})


def test_encoder_with_image():
    enc = ObsEncoder(hidden_dims=(32,), out_dim=16, use_image=True, cnn_channels=(8, 8), cnn_strides=(2, 2), cnn_out_dim=16)
    obs = _obs(with_image=True)
    p = jax.jit(enc.init)(jax.random.PRNGKey(0), obs)
    assert "cnn" in p["params"]
    assert jax.jit(enc.apply)(p, obs).shape == (B, 16)


def test_flow_critic_value_shapes_and_encoded_net():
    obs = _obs()
    x = jnp.zeros((B, H, A))
    t = jnp.linspace(0, 1, B)
    flow = EncodedNet(ObsEncoder(hidden_dims=(32,), out_dim=16), VelocityField(H, A, hidden_dims=(32, 32)))
    fp = jax.jit(flow.init)(jax.random.PRNGKey(0), obs, x, t)
    assert set(fp["params"]) == {"encoder", "head"}
    v = jax.jit(flow.apply)(fp, obs, x, t)
    assert v.shape == (B, H, A)
    # Encode once, then reuse the features: the same result as the fused call.
    feat = jax.jit(functools.partial(flow.apply, method=EncodedNet.encode))(fp, obs)
    head = jax.jit(functools.partial(flow.apply, method=EncodedNet.from_features))
    np.testing.assert_allclose(head(fp, feat, x, t), v, rtol=1e-5, atol=1e-6)
    # Features multiplied into the first layer once (QAM's K flow steps): the same field, and the same gradient
    # for every param (the first kernel's feature rows included), at a nonzero x and t
    xr = jnp.asarray(np.random.default_rng(1).normal(size=(B, H, A)), jnp.float32)
    proj = jax.jit(functools.partial(flow.apply, method=EncodedNet.encode_projected))(fp, obs)
    assert proj.shape == (B, 32)
    head_p = jax.jit(functools.partial(flow.apply, method=EncodedNet.from_features, projected=True))
    np.testing.assert_allclose(head_p(fp, proj, xr, t), flow.apply(fp, obs, xr, t), rtol=1e-5, atol=1e-5)

    def through(p, projected):
        f = flow.apply(p, obs, method=EncodedNet.encode_projected if projected else EncodedNet.encode)
        return (flow.apply(p, f, xr, t, projected, method=EncodedNet.from_features) ** 2).sum()

    g1, g0 = jax.grad(through)(fp, True), jax.grad(through)(fp, False)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="x expected"):
        VelocityField(H, A).init(jax.random.PRNGKey(0), feat, jnp.zeros((B, H + 1, A)), t)

    m = 3
    critic = CriticEnsemble(num_critics=m, hidden_dims=(32, 32))
    cp = jax.jit(critic.init)(jax.random.PRNGKey(1), feat, x)
    q = jax.jit(critic.apply)(cp, feat, x)
    assert q.shape == (m, B)
    # Members are independent networks (stacked params, different inits -> different values).
    k0 = cp["params"]["heads"]["mlp"]["dense_0"]["kernel"]
    assert k0.shape[0] == m and float(jnp.min(jnp.std(q, axis=0))) > 0
    # A member's gradient touches only its own slice of the stacked params.
    g = jax.jit(jax.grad(lambda p: critic.apply(p, feat, x)[1].sum()))(cp)
    gk = g["params"]["heads"]["mlp"]["dense_0"]["kernel"]
    assert float(jnp.abs(gk[0]).sum()) == 0.0 and float(jnp.abs(gk[1]).sum()) > 0.0

    cv = CategoricalValue(num_atoms=11, hidden_dims=(16,))
    assert jax.jit(cv.apply)(jax.jit(cv.init)(jax.random.PRNGKey(2), feat), feat).shape == (B, 11)
    sv = ScalarValue(hidden_dims=(16,))
    assert jax.jit(sv.apply)(jax.jit(sv.init)(jax.random.PRNGKey(3), feat), feat).shape == (B,)


def test_time_embedding():
    t = jnp.array([0.0, 0.5, 1.0])
    e = jax.jit(time_embedding, static_argnums=(1, 2))(t, 8, 100.0)
    assert e.shape == (3, 9)
    np.testing.assert_allclose(e[:, 0], t)
    assert time_embedding(t, 0, 100.0).shape == (3, 1)


def test_helpers_ema_masked_mean_and_flops():
    p, tp = {"w": jnp.ones(3)}, {"w": jnp.zeros(3)}
    np.testing.assert_allclose(ema_update(p, tp, 0.005)["w"], 0.005)
    np.testing.assert_allclose(masked_mean(jnp.array([1.0, 3.0, 100.0]), jnp.array([1, 1, 0])), 2.0)
    assert float(masked_mean(jnp.ones(2), jnp.zeros(2))) == 0.0
    a, b = jnp.ones((64, 32)), jnp.ones((32, 16))
    assert flops_of(lambda a, b: a @ b, a, b) == pytest.approx(2 * 64 * 32 * 16, rel=0.01)

    # Loops: XLA counts a scan body once unless the scan is unrolled (see flops_of's docstring).
    def loop(a, unroll):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ jnp.ones((32, 32))), None), a, None, length=5, unroll=unroll)[0]

    one = flops_of(lambda a: loop(a, 1), a)
    full = flops_of(lambda a: loop(a, True), a)
    assert full == pytest.approx(5 * one, rel=0.05)
