"""LayerNorm MLP: the one building block of every head (encoder trunk, flow field, critics, value).

Why LayerNorm: the QAM/FQL references use LayerNorm MLPs for critics and flows; it keeps critic values
bounded under bootstrapping and lets one learning rate serve heads whose inputs have very different scales
(state, language embedding, noisy action, time features).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": nn.gelu,
    "relu": nn.relu,
    "swish": nn.swish,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name`; raises naming the known ones (config errors fail at build time)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"mlp: activation expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


class MLP(nn.Module):
    """x [..., D_in] -> [..., out_dim] (or [..., hidden_dims[-1]] when out_dim is None).

    Each hidden layer is Dense -> LayerNorm (optional) -> activation. The output layer is a plain Dense,
    so heads can produce unbounded velocities / values; `activate_final` makes the MLP a feature trunk.
    `final_init_scale` scales the output layer's initial weights: 0 gives an exactly-zero initial output,
    used by residual fields that must start equal to the base policy.
    """

    hidden_dims: Sequence[int] = (256, 256)
    out_dim: int | None = None
    activation: str = "gelu"
    layer_norm: bool = True
    activate_final: bool = False
    final_init_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        for i, width in enumerate(self.hidden_dims):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            if self.layer_norm:
                x = nn.LayerNorm(name=f"ln_{i}")(x)
            x = act(x)
        if self.out_dim is not None:
            if self.final_init_scale > 0:  # lecun-normal, scaled (scale 1 = flax's default Dense init)
                init = nn.initializers.variance_scaling(self.final_init_scale**2, "fan_in", "truncated_normal")
            else:
                init = nn.initializers.zeros
            x = nn.Dense(self.out_dim, kernel_init=init, name="out")(x)
            if self.activate_final:
                if self.layer_norm:
                    x = nn.LayerNorm(name="ln_out")(x)
                x = act(x)
        return x
