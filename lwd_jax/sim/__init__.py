"""Simulated robot suite of the fleet: OGBench manipspace tasks, scripted experts, a simulated teleoperator.

    from lwd_jax.sim import make_env, record_episode, ExpertConfig, TeleopConfig, task_names
    ep = record_episode("scene_put_cube_in_drawer", "expert", seed=0).episode   # a validated schema.Episode
    ep = record_episode("cube_pick_place", my_policy, seed=1, teleop=TeleopConfig()).episode

Modules: `tasks` (registry), `env` (observation/action contract), `skills` (OGBench oracles as sub-skills),
`experts` (task-level experts with noise/failure knobs), `teleop` (the simulated human), `recorder`
(episode recorder), `generate` (the offline dataset, `make data`), `lights_out` (puzzle solver), `measure_experts` (the README's expert table).
"""

import os

if not os.environ.get("DISPLAY"):
    # Set before anything imports mujoco. Without a display OGBench's `mujoco.viewer` import warns about GLFW,
    # and defaulting to EGL is worse: a process that has loaded MuJoCo's EGL backend segfaults when it later
    # imports TensorFlow (measured; the RLDS writer does). Rendering is optional and off by default; to render
    # headless, set MUJOCO_GL=egl (GPU machines) before importing lwd_jax.sim.
    os.environ.setdefault("MUJOCO_GL", "disable")

from lwd_jax.sim.env import PROPRIO_LAYOUT, SimEnv, make_env  # noqa: E402
from lwd_jax.sim.experts import ExpertConfig, ScriptedExpert, make_expert  # noqa: E402
from lwd_jax.sim.recorder import EXPERT, Recording, record_episode  # noqa: E402
from lwd_jax.sim.tasks import TASKS, Task, get_task, task_names  # noqa: E402
from lwd_jax.sim.teleop import TeleopConfig, Teleoperator  # noqa: E402

__all__ = [
    "EXPERT",
    "PROPRIO_LAYOUT",
    "TASKS",
    "ExpertConfig",
    "Recording",
    "ScriptedExpert",
    "SimEnv",
    "Task",
    "TeleopConfig",
    "Teleoperator",
    "get_task",
    "make_env",
    "make_expert",
    "record_episode",
    "task_names",
]
