"""Episode jobs for worker processes (data generation): imports neither TensorFlow nor JAX.

Why a module of its own: a spawned worker imports only the module of the function it runs. A worker that
renders holds MuJoCo's EGL context, and a process that has loaded MuJoCo's EGL backend and then imports
TensorFlow segfaults or aborts at exit (measured; lwd_jax/sim/__init__.py). Kept here, the job never pulls in
the RLDS writer; the parent process, which owns the writer, never renders.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from lwd_jax.sim.env import make_env
from lwd_jax.sim.experts import ExpertConfig
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.teleop import TeleopConfig

# The GL backend of processes that render (data-generation workers, simulated robots, evaluation workers):
# EGL, which works headless both on GPUs and, through Mesa's llvmpipe, on CPU-only machines (measured here:
# ~10 ms per 32x32 frame of a trivial scene). LWD_RENDER_GL=osmesa selects OSMesa where EGL is missing.
RENDER_GL_ENV = "LWD_RENDER_GL"

_ENVS: dict[tuple[str, bool], Any] = {}


def render_gl() -> str:
    """The MUJOCO_GL value for a rendering child process."""
    return os.environ.get(RENDER_GL_ENV, "egl")


@contextlib.contextmanager
def children_render(render: bool) -> Iterator[None]:
    """While open, child processes started from here get MUJOCO_GL for rendering (when `render`): this
    process's own MuJoCo backend was fixed at import (headless "disable" by default) and stays so."""
    if not render:
        yield
        return
    old = os.environ.get("MUJOCO_GL")
    os.environ["MUJOCO_GL"] = render_gl()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MUJOCO_GL", None)
        else:
            os.environ["MUJOCO_GL"] = old


def dataset_job(args: tuple[str, str, int, dict, bool]) -> tuple[str, Any]:
    """One offline-dataset episode of `task` by the expert configured for `kind` (envs cached per task);
    with `render`, every observation carries the camera image."""
    task, kind, seed, spec, render = args
    expert = ExpertConfig(
        noise_std=spec["noise_std"], p_drop=spec["p_drop"], p_wrong_order=spec["p_wrong_order"], p_stall=spec["p_stall"]
    )
    teleop = TeleopConfig() if spec["teleop"] else None
    key = (task, render)
    if key not in _ENVS:  # building a MuJoCo scene costs more than a short episode: reuse it
        _ENVS[key] = make_env(task, render=render)
    res = record_episode(task, expert, seed=seed, teleop=teleop, env=_ENVS[key], robot_id=f"datagen-{kind}")
    return kind, res.episode
