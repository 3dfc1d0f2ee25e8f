"""Times the full LWD update (DIVL + QAM) and BC: default (CPU-sized) and gpu configs; JSON to $OUT or /tmp.

Run from the repo root on a machine with an accelerator: `python experiments/gpu_timing.py`. The numbers in
results/gpu_timing_h100.json came from one NVIDIA H100 (jax 0.11.2)."""
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, ".")
from experiments.configs.multitask import get_config  # noqa: E402
from lwd_jax.agent import LWDAgent  # noqa: E402
from lwd_jax.fake import random_batches, random_obs  # noqa: E402

out = {"devices": [str(d) for d in jax.devices()], "jax": jax.__version__}
for dt in (jnp.float32, jnp.bfloat16):
    a = jnp.ones((8192, 8192), dt)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    r = [f(a) for _ in range(10)]
    r[-1].block_until_ready()
    out[f"matmul_8192_{jnp.dtype(dt).name}_tflops"] = 2 * 8192**3 / ((time.perf_counter() - t) / 10) / 1e12
print(json.dumps(out), flush=True)
for variant, B in (("", 256), ("gpu", 256), ("gpu", 1024)):
    cfg = get_config(variant)
    U = cfg.updates_per_call
    ag = LWDAgent(cfg.agent)
    st = ag.init(0, random_obs(np.random.default_rng(0), 2))
    b = jax.device_put(random_batches(0, U, B))
    t = time.perf_counter()
    st, m = ag.update(st, b)
    jax.block_until_ready(m)
    comp = time.perf_counter() - t
    n = 5
    t = time.perf_counter()
    for _ in range(n):
        st, m = ag.update(st, b)
    jax.block_until_ready(m)
    ups = n * U / (time.perf_counter() - t)
    st2, m = ag.pretrain_update(st, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(n):
        st2, m = ag.pretrain_update(st2, b)
    jax.block_until_ready(m)
    bc = n * U / (time.perf_counter() - t)
    c2 = cfg.agent.copy_and_resolve_references()
    c2.qam.scan_unroll = True
    ag2 = LWDAgent(c2)
    one = jax.tree.map(lambda x: x[0], b)
    st3 = ag2.init(0, random_obs(np.random.default_rng(0), 2))
    ca = jax.jit(functools.partial(ag2._rl_step, stage="offline")).lower(st3, one).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, list) else ca
    gfl = ca["flops"] / 1e9
    out[f"{variant or 'default'}_B{B}"] = dict(
        rl_updates_per_s=ups, samples_per_s=ups * B, bc_updates_per_s=bc, compile_s=comp,
        gflop_per_update=gfl, achieved_tflops=gfl * ups / 1e3,
    )
    print(json.dumps(out), flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_timing.json"), "w"), indent=1)
