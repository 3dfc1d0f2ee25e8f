"""Critic ensemble Q_m(obs_feat, a) -> [M, B]: M independent LayerNorm MLPs on (obs_feat, flattened chunk).

Why an ensemble built with `nn.vmap`: the M heads are stacked on a leading parameter axis, so one batched
matmul evaluates all of them (fast on CPU and GPU), the parameter tree stays one array per layer, and M is a
config number (DIVL: 2 heads with clipped-double-Q min; the QAM reference: 2 to 10 with mean - rho * std).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lwd_jax.nets.mlp import MLP


class _QHead(nn.Module):
    hidden_dims: Sequence[int]
    activation: str
    layer_norm: bool

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, self.activation, self.layer_norm, name="mlp")(h)[..., 0]


class CriticEnsemble(nn.Module):
    """(obs_feat [B, D], actions [B, H, A]) -> Q [M, B]; each member has its own parameters."""

    num_critics: int = 2  # M
    hidden_dims: Sequence[int] = (256, 256, 256)
    activation: str = "gelu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs_feat: jax.Array, actions: jax.Array) -> jax.Array:
        b = actions.shape[0]
        h = jnp.concatenate([obs_feat, actions.reshape(b, -1).astype(obs_feat.dtype)], axis=-1)
        heads = nn.vmap(
            _QHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        return heads(self.hidden_dims, self.activation, self.layer_norm, name="heads")(h)
