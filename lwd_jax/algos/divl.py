"""DIVL: Distributional Implicit Value Learning (the critic of LWD), plus its ablations.

In-sample like IQL (Q is never maximised over actions the data did not take), but the value head learns,
per state, the *distribution* of target-critic values Q̄(s, a) of the data's actions, and the TD target
bootstraps from a quantile V_tau(s) of it whose level tau(s) adapts to that distribution's spread.

Batch keys read here (the data pipeline computes the n-chunk return and its discount):
  observations, next_observations: obs pytrees, leading axis B
  actions:   [B, H, A]   the data chunk a_t
  reward:    [B]         sum_{k<n} gamma^{kH} R_{t+kH} (chunk rewards R already discounted within the chunk)
  discount:  [B]         gamma^{nH} * (1 - terminal); a time-out is not terminal, so it keeps its discount

Update order per batch (ALGORITHMS.md): value_loss -> step psi; divl_target with the *updated* psi ->
critic_loss -> step phi; EMA of the target critic; then QAM.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from lwd_jax.algos.common import CriticApply, Info, Obs, Params, ValueApply, masked_mean

Batch = dict[str, jax.Array]
_VALUE_TYPES = ("distributional", "expectile")
_TAU_MODES = ("adaptive", "centered", "constant")
_CRITIC_TARGETS = ("divl", "policy")
_AGGS = ("min", "mean")


@dataclasses.dataclass(frozen=True)
class DIVLConfig:
    """Every DIVL tunable. Paper values are marked; 'ours' marks choices the paper leaves open."""

    value_type: str = "distributional"  # "distributional" (DIVL) | "expectile" (IQL ablation)
    num_atoms: int = 201  # C (paper: 201)
    v_min: float = -0.1  # paper: [-0.1, 1.1] for 0/1 success rewards; see `value_bounds` for others
    v_max: float = 1.1
    # "adaptive" (DIVL, the paper's form): clip(tau_base - alpha H(s)); "centered": clip(tau_base - alpha
    # (H(s) - mean_batch H)), the same spread with its batch mean at tau_base, so the bootstrap level is the
    # configured one whatever the entropy's scale; "constant" (ablation): tau(s) = tau_const.
    tau_mode: str = "adaptive"
    tau_base: float = 0.6  # paper: 0.6 offline (the level `tau_of` reads; `at_stage` swaps in the online one)
    tau_base_online: float = 0.9  # paper: 0.9 online
    # Online updates over which tau_base moves linearly from tau_base to tau_base_online (0: the paper's jump
    # at the first online update, which inflates Q̄ by ~0.1 in a few hundred updates on our data).
    tau_ramp_updates: int = 0
    alpha: float = 0.3  # paper: 0.3
    tau_min: float = 0.4  # ours (paper gives none)
    tau_max: float = 0.95  # ours (paper gives none)
    tau_const: float = 0.6  # ours: the constant-tau ablation's level (= offline tau_base)
    expectile: float = 0.7  # IQL ablation's expectile kappa (IQL's locomotion default)
    target_agg: str = "min"  # Q̄ over target heads: "min" (paper, clipped double Q) | "mean"
    critic_target: str = "divl"  # "divl": y = r + d V_tau(s'); "policy": QAM's mean - rho * std at a' ~ pi
    rho: float = 0.5  # QAM reference's pessimism for the "policy" target
    target_ema: float = 0.005  # paper / QAM: EMA rate of the target critic (applied by the agent)

    def at_stage(self, stage: str, online_updates: jax.Array | int | None = None) -> DIVLConfig:
        """These settings for one stage: `tau_base` is the offline level; online, `tau_base_online`, reached
        linearly over `tau_ramp_updates` online updates (`online_updates` done so far, may be traced)."""
        if stage not in ("offline", "online"):
            raise ValueError(f"DIVLConfig.at_stage: expected 'offline' or 'online', got {stage!r}")
        if stage == "offline":
            return self
        if self.tau_ramp_updates <= 0 or online_updates is None:
            return dataclasses.replace(self, tau_base=self.tau_base_online)
        frac = jnp.clip(jnp.asarray(online_updates, jnp.float32) / self.tau_ramp_updates, 0.0, 1.0)
        return dataclasses.replace(self, tau_base=self.tau_base + frac * (self.tau_base_online - self.tau_base))

    def __post_init__(self):
        for field, value, allowed in (
            ("value_type", self.value_type, _VALUE_TYPES),
            ("tau_mode", self.tau_mode, _TAU_MODES),
            ("critic_target", self.critic_target, _CRITIC_TARGETS),
            ("target_agg", self.target_agg, _AGGS),
        ):
            if value not in allowed:
                raise ValueError(f"DIVLConfig.{field}: expected one of {allowed}, got {value!r}")
        if self.num_atoms < 2 or not self.v_max > self.v_min:
            raise ValueError(
                f"DIVLConfig support: expected num_atoms >= 2 and v_max > v_min, got C={self.num_atoms} "
                f"on [{self.v_min}, {self.v_max}]"
            )
        if not 0.0 < self.tau_min <= self.tau_max < 1.0:
            raise ValueError(f"DIVLConfig: expected 0 < tau_min <= tau_max < 1, got {self.tau_min}, {self.tau_max}")
        if self.tau_ramp_updates < 0:
            raise ValueError(f"DIVLConfig.tau_ramp_updates: expected >= 0, got {self.tau_ramp_updates}")
        if not 0.0 < self.tau_const < 1.0 or not 0.0 < self.expectile < 1.0:
            raise ValueError(f"DIVLConfig: tau_const and expectile must lie in (0, 1), got {self.tau_const}, {self.expectile}")


# ---------------------------------------------------------------------------------------------- support


def atom_support(v_min: float, v_max: float, num_atoms: int) -> jax.Array:
    """The C evenly spaced atoms z_c on [v_min, v_max] -> [C]."""
    return jnp.linspace(v_min, v_max, num_atoms, dtype=jnp.float32)


def value_bounds(
    r_min: float,
    r_max: float,
    gamma: float,
    *,
    sparse_terminal: bool = False,
    max_steps: int | None = None,
    margin: float = 0.1,
) -> tuple[float, float]:
    """Support [v_min, v_max] that holds every discounted return, padded by `margin` of its width per side.

    Per-step rewards lie in [r_min, r_max]. `sparse_terminal`: the reward comes at most once per episode
    (success at the terminal step), so returns lie in [min(0, r_min), max(0, r_max)] and with 0/1 rewards
    and margin 0.1 this is the paper's [-0.1, 1.1]. Otherwise returns are bounded by the geometric sum
    over `max_steps` steps (infinite if None): with gamma = 0.9999 a step penalty would need T ~ 1e4 atoms'
    worth of range, so pass the episode limit.
    """
    if sparse_terminal:
        lo, hi = min(0.0, r_min), max(0.0, r_max)
    else:
        if gamma >= 1.0 and max_steps is None:
            raise ValueError("value_bounds: gamma >= 1 needs max_steps to bound the return")
        n = max_steps if max_steps is not None else math.inf
        geo = n if gamma >= 1.0 else (1.0 - gamma**n) / (1.0 - gamma)
        lo, hi = min(0.0, r_min * geo), max(0.0, r_max * geo)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def two_hot(y: jax.Array, support: jax.Array) -> jax.Array:
    """Scalars y [B] -> probabilities [B, C]: y clipped to the support, split between its two neighbour atoms.

    The split is linear (mass (z_{c+1} - y)/Δ on z_c), so the expectation of the target equals the
    clipped y exactly.
    """
    c = support.shape[0]
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (c - 1)
    pos = (jnp.clip(y, v_min, v_max) - v_min) / delta
    lo = jnp.clip(jnp.floor(pos), 0, c - 2).astype(jnp.int32)
    frac = jnp.clip(pos - lo, 0.0, 1.0)[..., None]
    return jax.nn.one_hot(lo, c) * (1.0 - frac) + jax.nn.one_hot(lo + 1, c) * frac


# ------------------------------------------------------------------------------ distribution read-outs


def normalized_entropy(logits: jax.Array) -> jax.Array:
    """H(p) / log C of p = softmax(logits [B, C]) -> [B]: 1 for uniform, 0 for one-hot."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ent = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return ent / jnp.log(logits.shape[-1])


