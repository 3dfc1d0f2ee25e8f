"""Flow-matching behaviour cloning and Euler ODE sampling: the pretrained ("base") policy.

Notation (ALGORITHMS.md): flow time t in [0, 1], t = 0 noise, t = 1 data; K Euler steps of size h = 1/K.
Actions are chunks [B, H, A] in [-1, 1]; `action_valid [B, H]` marks chunk steps that lie inside the
episode (the padding after an episode's end carries no behaviour to clone).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lwd_jax.algos.common import Info, Obs, Params, Velocity, VelocityApply


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """Sampling and BC settings of a flow policy."""

    flow_steps: int = 10  # K (QAM code default; the LWD paper does not report it)
    action_low: float = -1.0
    action_high: float = 1.0
    scan_unroll: int | bool = 1  # True unrolls the K-step loop (XLA then counts its FLOPs K times)


def flow_matching_loss(
    apply_fn: VelocityApply,
    params: Params,
    obs: Obs,
    actions: jax.Array,
    rng: jax.Array,
    action_valid: jax.Array | None = None,
) -> tuple[jax.Array, Info]:
    """Conditional flow-matching loss E ||v(s, x_t, t) - (a - x0)||^2 with x_t = (1 - t) x0 + t a.

    actions [B, H, A]; action_valid [B, H] (None = all valid). The squared error is averaged over A and
    over the valid (b, h) entries, so a batch of short chunks is not down-weighted by its padding.
    Returns (loss, info); gradients flow only into `params`.
    """
    b = actions.shape[0]
    x_rng, t_rng = jax.random.split(rng)
    x0 = jax.random.normal(x_rng, actions.shape, actions.dtype)
    t = jax.random.uniform(t_rng, (b,), actions.dtype)
    tb = t[:, None, None]
    x_t = (1.0 - tb) * x0 + tb * actions
    target = actions - x0
    pred = apply_fn(params, obs, x_t, t)
    err = jnp.mean(jnp.square(pred - target), axis=-1)  # [B, H]
    if action_valid is None:
        loss = jnp.mean(err)
        frac = jnp.ones(())
    else:
        w = action_valid.astype(err.dtype)
        loss = jnp.sum(err * w) / jnp.maximum(jnp.sum(w), 1.0)
        frac = jnp.mean(w)
    return loss, {"bc_loss": loss, "bc_valid_frac": frac, "bc_pred_norm": jnp.mean(jnp.abs(pred))}


def euler_sample(velocity: Velocity, obs: Obs, noise: jax.Array, cfg: FlowConfig) -> jax.Array:
    """Integrates dx/dt = v(s, x, t) from x_0 = noise [B, H, A] with K Euler steps, t_i = i/K; clips the result.

    `velocity(obs, x, t)` has its params bound (for QAM's residual field pass v_beta + delta). Runs as a
    `lax.scan`, so K does not grow the compiled program.
    """
    k = cfg.flow_steps
    h = 1.0 / k
    b = noise.shape[0]

    def step(x, i):
        t = jnp.full((b,), i * h, noise.dtype)
        return x + h * velocity(obs, x, t), None

    x, _ = jax.lax.scan(step, noise, jnp.arange(k), unroll=cfg.scan_unroll)
    return jnp.clip(x, cfg.action_low, cfg.action_high)


def sample_actions(
    velocity: Velocity, obs: Obs, rng: jax.Array, batch_size: int, action_shape: tuple[int, int], cfg: FlowConfig
) -> jax.Array:
    """Draws x_0 ~ N(0, I) [B, H, A] and returns the clipped Euler ODE sample [B, H, A]."""
    noise = jax.random.normal(rng, (batch_size, *action_shape))
    return euler_sample(velocity, obs, noise, cfg)
