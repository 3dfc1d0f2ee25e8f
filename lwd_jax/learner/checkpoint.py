"""Checkpoints: orbax `CheckpointManager` over the agent pytree plus a JSON side record.

Why two items: the agent (params, optimizer states, RNG key, step) is a pytree of arrays that orbax
saves and restores with the shardings of a given abstract target, so a resumed learner lands on the same
mesh layout; the rest (param version, replay cursors, stage, config) is small plain data that a person
should be able to read with `cat`.

Resume is exact: restoring into `abstract_agent` (from `jax.eval_shape` of the init function, with its
shardings) gives bit-identical arrays, and the data cursor lets the loop continue its sampling stream.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

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