def tau_of(logits: jax.Array, cfg: DIVLConfig) -> jax.Array:
    """tau(s) [B]: clip(tau_base - alpha * H(s), tau_min, tau_max) (adaptive) or tau_const; stop-gradient.

    Why adaptive: a wide value distribution (data actions of very different quality) gets a lower, more
    conservative level; a narrow one (consistent data) a higher, more optimistic one.
    """
    if cfg.tau_mode == "constant":
        return jnp.full(logits.shape[:-1], cfg.tau_const, jnp.float32)
    h = normalized_entropy(jax.lax.stop_gradient(logits))
    if cfg.tau_mode == "centered":
        h = h - jnp.mean(h)
    return jnp.clip(cfg.tau_base - cfg.alpha * h, cfg.tau_min, cfg.tau_max)


def quantile(probs: jax.Array, tau: jax.Array, support: jax.Array) -> jax.Array:
    """V_tau = inf{v : F(v) >= tau} of the categorical distribution probs [B, C]; tau [B] -> [B].

    Interpolation within the atom: atom c's mass is spread uniformly over its bin [z_c - Δ/2, z_c + Δ/2],
    so F is piecewise linear with F(z_c + Δ/2) = sum_{j<=c} p_j. Why bins centred on atoms: two-hot
    targets smear each value over its two neighbours, and the resulting cumulative mass through atom c
    equals the true CDF at z_c + Δ/2 up to O(Δ²); reading F at the atoms themselves would bias every
    quantile by half an atom. The result is clipped to [v_min, v_max] (returns cannot leave the support).
    """
    c = support.shape[0]
    delta = (support[-1] - support[0]) / (c - 1)
    cdf = jnp.cumsum(probs, axis=-1)
    idx = jnp.minimum(jnp.sum(cdf < tau[..., None], axis=-1), c - 1)  # first atom with F >= tau
    p_c = jnp.take_along_axis(probs, idx[..., None], axis=-1)[..., 0]
    cdf_c = jnp.take_along_axis(cdf, idx[..., None], axis=-1)[..., 0]
    frac = jnp.clip((tau - (cdf_c - p_c)) / jnp.maximum(p_c, 1e-12), 0.0, 1.0)
    v = support[idx] - 0.5 * delta + frac * delta
    return jnp.clip(v, support[0], support[-1])


