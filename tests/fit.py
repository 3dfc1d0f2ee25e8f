"""One jitted optimizer loop for the tests that train a small net on a loss whose answer is known."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax


def fit(loss_fn: Callable[[Any, jax.Array], tuple[jax.Array, Any]], params: Any, steps: int,
        tx: optax.GradientTransformation, seed: int) -> tuple[Any, float]:
    """`steps` updates of `tx` on `loss_fn(params, rng) -> (loss, info)`; the key of step i is the i-th split
    of PRNGKey(seed). Returns (params, the last loss)."""
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, rng):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(params, rng)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), opt, loss

    rng = jax.random.PRNGKey(seed)
    loss = float("nan")
    for _ in range(steps):
        rng, sub = jax.random.split(rng)
        params, opt, loss = step(params, opt, sub)
    return params, float(loss)
