"""The public QAM reference's update, timed: run by `experiments/bench_qam_ref.py` in the reference's own venv.

    <ref-venv>/bin/python experiments/qam_ref_child.py --reference-dir DIR [--calls 5 --repeats 5]

Standalone on purpose (standard library at the top, jax inside the functions): the reference's environment has
distrax and TensorFlow Probability but no lwd_jax. Prints one JSON line. The shapes are bench_qam_ref's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any

REFERENCE_URL = "https://github.com/hbin0701/qam"
OB_DIM = 46  # OGBench cube-triple (the reference main.py's default environment): 19 arm + 3 x 9 cube features
HORIZON, ACTION_DIM, BATCH, NUM_CRITICS, FLOW_STEPS = 5, 5, 256, 10, 10


def best_call_s(fn, calls: int, repeats: int) -> float:
    """Seconds per call: best over `repeats` timings of `calls` back-to-back calls (after the first)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn()
        _block(out)
        best = min(best, (time.perf_counter() - t) / calls)
    return best


def _block(tree) -> None:
    import jax

    jax.block_until_ready(tree)


def flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


def reference_child(repo: str, calls: int, repeats: int) -> dict[str, Any]:
    """The reference's `QAMAgent.update` on random batches of its layout (run in the reference's venv)."""
    import jax
    import numpy as np

    sys.path.insert(0, repo)  # its `utils` package; its `agents/__init__` (every agent) is not imported
    spec = importlib.util.spec_from_file_location("qam_reference_agent", os.path.join(repo, "agents", "qam.py"))
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"qam_ref: no agents/qam.py under {repo}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = mod.get_config()
    cfg.horizon_length, cfg.action_chunking = HORIZON, True
    if (cfg.batch_size, cfg.num_qs, cfg.flow_steps) != (BATCH, NUM_CRITICS, FLOW_STEPS):
        raise RuntimeError(f"qam_ref: the reference's defaults changed: batch {cfg.batch_size}, num_qs {cfg.num_qs}, "
                           f"flow_steps {cfg.flow_steps}; update this bench's shapes")
    rng = np.random.default_rng(0)
    agent = mod.QAMAgent.create(0, np.zeros(OB_DIM, np.float32), np.zeros(ACTION_DIM, np.float32), dict(cfg))
    batch = jax.device_put({  # the layout of its Dataset.sample_sequence: [B, H, ...] per step of the chunk
        "observations": rng.normal(size=(BATCH, OB_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (BATCH, HORIZON, ACTION_DIM)).astype(np.float32),
        "next_observations": rng.normal(size=(BATCH, HORIZON, OB_DIM)).astype(np.float32),
        "rewards": (rng.uniform(size=(BATCH, HORIZON)) < 0.2).astype(np.float32),
        "masks": np.ones((BATCH, HORIZON), np.float32),
        "valid": np.ones((BATCH, HORIZON), np.float32),
    })
    holder = {"agent": agent}

    def step():
        holder["agent"], info = holder["agent"].update(batch)
        return info

    t = time.perf_counter()
    _block(step())
    compile_s = time.perf_counter() - t
    sec = best_call_s(step, calls, repeats)
    gflop = flops(jax.jit(type(agent).update).lower(holder["agent"], batch).compile()) / 1e9
    return {"code": f"{REFERENCE_URL} agents/qam.py", "ob_dim": OB_DIM, "compile_s": compile_s,
            "updates_per_s": 1.0 / sec, "gflop_per_update": gflop, "achieved_gflops": gflop / sec}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps(reference_child(args.reference_dir, args.calls, args.repeats)))


if __name__ == "__main__":
    main()
