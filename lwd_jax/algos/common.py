"""Small helpers shared by the algorithm files: types, EMA targets, masked means, FLOP counting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Params = Any  # a flax parameter pytree
Obs = Any  # an observation pytree with leading batch axis B (a feature array [B, D] or a dict)
Info = dict[str, jax.Array]

# Signatures the algorithm files take (the agent closes its modules' `apply` into these):
#   VelocityApply(params, obs, x [B, H, A], t [B]) -> v [B, H, A]
#   CriticApply(params, obs, actions [B, H, A]) -> Q [M, B]
#   ValueApply(params, obs) -> logits [B, C]  (categorical)  or  V [B]  (scalar / expectile)
VelocityApply = Callable[[Params, Obs, jax.Array, jax.Array], jax.Array]
Velocity = Callable[[Obs, jax.Array, jax.Array], jax.Array]  # params already bound
CriticApply = Callable[[Params, Obs, jax.Array], jax.Array]
QFn = Callable[[Obs, jax.Array], jax.Array]  # params already bound: (obs, actions) -> [M, B]
ValueApply = Callable[[Params, Obs], jax.Array]


def ema_update(params: Params, target_params: Params, rate: float) -> Params:
    """target <- rate * params + (1 - rate) * target (paper/QAM: rate 0.005)."""
    return jax.tree_util.tree_map(lambda p, tp: rate * p + (1.0 - rate) * tp, params, target_params)


def masked_mean(x: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Mean of x [B] (weights [B] in {0, 1} or >= 0; None = plain mean); an all-zero mask gives 0, not NaN."""
    if weights is None:
        return jnp.mean(x)
    w = weights.astype(x.dtype)
    return jnp.sum(x * w) / jnp.maximum(jnp.sum(w), 1.0)


def repeat_obs(obs: Obs, n: int) -> Obs:
    """Every leaf [B, ...] -> [B * n, ...], each row repeated n times in place (row b*n + j is copy j of b)."""
    return jax.tree_util.tree_map(lambda o: jnp.repeat(o, n, axis=0), obs)


def flops_of(fn: Callable, *args, **kwargs) -> float:
    """FLOPs XLA counts for one call of `fn(*args, **kwargs)` (compiled, not run).

    Why XLA's count: it sees the whole fused program (rollout, VJPs, optimizer), which hand counts of MLP
    passes miss. Caveat (measured, jaxlib 0.10.2 CPU): a `lax.scan`/`fori_loop` body is counted ONCE, not
    once per iteration. To count the flow loops of `bc.euler_sample` and `qam` fully, build the function
    with `unroll=True` there (the configs' `scan_unroll` field), which XLA then counts K times.
    """
    compiled = jax.jit(fn).lower(*args, **kwargs).compile()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jaxlib returned one dict per computation
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def flops_per_second(fn: Callable, *args, repeats: int = 5, **kwargs) -> tuple[float, float, float]:
    """(flops per call, seconds per call, achieved FLOP/s) of the jitted `fn`, timed after one warm-up call."""
    flops = flops_of(fn, *args, **kwargs)
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args, **kwargs))
    start = time.perf_counter()
    for _ in range(repeats):
        out = jitted(*args, **kwargs)
    jax.block_until_ready(out)
    sec = (time.perf_counter() - start) / repeats
    return flops, sec, flops / sec