# --------------------------------------------------------------------------------------- value learning


def target_q(critic_apply: CriticApply, target_params: Params, obs: Obs, actions: jax.Array, agg: str) -> jax.Array:
    """Q̄(s, a) [B]: min (or mean) over the target critic's heads [M, B]; stop-gradient."""
    qs = critic_apply(target_params, obs, actions)
    q = jnp.min(qs, axis=0) if agg == "min" else jnp.mean(qs, axis=0)
    return jax.lax.stop_gradient(q)


def expectile_loss(diff: jax.Array, kappa: float) -> jax.Array:
    """|kappa - 1(diff < 0)| * diff^2 elementwise, diff = Q̄ - V (IQL)."""
    w = jnp.where(diff < 0, 1.0 - kappa, kappa)
    return w * jnp.square(diff)


def value_loss(
    value_apply: ValueApply,
    value_params: Params,
    critic_apply: CriticApply,
    target_critic_params: Params,
    batch: Batch,
    cfg: DIVLConfig,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, Info]:
    """Fits V_psi(s) to Q̄(s, a) on the batch's DATA actions (in-sample); weights [B] optional.

    distributional: cross-entropy -sum_c m_c log p_psi,c(s) with m = two_hot(Q̄); the optimum is the
    two-hot-smoothed distribution of Q̄(s, a) over the data's actions at s.
    expectile: IQL's expectile regression of a scalar V towards Q̄.
    Gradients reach only `value_params` (Q̄ is stop-gradient).
    """
    obs = batch["observations"]
    q = target_q(critic_apply, target_critic_params, obs, batch["actions"], cfg.target_agg)
    out = value_apply(value_params, obs)
    if cfg.value_type == "expectile":
        loss = masked_mean(expectile_loss(q - out, cfg.expectile), weights)
        return loss, {"value_loss": loss, "v_mean": jnp.mean(out), "q_data_mean": jnp.mean(q)}
    support = atom_support(cfg.v_min, cfg.v_max, cfg.num_atoms)
    m = two_hot(q, support)
    logp = jax.nn.log_softmax(out, axis=-1)
    loss = masked_mean(-jnp.sum(m * logp, axis=-1), weights)
    tau = tau_of(out, cfg)
    info = {
        "value_loss": loss,
        "q_data_mean": jnp.mean(q),
        "q_data_clipped_frac": jnp.mean((q < cfg.v_min) | (q > cfg.v_max)),
        "value_entropy": jnp.mean(normalized_entropy(out)),
        "value_mean": jnp.mean(jnp.sum(jnp.exp(logp) * support, axis=-1)),
        "tau_mean": jnp.mean(tau),
        "v_tau_mean": jnp.mean(quantile(jnp.exp(logp), tau, support)),
    }
    return loss, info


