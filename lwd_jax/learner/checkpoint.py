"""Checkpoints: orbax `CheckpointManager` over the agent pytree plus a JSON side record.

Why two items: the agent (params, optimizer states, RNG key, step) is a pytree of arrays that orbax
saves and restores with the shardings of a given abstract target, so a resumed learner lands on the same
mesh layout; the rest (param version, replay cursors, stage, config) is small plain data that a person
should be able to read with `cat`.

Resume is exact: restoring into `abstract_agent` (from `jax.eval_shape` of the init function, with its
shardings) gives bit-identical arrays, and the data cursor lets the loop continue its sampling stream.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from lwd_jax.agent import LWDAgent

AGENT = "agent"
META = "meta"


class Checkpointer:
    """Saves and restores (agent pytree, metadata dict) by step under `directory`."""

    def __init__(self, directory: str, max_to_keep: int = 3, save_interval_steps: int = 1):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True
        )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=(AGENT, META))

    def save(self, step: int, agent: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Saves asynchronously where orbax can; `wait()` before reading the files or exiting."""
        return self._mngr.save(
            int(step),
            args=ocp.args.Composite(**{AGENT: ocp.args.StandardSave(agent), META: ocp.args.JsonSave(meta)}),
            force=force,
        )

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mngr.all_steps())

    def restore(self, abstract_agent: Any, step: int | None = None) -> tuple[Any, dict[str, Any], int]:
        """Restores into the structure, dtypes and shardings of `abstract_agent` (arrays or ShapeDtypeStructs)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint under {self.directory}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_agent)
        out = self._mngr.restore(
            step, args=ocp.args.Composite(**{AGENT: ocp.args.StandardRestore(target), META: ocp.args.JsonRestore()})
        )
        return out[AGENT], dict(out[META]), int(step)

    def meta(self, step: int | None = None) -> dict[str, Any]:
        """The metadata saved with `step` (latest by default) without restoring the arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint under {self.directory}")
        out = self._mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))
        return dict(out[META])

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def init_from_pretrained(src_workdir: str, agent: LWDAgent, state, example: dict, pretrain_steps: int):
    """`state` with the BC flow (base, its frozen reference, the policy copied from it, the base's optimizer)
    and the step counter of `src_workdir`'s latest checkpoint, which must be a finished BC pretrain.

    Why only the BC flow: critics and value heads differ between methods (scalar vs distributional), but
    every method starts from the same pretrained policy, exactly as every method in the paper starts from SFT.
    """
    src = Checkpointer(os.path.join(src_workdir, "checkpoints"))
    step = src.latest_step()
    if step is None:
        raise ValueError(f"config.init_from: no checkpoint in {src_workdir}/checkpoints")
    src_cfg = ml_collections.ConfigDict(json.loads(src.meta(step)["config"]))
    src_agent = LWDAgent(src_cfg.agent, agent.mesh)
    src_state, meta, step = src.restore(src_agent.abstract_state(example), step)
    src.close()
    if meta.get("phase") != "pretrain" or step != pretrain_steps:
        raise ValueError(f"config.init_from: {src_workdir} is at step {step} ({meta.get('phase')}); expected the end of "
                         f"BC pretraining at step {pretrain_steps}")
    take = ("base", "base_ref", "actor")
    for k in take:
        want, got = jax.tree.map(jnp.shape, state.params[k]), jax.tree.map(jnp.shape, src_state.params[k])
        if want != got:
            raise ValueError(f"config.init_from: params['{k}'] of {src_workdir} have other shapes than this config's nets")
    params = dict(state.params, **{k: src_state.params[k] for k in take})
    opt_state = dict(state.opt_state, base=src_state.opt_state["base"])
    return state.replace(step=src_state.step, params=params, opt_state=opt_state)
