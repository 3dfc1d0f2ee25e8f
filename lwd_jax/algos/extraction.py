"""Policy-extraction baselines beside QAM: advantage-weighted flow matching, RECAP-style advantage
conditioning, and an RLPD/HIL-SERL-style actor that maximises Q through the whole flow sampler.

Why these three: they are the ways our users would otherwise extract a flow policy from the same critic,
and each differs from QAM in exactly one respect the LWD paper argues about:
  * AWR flow (ablation "QAM -> critic-gradient-free extraction"): regress the velocity field on the data's
    actions, weighted by exp(beta * A(s, a)); uses Q only through the advantage *values*, never grad_a Q.
  * RECAP (pi0.6-style): label each data action "advantage positive / negative" with the value function
    and train a conditioned flow by plain flow matching; act with the label set to "positive".
  * q_grad (RLPD / HIL-SERL-style actor): maximise Q(s, pi(s, z)) by back-propagating through every
    Euler step of the sampler, plus a flow-BC term; exactly the "backprop through the whole sampler"
    that QAM's lean adjoint avoids.
All are pure functions of (apply fns, params, batch pieces, rng); the agent binds its modules into them.

Shapes: obs pytree with leading B; actions [B, H, A]; action_valid [B, H]; q, v, advantage [B].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lwd_jax.algos.bc import FlowConfig, euler_sample, flow_matching_loss
from lwd_jax.algos.common import Info, Obs, Params, VelocityApply

COND_KEY = "lang"  # the observation input the RECAP indicator is added to (see `condition_obs`)


@dataclasses.dataclass(frozen=True)
class ExtractionConfig:
    """Settings of the non-QAM extractions (ours unless marked)."""

    awr_temperature: float = 10.0  # beta of exp(beta * A): IQL uses 3 (locomotion) to 10 (antmaze)
    awr_max_weight: float = 100.0  # IQL's clip of the exponentiated advantage
    recap_threshold: float = 0.0  # A > threshold -> "positive" (pi0.6 picks it per task; 0 = better than V)
    recap_drop_prob: float = 0.3  # the indicator is dropped (unconditioned) this often, as in pi0.6
    recap_human_positive: bool = True  # pi0.6: human corrections are always labelled positive
    recap_cond_scale: float = 1.0  # length of the indicator's direction added to the unit-norm lang embedding
    recap_act_indicator: float = 1.0  # the indicator the policy acts with: +1 (RECAP); 0 / -1 only to diagnose
    q_grad_bc_weight: float = 1.0  # alpha of the flow-BC term beside -Q / mean|Q| (TD3+BC-style scaling)

    def __post_init__(self):
        if self.awr_temperature < 0 or self.awr_max_weight <= 0:
            raise ValueError(f"ExtractionConfig: awr_temperature >= 0 and awr_max_weight > 0 expected, got "
                             f"{self.awr_temperature}, {self.awr_max_weight}")
        if self.recap_act_indicator not in (-1.0, 0.0, 1.0):
            raise ValueError(f"ExtractionConfig.recap_act_indicator: expected -1, 0 or 1, got {self.recap_act_indicator}")
        if not 0.0 <= self.recap_drop_prob < 1.0:
            raise ValueError(f"ExtractionConfig.recap_drop_prob: expected in [0, 1), got {self.recap_drop_prob}")
        if self.q_grad_bc_weight < 0:
            raise ValueError(f"ExtractionConfig.q_grad_bc_weight: expected >= 0, got {self.q_grad_bc_weight}")


# -------------------------------------------------------------------------------------------- AWR flow


def awr_weights(advantage: jax.Array, temperature: float, max_weight: float) -> jax.Array:
    """min(exp(beta * A), w_max) [B], stop-gradient (the critic is never trained through the actor)."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(temperature * advantage), max_weight))


def awr_flow_loss(
    apply_fn: VelocityApply, params: Params, obs: Obs, actions: jax.Array, advantage: jax.Array, rng: jax.Array,
    action_valid: jax.Array, cfg: ExtractionConfig,
) -> tuple[jax.Array, Info]:
    """Advantage-weighted flow matching: the flow-BC loss with per-sample weights exp(beta * A).

    The weighted mean is normalised by the batch's weight sum (self-normalised AWR), so the loss scale
    does not drift with the advantage scale; the optimum is the data policy tilted by exp(beta * A).
    """
    w = awr_weights(advantage, cfg.awr_temperature, cfg.awr_max_weight)
    loss, info = flow_matching_loss(apply_fn, params, obs, actions, rng, action_valid.astype(w.dtype) * w[:, None])
    return loss, {**info, "awr_loss": loss, "awr_weight_mean": jnp.mean(w), "awr_weight_max": jnp.max(w),
                  "advantage_mean": jnp.mean(advantage)}


