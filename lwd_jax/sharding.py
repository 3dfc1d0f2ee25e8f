"""Device mesh and shardings for the learner.

Why a module of its own: the update step is jitted once with explicit `in_shardings`/`out_shardings`, so
every array that enters it must have a known placement. Batches split on the `data` axis; parameters are
either replicated (small nets, the CPU default) or split on the `fsdp` axis (large backbones on GPUs),
chosen by config and applied leaf by leaf.

Multi-host: call `maybe_initialize_distributed()` before any other JAX call on every host (it wraps
`jax.distributed.initialize`, which reads the coordinator address, process count and id from the
cluster environment or from `LWD_COORDINATOR`, `LWD_NUM_PROCESSES`, `LWD_PROCESS_ID`); the mesh then
spans `jax.devices()` of all hosts and each host feeds its own slice of the global batch.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def maybe_initialize_distributed() -> bool:
    """Starts multi-host JAX when the environment asks for it; returns True if it did."""
    coordinator = os.environ.get("LWD_COORDINATOR")
    if not coordinator:
        return False
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["LWD_NUM_PROCESSES"]),
        process_id=int(os.environ["LWD_PROCESS_ID"]),
    )
    return True


def make_mesh(data: int = -1, fsdp: int = 1, devices: list[Any] | None = None) -> Mesh:
    """A 2-D mesh (`data`, `fsdp`). `data=-1` takes all devices left after `fsdp`."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"mesh: fsdp={fsdp} must divide the device count {n}")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ValueError(f"mesh: data*fsdp = {data}*{fsdp} != device count {n}")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA_AXIS, FSDP_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (params of small nets, scalars, RNG keys)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, stacked: bool = False) -> NamedSharding:
    """The batch axis split over `data` (and over `fsdp` too, so FSDP devices see distinct data); with
    `stacked`, leaves carry a leading [U] axis of scanned updates first, which is not split."""
    return NamedSharding(mesh, P(None, (DATA_AXIS, FSDP_AXIS)) if stacked else P((DATA_AXIS, FSDP_AXIS)))


def param_sharding(mesh: Mesh, leaf: Any, fsdp_min_size: int) -> NamedSharding:
    """FSDP for large leaves: split the largest axis divisible by the fsdp size; replicate the rest.

    Small leaves (biases, LayerNorm scales, anything under `fsdp_min_size` elements) stay replicated:
    splitting them costs more in collectives than it saves in memory.
    """
    n = mesh.shape[FSDP_AXIS]
    shape = getattr(leaf, "shape", ())
    if n == 1 or int(np.prod(shape, dtype=np.int64)) < fsdp_min_size:
        return replicated(mesh)
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[axis] % n == 0:
            spec = [None] * len(shape)
            spec[axis] = FSDP_AXIS
            return NamedSharding(mesh, P(*spec))
    return replicated(mesh)


def tree_param_shardings(mesh: Mesh, tree: Any, fsdp_min_size: int = 2**18) -> Any:
    """Per-leaf shardings for a pytree of params/optimizer state (abstract shapes are fine)."""
    return jax.tree.map(lambda x: param_sharding(mesh, x, fsdp_min_size), tree)


def tree_batch_shardings(mesh: Mesh, batch: Any, stacked: bool = False) -> Any:
    """Batch-axis shardings for every leaf of a batch pytree (see `batch_sharding`)."""
    return jax.tree.map(lambda _: batch_sharding(mesh, stacked), batch)
