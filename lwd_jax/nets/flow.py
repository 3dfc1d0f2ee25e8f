"""Flow velocity field v(obs_feat, x, t) for action chunks: the policy's "action expert".

x is an action chunk [B, H, A]; inside the net it is flattened to [B, H*A] so one MLP models the joint
distribution of the whole chunk (the chunk is executed open-loop, so its steps must be coherent).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_jax.nets.mlp import MLP, leading_product


def time_embedding(t: jax.Array, dim: int, max_freq: float) -> jax.Array:
    """t [B] in [0, 1] -> [B, dim + 1]: t itself plus sin/cos at geometrically spaced frequencies.

    Why Fourier features: the velocity of a flow changes fastest near t = 0 and t = 1, and a raw scalar t
    is a weak input next to hundreds of state/action features. `dim = 0` gives the raw t only (FQL's choice).
    """
    t = t.astype(jnp.float32).reshape(-1, 1)
    if dim == 0:
        return t
    if dim % 2:
        raise ValueError(f"time_embedding: dim expected even, got {dim}")
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_freq), dim // 2))
    ang = t * freqs[None, :]
    return jnp.concatenate([t, jnp.sin(ang), jnp.cos(ang)], axis=-1)


class VelocityField(nn.Module):
    """(obs_feat [B, D], x [B, H, A], t [B]) -> velocity [B, H, A].

    `final_init_scale = 0` starts the field at exactly zero: QAM's residual parameterisation
    v_theta = v_beta + delta_theta uses it so the fine-tuned policy starts as the base policy.
    """

    action_horizon: int  # H
    action_dim: int  # A
    hidden_dims: Sequence[int] = (256, 256, 256)
    activation: str = "gelu"
    layer_norm: bool = True
    time_embed_dim: int = 32
    time_max_freq: float = 100.0
    final_init_scale: float = 1.0

    @nn.compact
    def __call__(self, obs_feat: jax.Array, x: jax.Array, t: jax.Array, projected: bool = False) -> jax.Array:
        """`projected=True`: `obs_feat` is `project(obs_feat)` (see there), not the features themselves."""
        b = x.shape[0]
        if x.shape[1:] != (self.action_horizon, self.action_dim):
            raise ValueError(
                f"VelocityField: x expected [B, {self.action_horizon}, {self.action_dim}], got {list(x.shape)}"
            )
        temb = time_embedding(jnp.broadcast_to(t, (b,)), self.time_embed_dim, self.time_max_freq)
        rest = jnp.concatenate([x.reshape(b, -1), temb], axis=-1)
        mlp = MLP(
            self.hidden_dims,
            self.action_horizon * self.action_dim,
            self.activation,
            self.layer_norm,
            final_init_scale=self.final_init_scale,
            name="mlp",
        )
        out = mlp(rest, first_pre=obs_feat) if projected else mlp(jnp.concatenate([obs_feat, rest], axis=-1))
        return out.reshape(b, self.action_horizon, self.action_dim)

    def project(self, obs_feat: jax.Array) -> jax.Array:
        """obs_feat [B, D] -> [B, hidden_dims[0]]: its share of the first layer, for `projected=True` calls.

        Why: QAM evaluates the field at K flow steps (forward, and again in the adjoint's VJPs and the
        regression) on one observation; its features are most of the first layer's input (256 of 314 at
        the suite's size), so multiplying them once per state rather than per step saves that share of the
        first layer's work K-fold, with the same params and the same function (up to float rounding)."""
        return leading_product(self.variables["params"]["mlp"], obs_feat)