def bootstrap_value(value_apply: ValueApply, value_params: Params, obs: Obs, cfg: DIVLConfig) -> tuple[jax.Array, Info]:
    """The value bootstrapped from: V_tau(s) [B] (distributional) or V(s) [B] (expectile); stop-gradient."""
    out = jax.lax.stop_gradient(value_apply(value_params, obs))
    if cfg.value_type == "expectile":
        return out, {"v_next_mean": jnp.mean(out)}
    support = atom_support(cfg.v_min, cfg.v_max, cfg.num_atoms)
    tau = tau_of(out, cfg)
    v = quantile(jax.nn.softmax(out, axis=-1), tau, support)
    p10, p50, p90 = jnp.percentile(tau, jnp.array([10.0, 50.0, 90.0]))
    return v, {"v_next_mean": jnp.mean(v), "tau_next_mean": jnp.mean(tau), "tau_next_min": jnp.min(tau),
               "tau_next_max": jnp.max(tau), "tau_next_p10": p10, "tau_next_p50": p50, "tau_next_p90": p90,
               "tau_base": jnp.asarray(cfg.tau_base, jnp.float32),
               "value_entropy_mean": jnp.mean(normalized_entropy(out))}


def mean_value(value_apply: ValueApply, value_params: Params, obs: Obs, cfg: DIVLConfig) -> jax.Array:
    """E[V(s)] [B] over the value distribution (or the scalar V): the baseline of an advantage Q̄ - V.

    Why the mean and not V_tau: AWR and RECAP label a data action better or worse than the data's
    *average* action at s, while V_tau is the optimistic level the TD target bootstraps from.
    """
    out = jax.lax.stop_gradient(value_apply(value_params, obs))
    if cfg.value_type == "expectile":
        return out
    support = atom_support(cfg.v_min, cfg.v_max, cfg.num_atoms)
    return jnp.sum(jax.nn.softmax(out, axis=-1) * support, axis=-1)


# ---------------------------------------------------------------------------------------- critic learning


def divl_target(value_apply: ValueApply, value_params: Params, batch: Batch, cfg: DIVLConfig) -> tuple[jax.Array, Info]:
    """Chunk TD target y [B] = reward + discount * V_tau(next_obs); stop-gradient.

    Pass the value params *after* this batch's value step (ALGORITHMS.md update order).
    """
    v_next, info = bootstrap_value(value_apply, value_params, batch["next_observations"], cfg)
    y = batch["reward"] + batch["discount"] * v_next
    return jax.lax.stop_gradient(y), {**info, "target_mean": jnp.mean(y)}


def policy_action_target(
    critic_apply: CriticApply,
    target_critic_params: Params,
    batch: Batch,
    next_actions: jax.Array,
    rho: float,
) -> tuple[jax.Array, Info]:
    """QAM reference's target: y = reward + discount * (mean - rho * std)_m Q̄_m(s', a'), a' ~ pi(s') [B, H, A].

    The caller samples `next_actions` with the current (fine-tuned) policy and clips them to the bounds.
    This is not in-sample: it is kept so DIVL can be compared against it.
    """
    qs = critic_apply(target_critic_params, batch["next_observations"], next_actions)  # [M, B]
    next_q = jnp.mean(qs, axis=0) - rho * jnp.std(qs, axis=0)
    y = batch["reward"] + batch["discount"] * next_q
    return jax.lax.stop_gradient(y), {"v_next_mean": jnp.mean(next_q), "target_mean": jnp.mean(y)}


def critic_loss(
    critic_apply: CriticApply,
    critic_params: Params,
    batch: Batch,
    y: jax.Array,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, Info]:
    """sum_m (Q_phi_m(s, a) - stopgrad(y))^2, averaged over the batch (weights [B] optional)."""
    qs = critic_apply(critic_params, batch["observations"], batch["actions"])  # [M, B]
    err = jnp.sum(jnp.square(qs - jax.lax.stop_gradient(y)[None, :]), axis=0)
    loss = masked_mean(err, weights)
    return loss, {
        "critic_loss": loss,
        "q_mean": jnp.mean(qs),
        "q_max": jnp.max(qs),
        "q_min": jnp.min(qs),
        "q_head_gap": jnp.mean(jnp.max(qs, axis=0) - jnp.min(qs, axis=0)),
    }
