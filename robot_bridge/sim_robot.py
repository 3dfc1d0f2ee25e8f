"""The simulated robot backend (`backend = "sim"`): an OGBench manipspace UR5e with an optional simulated
teleoperator at its side, behind the same `Robot` interface a real robot implements."""

from __future__ import annotations

from typing import Any

import numpy as np

from lwd_jax.sim.env import SimEnv
from lwd_jax.sim.tasks import TASKS, get_task
from lwd_jax.sim.teleop import TeleopConfig, Teleoperator
from robot_bridge.robot import Obs, Robot, StepOut


class SimRobot(Robot):
    """A simulated UR5e (OGBench manipspace) with an optional simulated teleoperator at its side.

    One MuJoCo scene is built per backend the robot has run (cube, scene, puzzle) and reused across episodes,
    since building a scene costs about as much as a short episode.
    """

    def __init__(self, *, teleop: bool = False, teleop_config: Any = None, tasks: list[str] | None = None,
                 render: bool = False):
        unknown = [t for t in tasks or [] if t not in TASKS]
        if unknown:
            raise ValueError(f"field 'tasks': unknown task(s) {unknown} (known: {sorted(TASKS)})")
        self._teleop_on = teleop
        self._render = render  # camera images in every observation (needs MUJOCO_GL=egl or osmesa)
        self._teleop_config = teleop_config
        self._envs: dict[str, Any] = {}
        self._env: Any = None
        self._human: Any = None

    def task_info(self, task: str) -> dict[str, Any]:
        t = get_task(task)
        return {"num_subgoals": t.num_subgoals, "step_budget": t.step_budget}

    def instructions(self, task: str) -> list[str]:
        return list(get_task(task).instructions)

    def reset(self, task: str, seed: int) -> tuple[Obs, dict[str, Any]]:
        t = get_task(task)
        env = self._envs.get(t.backend)
        if env is None:
            env = self._envs[t.backend] = SimEnv(t, render=self._render)
        else:
            env.set_task(t)
        self._env = env
        obs, info = env.reset(seed=seed)
        self._human = Teleoperator(env, self._teleop_config or TeleopConfig(), seed) if self._teleop_on else None
        return obs, info

    def step(self, action: np.ndarray) -> StepOut:
        if self._env is None:
            raise RuntimeError("SimRobot.step() before reset()")
        return self._env.step(action)

    def human_action(self, obs: Obs) -> np.ndarray | None:
        return self._human.select(obs) if self._human is not None else None

    def close(self) -> None:
        self._envs.clear()
        self._env = self._human = None