# ---------------------------------------------------------------------------------------------- RECAP


def cond_direction(dim: int) -> jax.Array:
    """A fixed unit vector [dim]: the direction the advantage indicator moves the language embedding.

    Why a fixed direction and no new parameters: pi0.6 feeds the indicator as text tokens to the VLA; our
    language input is a frozen, unit-norm sentence embedding, so the indicator enters through the same
    input (the learned projection reads it), and a RECAP learner has exactly the parameter tree of every
    other method, so it starts from the shared SFT checkpoint.
    """
    d = jax.random.normal(jax.random.PRNGKey(20260501), (dim,), jnp.float32)
    return d / jnp.linalg.norm(d)


def condition_obs(obs: Obs, cond: jax.Array, scale: float) -> Obs:
    """obs with the indicator cond [B] in {+1 positive, -1 negative, 0 dropped} added to obs['lang']."""
    lang = obs[COND_KEY]
    shift = scale * cond.astype(lang.dtype)[:, None] * cond_direction(lang.shape[-1])[None, :]
    return dict(obs, **{COND_KEY: lang + shift})


def recap_indicator(advantage: jax.Array, rng: jax.Array, cfg: ExtractionConfig,
                    human: jax.Array | None = None) -> jax.Array:
    """cond [B]: +1 where A > threshold (or the chunk is human-driven, `human` [B], with recap_human_positive),
    else -1; 0 (unconditioned) with probability `recap_drop_prob`."""
    positive = advantage > cfg.recap_threshold
    if human is not None and cfg.recap_human_positive:
        positive = positive | human.astype(bool)
    label = jnp.where(positive, 1.0, -1.0)
    keep = jax.random.uniform(rng, advantage.shape) >= cfg.recap_drop_prob
    return jax.lax.stop_gradient(jnp.where(keep, label, 0.0))


def recap_loss(
    apply_fn: VelocityApply, params: Params, obs: Obs, actions: jax.Array, advantage: jax.Array, rng: jax.Array,
    action_valid: jax.Array, cfg: ExtractionConfig, human: jax.Array | None = None,
) -> tuple[jax.Array, Info]:
    """Flow matching of the advantage-conditioned policy pi(a | s, I) on every data action (no weights).

    Every sample is kept (failures teach the "negative" mode); sampling with I = +1 then draws from the
    data's better-than-V actions: on a two-mode toy it picks the better mode (tests/test_baselines.py).
    """
    r_cond, r_fm = jax.random.split(rng)
    cond = recap_indicator(advantage, r_cond, cfg, human)
    loss, info = flow_matching_loss(apply_fn, params, condition_obs(obs, cond, cfg.recap_cond_scale), actions, r_fm,
                                    action_valid)
    return loss, {**info, "recap_loss": loss, "recap_positive_frac": jnp.mean(cond > 0),
                  "advantage_mean": jnp.mean(advantage)}


# ---------------------------------------------------------------------------------- RLPD-style q_grad


def q_grad_loss(
    velocity, q_fn, obs: Obs, bc_loss: jax.Array, rng: jax.Array, action_shape: tuple[int, int], flow: FlowConfig,
    cfg: ExtractionConfig,
) -> tuple[jax.Array, Info]:
    """-Q(s, pi(s, z)) / mean|Q| + alpha * BC, with `velocity(obs, x, t)` carrying the actor's params.

    `q_fn(obs, a)` -> [M, B] (the mean over heads is maximised); `bc_loss` is the actor's flow-BC loss on
    the data (computed by the caller with the same params, so both terms reach them). Dividing by the
    stop-gradient mean |Q| (TD3+BC) keeps alpha meaningful whatever the return scale.
    """
    b = jax.tree_util.tree_leaves(obs)[0].shape[0]
    a = euler_sample(velocity, obs, jax.random.normal(rng, (b, *action_shape)), flow)  # differentiable: no stop-gradient
    q = jnp.mean(q_fn(obs, a), axis=0)
    lam = jax.lax.stop_gradient(1.0 / jnp.maximum(jnp.mean(jnp.abs(q)), 1e-3))
    loss = -lam * jnp.mean(q) + cfg.q_grad_bc_weight * bc_loss
    return loss, {"q_grad_loss": loss, "q_pi_mean": jnp.mean(q), "q_grad_bc_loss": bc_loss}
