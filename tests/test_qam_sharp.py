"""QAM's lean adjoint and tilt on *sharp* bases (std <= 0.05, e.g. a flow trained on clean demos).

Why a separate file: broad bases (tests/test_qam.py, std 0.4-0.7) hide the discretisation questions. On a
sharp base h dv/dx is of order -1 near t = 1 at K = 10, so (i) whether the adjoint's Jacobian is taken at
t_i or t_i + h changes its sign, and (ii) K-step Euler is far from the continuous flow.

The base fields are analytic (`mixture_velocity`), the critic a known Q, so every reference is exact:
- the lean adjoint (adjoint="exact") against autodiff of the rollout actually taken;
- the AM fixed point at K = 10 against its closed form for a Gaussian base and linear Q (`am_fixed_point_shift`),
  which shows how far that fixed point is from the continuous tilt at K = 10, for both adjoint modes;
- at K = 40, the trained policy against the closed-form tilt pi_beta exp(inv_temp Q).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lwd_jax.algos import qam
from lwd_jax.algos.bc import euler_sample
from lwd_jax.nets.flow import VelocityField
from tests.fit import fit
from tests.test_qam import mixture_velocity, tilted

SHARP_STD = 0.05


def toy(contexts):
    """(v_base, v_tilt(inv_temp), q_fn) of 1-D contexts selected by a one-hot obs; as in tests/test_qam.py."""
    base = [mixture_velocity(c["w"], c["m"], c["s"]) for c in contexts]

    def select(obs, per_context):
        return jnp.sum(obs * jnp.stack(per_context, axis=-1), axis=-1)

    def v_base(obs, x, t):
        return select(obs, [f(x[:, 0, 0], t) for f in base])[:, None, None]

    def v_tilt(inv_temp):
        fields = [mixture_velocity(*tilted(c, inv_temp)) for c in contexts]
        return lambda obs, x, t: select(obs, [f(x[:, 0, 0], t) for f in fields])[:, None, None]

    def q_fn(obs, a):
        a = a[:, 0, 0]
        return select(obs, [c["lin"] * a - c["quad"] * (a - c["centre"]) ** 2 for c in contexts])[None]

    return v_base, v_tilt, q_fn


def gaussian(m, s, lin=1.0, quad=0.0, centre=0.0):
    return dict(w=[1.0], m=[m], s=[s], lin=lin, quad=quad, centre=centre)


def gaussian_slope(t, s):
    """dv/dx of the flow of a Gaussian N(m, s^2) at time t (x-independent: the field is affine in x)."""
    return (t * s**2 - (1 - t)) / ((1 - t) ** 2 + t**2 * s**2)


def am_fixed_point_shift(s: float, k: int, adjoint: str) -> float:
    """Closed form, as a fraction of the continuous tilt's shift s^2 inv_temp lin, of the mean shift that the
    K-step Euler ODE of v_theta gives when v_theta - v_beta equals the AM regression target exactly
    (base N(m, s^2), Q = lin a). Why it is computable: the field is affine with x-independent slope, so
    every Jacobian is a scalar, the lean adjoint is deterministic, and the target -(sigma_i^2 / 2) ã_i is
    a constant per step. An independent numpy restatement of the two recursions in `qam.lean_adjoint`."""
    h = 1.0 / k
    ts = np.arange(k) * h
    sig2 = 2 * (1 - ts + h) / (ts + h)
    if adjoint == "exact":
        jac = 1 + h * (2 * gaussian_slope(ts, s) - 1 / (ts + h))
        jac[-1] = 1 + h * gaussian_slope(ts[-1], s)  # the last step is the base ODE
    else:
        jac = 1 + h * (2 * gaussian_slope(ts + h, s) - 1 / (ts + h))
    adj = np.array([np.prod(jac[i:]) for i in range(k)])  # ã_i / ã_K
    ode_response = np.array([np.prod(1 + h * gaussian_slope(ts[i + 1:], s)) for i in range(k)])
    return float(np.sum(ode_response * h * sig2 / 2 * adj) / s**2)


# ---------------------------------------------------------------------------------------------------------
# The lean adjoint is the adjoint of the rollout taken.


def rollout_cotangents(v_base, obs, x0, noise, adj_k, k):
    """d(ã_K . x_K) / d x_i for i < K through the rollout with v_theta = v_beta, by autodiff: an additive
    perturbation d_i enters at x_i, and the cotangent of d_i is that of x_i. A Python loop, not `qam.rollout`
    (which stops gradients), restating its dynamics; `xs` is returned to check they are the same."""
    b = x0.shape[0]
    h = 1.0 / k

    def run(d):
        x, xs = x0, []
        for i in range(k - 1):
            x = x + d[i]
            xs.append(x)
            drift = 2 * v_base(obs, x, jnp.full((b,), i * h)) - x / (i * h + h)
            x = x + h * drift + jnp.sqrt(h) * qam.memoryless_sigma(i * h, h) * noise[i]
        x = x + d[k - 1]
        xs.append(x)
        return x + h * v_base(obs, x, jnp.full((b,), (k - 1) * h)), jnp.stack(xs)

    (x_k, xs), vjp = jax.vjp(run, jnp.zeros((k, *x0.shape)))
    return vjp((adj_k, jnp.zeros_like(xs)))[0], xs, x_k


def _net_field(seed=0):
    net = VelocityField(1, 2, hidden_dims=(16,))
    obs = jnp.zeros((6, 1))
    p = net.init(jax.random.PRNGKey(seed), obs, jnp.zeros((6, 1, 2)), jnp.zeros((6,)))
    return lambda o, x, t: net.apply(p, o, x, t)


def _analytic_field(w, m, s):
    f = mixture_velocity(w, m, s)
    return lambda o, x, t: f(x[:, 0, 0], t)[:, None, None]


ADJOINT_CASES = {  # name: (v_base, action shape)
    "sharp_gaussian": (_analytic_field([1.0], [0.1], [SHARP_STD]), (1, 1)),
    "sharp_mixture": (_analytic_field([0.6, 0.4], [-0.3, 0.4], [SHARP_STD, 0.03]), (1, 1)),  # x-dependent dv/dx
    "broad_gaussian": (_analytic_field([1.0], [-0.2], [0.7]), (1, 1)),
    "net_2d": (_net_field(), (1, 2)),  # a matrix Jacobian: checks the transpose
}


def _adjoints(case, k=10, b=6, seed=0):
    v_base, shape = ADJOINT_CASES[case]
    obs = jnp.zeros((b, 1))
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x0 = jax.random.normal(k0, (b, *shape))
    noise = jax.random.normal(k1, (k - 1, b, *shape))
    adj_k = jax.random.normal(k2, (b, *shape))

    @jax.jit
    def compute(x0, noise, adj_k):
        ref, xs_ref, xk_ref = rollout_cotangents(v_base, obs, x0, noise, adj_k, k)
        xs, x_k = qam.rollout(v_base, v_base, obs, x0, noise, qam.QAMConfig(flow_steps=k))
        exact = qam.lean_adjoint(v_base, obs, xs, adj_k, qam.QAMConfig(flow_steps=k, adjoint="exact"))
        shifted = qam.lean_adjoint(v_base, obs, xs, adj_k, qam.QAMConfig(flow_steps=k, adjoint="shifted"))
        return ref, exact, shifted, (xs, xs_ref, x_k, xk_ref)

    ref, exact, shifted, (xs, xs_ref, x_k, xk_ref) = compute(x0, noise, adj_k)
    np.testing.assert_allclose(xs, xs_ref, rtol=1e-5, atol=1e-6)  # the reference dynamics are the rollout's
    np.testing.assert_allclose(x_k, xk_ref, rtol=1e-5, atol=1e-6)
    return np.asarray(ref), np.asarray(exact), np.asarray(shifted)


@pytest.mark.parametrize("case", list(ADJOINT_CASES))
def test_exact_lean_adjoint_is_the_vjp_of_the_rollout(case):
    """adjoint="exact" == autodiff of the rollout (v_theta = v_beta, noise fixed) at every step, 1e-5 relative.
    Measured: max relative error ~1.5e-6 (float32)."""
    ref, exact, _ = _adjoints(case)
    scale = np.abs(ref).max(axis=(1, 2, 3), keepdims=True)  # per step: the adjoint spans decades over t
    np.testing.assert_allclose(exact, ref, rtol=1e-5, atol=1e-6 * float(scale.min()))
    assert np.all(np.abs(exact - ref) <= 1e-5 * scale + 1e-7)


def test_shifted_lean_adjoint_is_not_the_vjp_on_a_sharp_base():
    """Documents the old recursion's error on a sharp base: measured (N(0.1, 0.05^2), K = 10) the sign is
    wrong at 8 of 10 steps (all but the last two) and the magnitude 6-69x too large. On the broad base it
    keeps the sign (1.0-1.7x): a broad base hides it."""
    ref, _, shifted = _adjoints("sharp_gaussian")
    agree = np.sign(shifted) == np.sign(ref)  # [K, B, 1, 1]
    steps_agreeing = agree.all(axis=(1, 2, 3)).sum()
    assert steps_agreeing <= 3, steps_agreeing  # measured 2
    ratio = np.abs(shifted / ref).mean(axis=(1, 2, 3))
    assert ratio.max() > 20 and np.median(ratio) > 5, ratio  # measured max 69, median ~10

    ref, _, shifted = _adjoints("broad_gaussian")
    assert (np.sign(shifted) == np.sign(ref)).mean() > 0.9


# ---------------------------------------------------------------------------------------------------------
# What K = 10 can and cannot represent: the AM fixed point in closed form.


def _train(contexts, inv_temp, k, adjoint, steps, batch=128, seed=0, **cfg_kw):
    v_base, v_tilt, q_fn = toy(contexts)
    cfg = qam.QAMConfig(flow_steps=k, inv_temp=inv_temp, residual=True, action_low=-9.0, action_high=9.0,
                        adjoint=adjoint, **cfg_kw)
    net = VelocityField(1, 1, hidden_dims=(64, 64), final_init_scale=0.0)
    c = len(contexts)
    obs = jnp.repeat(jnp.eye(c), batch // c, axis=0)
    params = jax.jit(net.init)(jax.random.PRNGKey(seed), obs, jnp.zeros((obs.shape[0], 1, 1)), jnp.zeros((obs.shape[0],)))
    params, loss = fit(lambda p, rng: qam.adjoint_matching_loss(net.apply, p, v_base, q_fn, obs, rng, (1, 1), cfg),
                       params, steps, optax.adam(1e-3), seed + 1)
    assert np.isfinite(loss)
    return qam.fine_velocity(net.apply, params, v_base, True), v_base, v_tilt(inv_temp), q_fn, cfg


def _samples(velocities, n_contexts, cfg, n=20000, seed=9):
    """K-step Euler ODE samples [n_contexts, n] of each velocity from the same noise."""
    obs = jnp.repeat(jnp.eye(n_contexts), n, axis=0)
    noise = jax.random.normal(jax.random.PRNGKey(seed), (obs.shape[0], 1, 1))
    return [np.asarray(euler_sample(v, obs, noise, cfg.flow))[:, 0, 0].reshape(n_contexts, n) for v in velocities]


def test_am_fixed_point_at_k10_is_not_the_tilt():
    """At K = 10 the trained policy reaches the AM fixed point (closed form, `am_fixed_point_shift`), and that
    fixed point is measurably not the closed-form tilt, for either adjoint:

        mean shift / closed-form shift   exact   shifted
        sharp, std 0.05                   1.46    6.94
        broad, std 0.7                    0.71    0.97

    Why: the K = 10 memoryless-SDE rollout is itself a poor discretisation of a sharp flow (one step's
    factor 1 + h db/dx is -0.06 at t = 0.8), and the exact adjoint differentiates that chain faithfully;
    the shifted recursion is not the chain's adjoint and blows up. So K = 10 cannot represent the tilt on
    a sharp base; the exact adjoint's error stays bounded (0.7-1.7x over std 0.02-1, K = 3-40) while the
    shifted one's grows without bound as the base sharpens (52x at std 0.02, K = 10).
    Trained with both adjoints: Q = 20 a on the sharp context (tilt shift 0.05 = one base std), Q = a on
    the broad one (0.49); the trained shifts match the closed-form fixed point to 0.1%.
    """
    assert am_fixed_point_shift(SHARP_STD, 10, "exact") == pytest.approx(1.459, abs=0.01)
    assert am_fixed_point_shift(SHARP_STD, 10, "shifted") == pytest.approx(6.94, abs=0.05)
    assert am_fixed_point_shift(0.7, 10, "exact") == pytest.approx(0.714, abs=0.01)
    assert am_fixed_point_shift(0.7, 10, "shifted") == pytest.approx(0.966, abs=0.01)
    # The exact adjoint converges to the continuous tilt as K grows (first order): 1.17 at K = 20, 1.02 at 40.
    assert abs(am_fixed_point_shift(SHARP_STD, 40, "exact") - 1) < 0.05

    contexts = [gaussian(0.1, SHARP_STD, lin=20.0), gaussian(-0.2, 0.7, lin=1.0)]
    for adjoint in ("exact", "shifted"):
        fine, v_base, _, _, cfg = _train(contexts, 1.0, 10, adjoint, steps=1500)
        got, base = _samples([fine, v_base], 2, cfg)
        for j, c in enumerate(contexts):
            s = c["s"][0]
            shift = (got[j].mean() - base[j].mean()) / (s**2 * c["lin"])
            # Measured (2 seeds) within 0.1% of the prediction for both modes: 3% still fails a wrong time
            # index, sign or sigma, which moves it by > 30%.
            assert shift == pytest.approx(am_fixed_point_shift(s, 10, adjoint), rel=0.03), (adjoint, j, shift)


# ---------------------------------------------------------------------------------------------------------
# The closed-form tilt on a sharp base, where the discretisation resolves it.


def test_sharp_base_matches_closed_form_tilt_at_k40():
    """Sharp base N(., 0.05^2), inv_temp 20, K = 40 (K = 10 cannot represent it, see above), exact adjoint.

    Linear Q = a: closed form shifts the mean by s^2 inv_temp = 0.05 = one base std and keeps the variance.
    Quadratic Q = -5 a^2 around the base mean -0.1: precision 400 -> 600, mean -0.1 -> -0.067.
    Euler keeps a Gaussian flow's mean exactly, so means are checked against the closed form; K = 40 Euler
    still shrinks this base's std (0.05 -> 0.040), so variances are checked against v*'s samples through
    the same Euler ODE and noise, as in tests/test_qam.py.
    Measured (2 seeds): linear shift 1.02-1.03 of the closed form, variance ratio 1.003; quadratic mean
    error 0.004 (shift 1.12x), variance ratio 0.82-0.85 (the tilt's shrink is over-done by ~15%). The
    shifted adjoint at K = 40 over-shifts the linear context 1.33x (mean error 0.017) and fails here.
    """
    contexts = [gaussian(0.1, SHARP_STD, lin=1.0), gaussian(-0.1, SHARP_STD, lin=0.0, quad=5.0, centre=0.0)]
    inv_temp = 20.0
    fine, v_base, v_star, _, cfg = _train(contexts, inv_temp, 40, "exact", steps=1500)
    got, ref, base = _samples([fine, v_star, v_base], 2, cfg)
    for j, c in enumerate(contexts):
        _, m2, _ = tilted(c, inv_temp)
        shift = m2[0] - c["m"][0]
        assert abs(got[j].mean() - m2[0]) < 0.2 * abs(shift), (j, got[j].mean(), m2[0])
        assert abs(base[j].mean() - c["m"][0]) < 0.002  # Monte Carlo: 20k samples of std 0.04
    assert abs(got[0].var() / ref[0].var() - 1) < 0.1, (got[0].var(), ref[0].var())
    # Quadratic: 25% still fails a policy that does not shrink (base / tilt variance = 1.64).
    assert abs(got[1].var() / ref[1].var() - 1) < 0.25, (got[1].var(), ref[1].var(), base[1].var())
