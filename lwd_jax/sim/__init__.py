"""Simulated robot suite of the fleet: OGBench manipspace tasks, scripted experts, a simulated teleoperator.

    from lwd_jax.sim import make_env, run_episode, ExpertConfig, TeleopConfig, task_names
    ep = run_episode("scene_put_cube_in_drawer", "expert", seed=0)          # a validated schema.Episode
    ep = run_episode("cube_pick_place", my_policy, seed=1, teleop=TeleopConfig())

Modules: `tasks` (registry), `env` (observation/action contract), `skills` (OGBench oracles as sub-skills),
`experts` (task-level experts with noise/failure knobs), `teleop` (the simulated human), `rollout`
(episode recorder), `lights_out` (puzzle solver), `measure_experts` (the README's expert table).
"""

import os

if not os.environ.get("DISPLAY"):
    # Set before anything imports mujoco. Without a display OGBench's `mujoco.viewer` import warns about GLFW,
    # and defaulting to EGL is worse: a process that has loaded MuJoCo's EGL backend segfaults when it later
    # imports TensorFlow (measured; the RLDS writer does). Rendering is optional and off by default; to render
    # headless, set MUJOCO_GL=egl (GPU machines) before importing lwd_jax.sim.
    os.environ.setdefault("MUJOCO_GL", "disable")

from lwd_jax.sim.env import PROPRIO_LAYOUT  # noqa: E402, SimEnv, make_env
from lwd_jax.sim.experts import ExpertConfig, ScriptedExpert, make_expert  # noqa: E402
from lwd_jax.sim.rollout import EXPERT, RolloutResult, rollout, run_episode  # noqa: E402
from lwd_jax.sim.tasks import TASKS, Task, get_task, task_names  # noqa: E402
from lwd_jax.sim.teleop import TeleopConfig, Teleoperator  # noqa: E402

__all__ = [
    "EXPERT",
    "PROPRIO_LAYOUT",
    "TASKS",
    "ExpertConfig",
    "RolloutResult",
    "ScriptedExpert",
    "SimEnv",
    "Task",
    "TeleopConfig",
    "Teleoperator",
    "get_task",
    "make_env",
    "make_expert",
    "rollout",
    "run_episode",
    "task_names",
]
