"""QAM: Q-learning with Adjoint Matching (policy extraction for the flow policy).

Fine-tunes a velocity field v_theta so that its samples follow pi*(a|s) ∝ pi_beta(a|s) exp(Q(s, a) / lambda)
(inv_temp = 1/lambda) without likelihoods and without backpropagating through the sampler: roll out the
memoryless SDE of v_theta (gradient stopped), run the *lean adjoint* backwards with the base drift's VJPs
from the terminal condition -inv_temp * grad_a Q, and regress the control (v_theta - v_beta) onto it at
every step (adjoint matching, Domingo-Enrich et al. 2024).

Temperature: pi_beta exp(inv_temp Q) only tilts when inv_temp times the spread of Q within a state is of
order one, so the same inv_temp means nothing or everything depending on the critic's reward scale (0/1
success rewards: Q varies within a state by ~0.01). `QAMConfig.temperature = "relative"` divides inv_temp by
a stop-gradient estimate of that within-state spread, so inv_temp = 1 means the tilt exp(Q / sigma_Q)
whatever the scale of Q; "absolute" keeps the paper's inv_temp = 1/lambda.

Flow time t_i = i h, h = 1/K, t = 0 noise, t = 1 data. Every loop over K is a `lax.scan`.
Callables take params already bound (`Velocity(obs, x [B,H,A], t [B])`, `QFn(obs, a) -> [M, B]`), except
the fine field being trained, which takes its params explicitly (`VelocityApply`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lwd_jax.algos.bc import FlowConfig, euler_sample
from lwd_jax.algos.common import Info, Obs, Params, QFn, Velocity, VelocityApply, repeat_obs

_BASE_REFERENCES = ("frozen", "ema", "online")
_ADJOINT_CRITICS = ("target", "online")
_ADJOINTS = ("exact", "shifted")
_TEMPERATURES = ("absolute", "relative")


@dataclasses.dataclass(frozen=True)
class QAMConfig:
    """Every QAM tunable. Paper/reference values are marked."""

    flow_steps: int = 10  # K (QAM code default; LWD does not report it)
    inv_temp: float = 0.5  # 1/lambda; LWD: lambda = 2. QAM code: 0.3 default, [0.3, 10] per task
    residual: bool = False  # v_theta = v_beta + delta_theta (delta's last layer zero-initialised)
    clip_adjoint_actions: bool = True  # clip x_K to the bounds before grad_a Q (QAM code's clip_adj)
    action_low: float = -1.0
    action_high: float = 1.0
    best_of_n: int = 1  # >1: act with the best of N samples by the target critic's Q̄ (default off)
    # Which v_beta the agent passes in (agent-side switches, validated here):
    #   "frozen": the BC checkpoint taken before offline RL (LWD); "ema": EMA of a base kept trained by BC
    #   (QAM code's target_actor=True); "online": the BC-trained base's current params.
    base_reference: str = "frozen"
    adjoint_critic: str = "target"  # critic params for grad_a Q: "target" (QAM code's use_target_grad) | "online"
    scan_unroll: int | bool = 1  # True fully unrolls the K-loops (slower compile; lets XLA count all FLOPs)
    # Lean-adjoint discretisation (see `lean_adjoint`): "exact" = the adjoint of the rollout actually taken;
    # "shifted" = the earlier t_i + h recursion (public QAM code), wrong on sharp bases, kept for comparison.
    adjoint: str = "exact"
    # Temperature (see the module docstring): "absolute": the tilt is exp(inv_temp * Q) (paper's 1/lambda);
    # "relative": exp(inv_temp * Q / sigma_Q), sigma_Q = the pooled within-state std of Q under the base
    # ODE, estimated in every loss call from scale_samples base samples for each of scale_states states.
    temperature: str = "absolute"
    scale_samples: int = 4  # base-ODE samples per state for sigma_Q and the tilt diagnostics (>= 2)
    scale_states: int = 32  # states of the batch (its first rows) that get them
    scale_min: float = 1e-4  # floor of sigma_Q: a critic flat in a, e.g. early in training, gives no blow-up
    # Draw those samples in "absolute" mode too, for the tilt diagnostics only (extra cost: scale_states *
    # scale_samples base ODE samples and Q calls per update; "relative" always draws them).
    tilt_diagnostics: bool = False

    def __post_init__(self):
        if self.flow_steps < 2:
            raise ValueError(f"QAMConfig.flow_steps: expected >= 2 (SDE steps + a final ODE step), got {self.flow_steps}")
        if self.inv_temp < 0:
            raise ValueError(f"QAMConfig.inv_temp: expected >= 0, got {self.inv_temp}")
        if self.best_of_n < 1:
            raise ValueError(f"QAMConfig.best_of_n: expected >= 1, got {self.best_of_n}")
        if self.base_reference not in _BASE_REFERENCES:
            raise ValueError(f"QAMConfig.base_reference: expected one of {_BASE_REFERENCES}, got {self.base_reference!r}")
        if self.adjoint_critic not in _ADJOINT_CRITICS:
            raise ValueError(f"QAMConfig.adjoint_critic: expected one of {_ADJOINT_CRITICS}, got {self.adjoint_critic!r}")
        if self.adjoint not in _ADJOINTS:
            raise ValueError(f"QAMConfig.adjoint: expected one of {_ADJOINTS}, got {self.adjoint!r}")
        if self.temperature not in _TEMPERATURES:
            raise ValueError(f"QAMConfig.temperature: expected one of {_TEMPERATURES}, got {self.temperature!r}")
        if self.scale_samples < 2:
            raise ValueError(f"QAMConfig.scale_samples: expected >= 2 (a within-state std), got {self.scale_samples}")
        if self.scale_states < 1:
            raise ValueError(f"QAMConfig.scale_states: expected >= 1, got {self.scale_states}")
        if not self.scale_min > 0:
            raise ValueError(f"QAMConfig.scale_min: expected > 0, got {self.scale_min}")

    @property
    def uses_base_samples(self) -> bool:
        """Whether the loss draws the extra base-ODE samples (relative temperature or tilt diagnostics)."""
        return self.temperature == "relative" or self.tilt_diagnostics

    @property
    def flow(self) -> FlowConfig:
        """The ODE sampler settings shared with BC."""
        return FlowConfig(self.flow_steps, self.action_low, self.action_high, self.scan_unroll)


def memoryless_sigma(t: jax.Array, h: float) -> jax.Array:
    """sigma(t) = sqrt(2 (1 - t + h) / (t + h)): the memoryless schedule for the linear interpolation path,
    shifted by h so it is finite at t = 0 and non-zero at the last step."""
    return jnp.sqrt(2.0 * (1.0 - t + h) / (t + h))


def fine_velocity(fine_apply: VelocityApply, fine_params: Params, v_base: Velocity, residual: bool) -> Velocity:
    """v_theta(obs, x, t) with params bound: the fine field itself, or v_beta + delta_theta when residual."""
    if residual:
        return lambda obs, x, t: v_base(obs, x, t) + fine_apply(fine_params, obs, x, t)
    return lambda obs, x, t: fine_apply(fine_params, obs, x, t)


def rollout(
    v_fine: Velocity, v_base: Velocity, obs: Obs, x0: jax.Array, noise: jax.Array, cfg: QAMConfig
) -> tuple[jax.Array, jax.Array]:
    """Memoryless-SDE rollout of v_theta, gradient stopped. x0 [B, H, A]; noise [K-1, B, H, A].

    For i < K-1: x_{i+1} = x_i + h (2 v_theta(x_i, t_i) - x_i / (t_i + h)) + sqrt(h) sigma(t_i) eps_i;
    the last step is the base ODE x_K = x_{K-1} + h v_beta(x_{K-1}, t_{K-1}) (as in adjoint matching:
    the final noise would be absorbed by nothing). Returns xs [K, B, H, A] (x_0..x_{K-1}) and x_K [B, H, A].
    """
    k, b = cfg.flow_steps, x0.shape[0]
    h = 1.0 / k

    def sde_step(x, inp):
        i, eps = inp
        t = jnp.full((b,), i * h, x.dtype)
        drift = 2.0 * v_fine(obs, x, t) - x / (i * h + h)
        x_next = x + h * drift + jnp.sqrt(h) * memoryless_sigma(i * h, h) * eps
        return jax.lax.stop_gradient(x_next), x

    x_last, xs_head = jax.lax.scan(sde_step, x0, (jnp.arange(k - 1), noise), unroll=cfg.scan_unroll)
    t_last = jnp.full((b,), (k - 1) * h, x0.dtype)
    x_k = jax.lax.stop_gradient(x_last + h * v_base(obs, x_last, t_last))
    xs = jnp.concatenate([xs_head, x_last[None]], axis=0)
    return jax.lax.stop_gradient(xs), x_k


def terminal_adjoint(
    q_fn: QFn, obs: Obs, x_k: jax.Array, cfg: QAMConfig, inv_temp: jax.Array | float | None = None
) -> jax.Array:
    """ã_K = -inv_temp * grad_a mean_m Q_m(s, clip(a)) at a = x_K -> [B, H, A] (zero where clipping is active).

    `inv_temp` (default cfg.inv_temp) is the effective one: the loss passes inv_temp / sigma_Q, a traced
    scalar, in "relative" temperature mode.
    """
    return terminal_adjoint_and_q(q_fn, obs, x_k, cfg, inv_temp)[0]


def terminal_adjoint_and_q(
    q_fn: QFn, obs: Obs, x_k: jax.Array, cfg: QAMConfig, inv_temp: jax.Array | float | None = None
) -> tuple[jax.Array, jax.Array]:
    """(ã_K [B, H, A], mean over the batch of mean_m Q_m(s, clip(x_K))): the gradient's forward pass already
    evaluates the ensemble there, so the loss's `rollout_q` diagnostic costs nothing (a separate evaluation
    was one ensemble forward, ~7% of the reference-size update). Without clipping the Q is at x_K itself."""

    def q_mean(a):
        if cfg.clip_adjoint_actions:
            a = jnp.clip(a, cfg.action_low, cfg.action_high)
        return jnp.mean(q_fn(obs, a), axis=0)

    scale = cfg.inv_temp if inv_temp is None else inv_temp
    q_sum, grad = jax.value_and_grad(lambda a: jnp.sum(q_mean(a)))(x_k)
    return -scale * grad, q_sum / x_k.shape[0]


def base_q_samples(
    v_base: Velocity, q_fn: QFn, obs: Obs, rng: jax.Array, action_shape: tuple[int, int], cfg: QAMConfig
) -> jax.Array:
    """Q of base-policy actions: mean_m Q_m(s, a_j), a_j ~ clipped base ODE, for the first min(scale_states, B)
    states of `obs`, scale_samples each -> [S, N], stop-gradient.

    Why base-ODE samples (not the rollout's x_K): the tilt pi_beta exp(inv_temp Q) is defined relative to
    the base policy as it acts, and the rollout's samples come from the fine-tuned SDE, whose spread of Q
    shrinks as the tilt takes hold (a scale measured there would feed back into the temperature).
    """
    b = jax.tree_util.tree_leaves(obs)[0].shape[0]
    n_states, n = min(cfg.scale_states, b), cfg.scale_samples
    obs_rep = repeat_obs(jax.tree_util.tree_map(lambda o: o[:n_states], obs), n)  # row s * n + j
    acts = euler_sample(v_base, obs_rep, jax.random.normal(rng, (n_states * n, *action_shape)), cfg.flow)
    q = jnp.mean(q_fn(obs_rep, acts), axis=0).reshape(n_states, n)
    return jax.lax.stop_gradient(q)


def tilt_statistics(q: jax.Array, inv_temp: float, cfg: QAMConfig) -> tuple[jax.Array, Info]:
    """From base-sample values q [S, N]: (effective inv_temp, diagnostics), all stop-gradient.

    sigma_Q = sqrt(mean_s var_j q[s, j]) (unbiased per-state variances, pooled): the typical spread of Q
    *within* a state, which is what the tilt acts on (the spread across states does not tilt anything).
    Pooling variances rather than averaging per-state stds keeps the estimate unbiased in the variance with
    only N = 4 samples a state, and S N - S degrees of freedom (96 at the defaults: ~7% relative noise per
    batch). Relative mode uses inv_temp / max(sigma_Q, scale_min); absolute mode uses inv_temp as given.

    Diagnostics (per state, mean over states): `tilt_ess_frac`, the effective-sample-size fraction
    (sum w)^2 / (N sum w^2) of the self-normalised weights w_j ∝ exp(inv_temp_eff q_j) — 1 means the tilt
    does nothing, 1/N that one sample takes all the weight; for Q Gaussian under the base it is about
    exp(-(inv_temp_eff sigma_Q)^2), e.g. 0.37 at relative inv_temp = 1 (with N = 4 it cannot read below 1/4,
    so it is coarse for strong tilts). `tilt_q_gain`, sum_j w_j q_j - mean_j q_j: the rise in mean Q the
    exact tilt would give over the base, in Q's units.
    """
    n = q.shape[1]
    sigma = jnp.sqrt(jnp.mean(jnp.var(q, axis=1, ddof=1)))
    if cfg.temperature == "relative":
        eff = inv_temp / jnp.maximum(sigma, cfg.scale_min)
    else:
        eff = jnp.asarray(inv_temp, q.dtype)
    w = jax.nn.softmax(eff * q, axis=1)
    ess = 1.0 / (n * jnp.sum(jnp.square(w), axis=1))
    gain = jnp.sum(w * q, axis=1) - jnp.mean(q, axis=1)
    info = {"tilt_q_std": sigma, "tilt_ess_frac": jnp.mean(ess), "tilt_q_gain": jnp.mean(gain)}
    return jax.lax.stop_gradient(eff), jax.tree_util.tree_map(jax.lax.stop_gradient, info)


def lean_adjoint(v_base: Velocity, obs: Obs, xs: jax.Array, adj_k: jax.Array, cfg: QAMConfig) -> jax.Array:
    """The lean adjoint ã_0..ã_{K-1} [K, B, H, A], backwards from ã_K [B, H, A], with the base drift only.

    cfg.adjoint = "exact" (default): the adjoint of the discrete process `rollout` actually takes when
    v_theta = v_beta, step by step, so that ã_i is exactly d(-inv_temp Q(x_K)) / d x_i of that rollout:
      last (ODE) step x_K = x_{K-1} + h v_beta(x_{K-1}, t_{K-1}):
        ã_{K-1} = ã_K + h (∂v_beta/∂x (x_{K-1}, t_{K-1}))ᵀ ã_K;
      SDE steps i < K-1, x_{i+1} = x_i + h b(x_i, t_i) + noise, with b(x, t) = 2 v_beta(s, x, t) - x / (t + h):
        ã_i = ã_{i+1} + h (∂b/∂x (x_i, t_i))ᵀ ã_{i+1}.
    Why it matters: on a sharp base (std ~0.05, e.g. BC on clean demos) h ∂v/∂x is of order -1 near t = 1,
    so evaluating the Jacobian one step late changes the factor (I + h ∂b/∂x) by O(1), even its sign.

    cfg.adjoint = "shifted": the earlier recursion (as in the public QAM code), kept so it can be compared:
    every step, the last included, uses ∂b/∂x at t_i + h with b(x, t) = 2 v_beta(x, t) - x / t. It is not
    the adjoint of the rollout taken: on a 1-D N(0.1, 0.05^2) base at K = 10 it has the opposite sign to
    the rollout's VJP at 8 of the 10 steps and is 6-69x too large.

    Neither mode makes the K-step ODE policy sample the continuous tilt at K = 10 (tests/test_qam_sharp.py
    computes the AM fixed point in closed form for a Gaussian base and linear Q): the mean shift, as a
    fraction of the closed-form one, is 1.46 (exact) vs 6.9 (shifted) at base std 0.05 and 0.71 vs 0.97 at
    std 0.7. Why "exact" is the default anyway: its error stays bounded (0.24-1.73 over std 0.02-1.0 and
    K = 3-40) and vanishes as K grows (1.02 at K = 40, std 0.05), while the shifted one's grows without bound
    as the base sharpens (52x at std 0.02, K = 10; 120x at std 0.05, K = 3); broad bases are where the
    shifted scheme's errors happen to cancel.

    Only the base drift appears ("lean" adjoint), so the result does not depend on theta.
    """
    return lean_adjoint_and_base_velocity(v_base, obs, xs, adj_k, cfg)[0]


def lean_adjoint_and_base_velocity(
    v_base: Velocity, obs: Obs, xs: jax.Array, adj_k: jax.Array, cfg: QAMConfig
) -> tuple[jax.Array, jax.Array | None]:
    """(`lean_adjoint`, v_beta(x_i, t_i) [K, B, H, A] or None): in "exact" mode every VJP is taken at the
    rollout's own points (x_i, t_i), so its forward pass is the base velocity the adjoint-matching regression
    subtracts; returning it saves K base forwards (~7% of the reference-size update). "shifted" mode
    evaluates at t_i + h, so it returns None and the caller evaluates the base itself."""
    k, b = cfg.flow_steps, xs.shape[1]
    h = 1.0 / k

    if cfg.adjoint == "shifted":

        def shifted_step(adj, inp):
            i, x_i = inp
            s = i * h + h
            t = jnp.full((b,), s, x_i.dtype)
            _, vjp = jax.vjp(lambda x: 2.0 * v_base(obs, x, t) - x / s, x_i)
            adj_i = adj + h * vjp(adj)[0]
            return adj_i, adj_i

        _, adjs = jax.lax.scan(shifted_step, adj_k, (jnp.arange(k), xs), reverse=True, unroll=cfg.scan_unroll)
        return jax.lax.stop_gradient(adjs), None

    # Last step: the base ODE at t_{K-1}.
    t_last = jnp.full((b,), (k - 1) * h, xs.dtype)
    v_last, vjp_last = jax.vjp(lambda x: v_base(obs, x, t_last), xs[k - 1])
    adj_last = adj_k + h * vjp_last(adj_k)[0]

    def sde_step(adj, inp):
        i, x_i = inp
        t = jnp.full((b,), i * h, x_i.dtype)
        v_i, vjp = jax.vjp(lambda x: v_base(obs, x, t), x_i)
        # (∂b/∂x)ᵀ ã = 2 (∂v/∂x)ᵀ ã - ã / (t_i + h): the -x / (t + h) term's VJP is written out.
        adj_i = adj + h * (2.0 * vjp(adj)[0] - adj / (i * h + h))
        return adj_i, (adj_i, v_i)

    _, (head, v_head) = jax.lax.scan(sde_step, adj_last, (jnp.arange(k - 1), xs[: k - 1]), reverse=True,
                                     unroll=cfg.scan_unroll)
    adjs = jnp.concatenate([head, adj_last[None]], axis=0)
    vs = jnp.concatenate([v_head, v_last[None]], axis=0)
    return jax.lax.stop_gradient(adjs), jax.lax.stop_gradient(vs)


def adjoint_matching_loss(
    fine_apply: VelocityApply,
    fine_params: Params,
    v_base: Velocity,
    q_fn: QFn,
    obs: Obs,
    rng: jax.Array,
    action_shape: tuple[int, int],
    cfg: QAMConfig,
) -> tuple[jax.Array, Info]:
    """L_AM = E_b sum_i ||(2/sigma_i)(v_theta - v_beta)(x_i, t_i) + sigma_i ã_i||^2 (summed over the chunk).

    `fine_apply(params, obs, x, t)` is v_theta, or delta_theta when cfg.residual (then v_theta - v_beta =
    delta_theta). `v_base` and `q_fn` carry their own (frozen/EMA/target) params; xs and ãs are
    stop-gradient, so the only gradient is the local regression's, into `fine_params`.

    Info: `inv_temp_eff` (the inv_temp the terminal adjoint used); with cfg.uses_base_samples also
    `tilt_q_std` (sigma_Q), `tilt_ess_frac` and `tilt_q_gain` (see `tilt_statistics`).
    """
    k = cfg.flow_steps
    h = 1.0 / k
    b = jax.tree_util.tree_leaves(obs)[0].shape[0]
    x_rng, n_rng = jax.random.split(rng)
    x0 = jax.random.normal(x_rng, (b, *action_shape))
    noise = jax.random.normal(n_rng, (k - 1, b, *action_shape))

    tilt_info: Info = {}
    inv_temp = jnp.asarray(cfg.inv_temp, x0.dtype)
    if cfg.uses_base_samples:
        # fold_in, not a third split: the rollout's noise stays the same as without these samples.
        q_base = base_q_samples(v_base, q_fn, obs, jax.random.fold_in(rng, 0x5CA1E), action_shape, cfg)
        inv_temp, tilt_info = tilt_statistics(q_base, cfg.inv_temp, cfg)

    v_roll = fine_velocity(fine_apply, jax.lax.stop_gradient(fine_params), v_base, cfg.residual)
    xs, x_k = rollout(v_roll, v_base, obs, x0, noise, cfg)
    adj_k, q_end = terminal_adjoint_and_q(q_fn, obs, x_k, cfg, inv_temp)
    adjs, v_base_xs = lean_adjoint_and_base_velocity(v_base, obs, xs, adj_k, cfg)

    ts = jnp.arange(k, dtype=xs.dtype) * h
    sig = memoryless_sigma(ts, h)[:, None, None, None]  # [K, 1, 1, 1]

    def fine(x_i, t_i):
        return fine_apply(fine_params, obs, x_i, jnp.full((b,), t_i, x_i.dtype))

    ctrl = jax.vmap(fine)(xs, ts)  # [K, B, H, A]
    if not cfg.residual:  # v_theta - v_beta; v_beta at the rollout's points came with the adjoint when it could
        if v_base_xs is None:
            v_base_xs = jax.vmap(lambda x_i, t_i: v_base(obs, x_i, jnp.full((b,), t_i, x_i.dtype)))(xs, ts)
        ctrl = ctrl - jax.lax.stop_gradient(v_base_xs)
    resid = (2.0 / sig) * ctrl + sig * adjs
    per_step = jnp.sum(jnp.square(resid).reshape(k, b, -1), axis=-1)  # [K, B]
    loss = jnp.mean(jnp.sum(per_step, axis=0))
    x_end = jnp.clip(x_k, cfg.action_low, cfg.action_high)
    info = {
        "am_loss": loss,
        "adj_end_abs": jnp.mean(jnp.abs(adj_k)),
        "adj_start_abs": jnp.mean(jnp.abs(adjs[0])),
        "control_abs": jnp.mean(jnp.abs(ctrl)),
        "rollout_q": q_end if cfg.clip_adjoint_actions else jnp.mean(q_fn(obs, x_end)),
        "rollout_clip_frac": jnp.mean(jnp.abs(x_k) > cfg.action_high),
        "inv_temp_eff": inv_temp,
        **tilt_info,
    }
    return loss, info


def sample_actions(
    velocity: Velocity,
    obs: Obs,
    rng: jax.Array,
    action_shape: tuple[int, int],
    cfg: QAMConfig,
    q_fn: QFn | None = None,
) -> jax.Array:
    """Acts with the fine-tuned ODE (`velocity` = fine_velocity(...)) -> clipped actions [B, H, A].

    With cfg.best_of_n = N > 1 (needs q_fn), draws N chunks per state and keeps the one of highest mean Q.
    """
    b = jax.tree_util.tree_leaves(obs)[0].shape[0]
    n = cfg.best_of_n
    if n == 1:
        return euler_sample(velocity, obs, jax.random.normal(rng, (b, *action_shape)), cfg.flow)
    if q_fn is None:
        raise ValueError(f"qam.sample_actions: best_of_n = {n} needs q_fn")
    obs_n = repeat_obs(obs, n)  # row b * n + j
    acts = euler_sample(velocity, obs_n, jax.random.normal(rng, (b * n, *action_shape)), cfg.flow)
    q = jnp.mean(q_fn(obs_n, acts), axis=0).reshape(b, n)
    best = jnp.argmax(q, axis=-1)
    return acts.reshape(b, n, *action_shape)[jnp.arange(b), best]
