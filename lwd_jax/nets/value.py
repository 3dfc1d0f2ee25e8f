"""State-value heads: DIVL's categorical V_psi(s) (logits over C atoms) and IQL's scalar V(s) (ablation)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from lwd_jax.nets.mlp import MLP


class CategoricalValue(nn.Module):
    """obs_feat [B, D] -> logits [B, C] over the C evenly spaced atoms of `algos.divl.atom_support`.

    Why logits only: the support (v_min, v_max, C) belongs to the loss and the quantile read-out, so one
    config field defines it; the net only has to know C.
    """

    num_atoms: int = 201  # C (paper: 201 atoms on [-0.1, 1.1])
    hidden_dims: Sequence[int] = (256, 256, 256)
    activation: str = "gelu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs_feat: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, self.num_atoms, self.activation, self.layer_norm, name="mlp")(obs_feat)


class ScalarValue(nn.Module):
    """obs_feat [B, D] -> V [B] (the expectile-regression value of IQL, kept as DIVL's ablation)."""

    hidden_dims: Sequence[int] = (256, 256, 256)
    activation: str = "gelu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, obs_feat: jax.Array) -> jax.Array:
        return MLP(self.hidden_dims, 1, self.activation, self.layer_norm, name="mlp")(obs_feat)[..., 0]
