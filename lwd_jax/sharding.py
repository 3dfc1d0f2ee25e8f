"""Device mesh and shardings for the learner.

Why a module of its own: the update step is jitted once with explicit `in_shardings`/`out_shardings`, so
every array that enters it must have a known placement. Batches split on the `data` axis; parameters are
either replicated (small nets, the CPU default) or split on the `fsdp` axis (large backbones on GPUs),
chosen by config and applied leaf by leaf.

Multi-host: call `maybe_initialize_distributed()` before any other JAX call on every host (it wraps
`jax.distributed.initialize` with the coordinator address, process count and id from `LWD_COORDINATOR`,
`LWD_NUM_PROCESSES`, `LWD_PROCESS_ID`, or from the cluster's own environment with `LWD_COORDINATOR=auto`
(SLURM, Open MPI, Cloud TPU: JAX's own detection); on CPU hosts it selects the gloo collectives). The mesh
then spans `jax.devices()` of all hosts, and each host builds only its own rows of every batch
(`local_batch_size`), which `global_batch` assembles into one global array without any host holding the rest.
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


def maybe_initialize_distributed(env: dict[str, str] | None = None) -> bool:
    """Starts multi-host JAX when the environment asks for it (see the module docstring); returns True if it
    did. Errors name the variable that is missing or malformed."""
    env = dict(os.environ if env is None else env)
    coordinator = env.get("LWD_COORDINATOR", "")
    if not coordinator:
        return False
    if jax.distributed.is_initialized():
        return True
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or env.get("LWD_CPU_COLLECTIVES"):
        # CPU devices of several processes talk through gloo (JAX's CPU collectives); GPUs and TPUs bring theirs
        jax.config.update("jax_cpu_collectives_implementation", env.get("LWD_CPU_COLLECTIVES", "gloo"))
    if coordinator == "auto":  # SLURM, Open MPI, Cloud TPU...: JAX reads the cluster's own variables
        jax.distributed.initialize()
        return True
    try:
        num, pid = int(env["LWD_NUM_PROCESSES"]), int(env["LWD_PROCESS_ID"])
    except KeyError as e:
        raise ValueError(f"multi-host: LWD_COORDINATOR is set but {e.args[0]} is not") from None
    except ValueError:
        raise ValueError("multi-host: LWD_NUM_PROCESSES and LWD_PROCESS_ID must be integers, got "
                         f"{env.get('LWD_NUM_PROCESSES')!r}, {env.get('LWD_PROCESS_ID')!r}") from None
    if not 0 <= pid < num:
        raise ValueError(f"multi-host: LWD_PROCESS_ID {pid} is not in [0, LWD_NUM_PROCESSES={num})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    return True


def local_batch_size(global_batch: int) -> int:
    """Rows of each global batch this host builds (the global batch split evenly over the processes)."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"config.batch_size: {global_batch} must divide over {n} processes")
    return global_batch // n


def global_batch(mesh: Mesh, local: Any, stacked: bool = False) -> Any:
    """This host's rows of a batch -> the global batch on `mesh` (batch axis 0, or 1 with `stacked`), each
    host contributing its rows in process order. One process: returned as is (jit places it, as always)."""
    if jax.process_count() == 1:
        return local
    sharding = batch_sharding(mesh, stacked)
    axis = 1 if stacked else 0
    n = jax.process_count()

    def one(x: Any) -> jax.Array:
        x = np.asarray(x)
        shape = list(x.shape)
        shape[axis] *= n
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree.map(one, local)


def any_process(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over every process (one tiny collective; one process: the flags as they are).

    Why: decisions that change which computations run next (stop on a signal, a wall-clock budget spent)
    are taken on each host's own clock and signals; acted on alone, one host would leave a collective the
    others still wait in. Every host calls this at the same point and all act on the same answer."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils

    got = np.asarray(multihost_utils.process_allgather(np.asarray(flags, dtype=np.int32)))
    return tuple(bool(x) for x in got.reshape(-1, len(flags)).any(axis=0))


def host_local(tree: Any) -> Any:
    """A pytree of (global) arrays -> numpy on this host: fully replicated arrays (params, metrics) read from
    this host's own copy, so no process needs another's memory; a process-local array is fetched as usual."""

    def one(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"host_local: an array of shape {x.shape} is split over hosts (sharding {x.sharding})")
            return np.asarray(x.addressable_data(0))
        return jax.device_get(x)

    return jax.tree.map(one, tree)


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
