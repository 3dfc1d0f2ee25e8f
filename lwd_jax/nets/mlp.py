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
    def __call__(self, x: jax.Array, first_pre: jax.Array | None = None) -> jax.Array:
        """`first_pre`: the first layer's product with the input's leading features, computed by the caller
        (`leading_product`); `x` is then only the trailing features. Same params, same function: a caller that
        evaluates the net many times on one set of leading features (a flow's K steps on one observation)
        multiplies them by their slice of the first kernel once instead of K times."""
        act = get_activation(self.activation)
        for i, width in enumerate(self.hidden_dims):
            if i == 0 and first_pre is not None:
                p = self.variables["params"]["dense_0"]  # (created by the plain call at init)
                x = first_pre + x @ p["kernel"][p["kernel"].shape[0] - x.shape[-1]:] + p["bias"]
            else:
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


def leading_product(mlp_params: dict, lead: jax.Array) -> jax.Array:
    """lead [..., D] @ the first kernel's first D rows: `MLP(first_pre=...)`'s precomputed part (no bias)."""
    return lead @ mlp_params["dense_0"]["kernel"][: lead.shape[-1]]
