"""One process of the multi-process learner test (tests/test_multihost.py), run as `python -m tests.multihost_worker`.

With --processes N > 1 it joins a JAX multi-process run through `lwd_jax.sharding.maybe_initialize_distributed`
(the LWD_* variables, gloo CPU collectives), builds only its own rows of every batch, and runs the agent's BC
and full offline updates on the global batch they form; then every process saves one orbax
checkpoint together. With --processes 1 it runs the same updates on the whole batch, and with --restore DIR it
also restores another run's checkpoint into its own (one-device) layout. Process 0 writes the params it ends
with (and the restored ones) to --out as .npz, for the test to compare.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

GLOBAL_BATCH = 8
UPDATES_PER_CALL = 2


def flat(tree) -> dict[str, np.ndarray]:
    import jax

    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--processes", type=int, required=True)
    p.add_argument("--process-id", type=int, default=0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--restore", default="")
    args = p.parse_args()
    env = {}
    if args.processes > 1:
        env = {"LWD_COORDINATOR": f"127.0.0.1:{args.port}", "LWD_NUM_PROCESSES": str(args.processes),
               "LWD_PROCESS_ID": str(args.process_id)}

    from lwd_jax import sharding as shd

    shd.maybe_initialize_distributed(env)

    import jax

    from experiments.configs.multitask import get_config
    from lwd_jax.agent import LWDAgent
    from lwd_jax.fake import random_batches
    from lwd_jax.learner.checkpoint import Checkpointer

    assert jax.process_count() == args.processes, (jax.process_count(), args.processes)
    cfg = get_config("smoke").agent
    agent = LWDAgent(cfg, shd.make_mesh())
    whole = random_batches(seed=3, num=UPDATES_PER_CALL, batch=GLOBAL_BATCH)
    rows = shd.local_batch_size(GLOBAL_BATCH)
    mine = jax.tree.map(lambda x: x[:, args.process_id * rows:(args.process_id + 1) * rows], whole)
    example = jax.tree.map(lambda x: x[0, :2], whole["observations"])
    state = agent.init(0, example)
    state, m1 = agent.pretrain_update(state, mine)
    state, m2 = agent.update(state, mine, stage="offline")  # (critic-only updates: the end-to-end test's warm-up)
    metrics = {**shd.host_local(m1), **shd.host_local(m2)}
    os.makedirs(args.out, exist_ok=True)
    ckpt = Checkpointer(os.path.join(args.out, "checkpoints"))
    ckpt.save(int(shd.host_local(state.step)), state, {"processes": args.processes}, force=True)
    ckpt.close()
    if jax.process_index() == 0:
        np.savez(os.path.join(args.out, "params.npz"), **flat(shd.host_local(state.params)),
                 **{f"metric/{k}": np.asarray(v) for k, v in metrics.items()})
    if args.restore:
        other = Checkpointer(os.path.join(args.restore, "checkpoints"))
        restored, meta, step = other.restore(agent.abstract_state(example))
        other.close()
        np.savez(os.path.join(args.out, "restored.npz"), **flat(shd.host_local(restored.params)),
                 step=np.asarray(step), processes=np.asarray(meta["processes"]))
    if args.processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
