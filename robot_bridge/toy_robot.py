"""A robot that is not the simulator: a point mass reaching a target (`backend = "robot_bridge.toy_robot:PointReach"`).

Why it exists: it is the smallest honest stand-in for "your own robot". It implements the `Robot` interface
with nothing but numpy, so a bridge install without MuJoCo, TensorFlow or the text encoder can run a full
daemon against a learner (tests/test_bridge_install.py), and it shows a hardware adapter's whole shape in
sixty lines. Dynamics: position p in [-1, 1]^3, action[:3] a velocity command (the other two action
dimensions are ignored), p += 0.1 * action[:3]; success when |p - target| < 0.1 (one sub-goal: reached).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleet_api.schema import PROPRIO_DIM, STATE_DIM
from robot_bridge.robot import Obs, Robot, StepOut

TASK = "point_reach"
INSTRUCTIONS = ("move the point to the target", "reach the target with the point")
STEP_BUDGET = 60


class PointReach(Robot):
    """A 3-d point mass; task "point_reach" only. State [p, target] (6 of STATE_DIM), proprio [p]."""

    control_hz = 20.0

    def __init__(self) -> None:
        self._p = np.zeros(3, np.float32)
        self._target = np.zeros(3, np.float32)
        self._t = 0

    def _check(self, task: str) -> None:
        if task != TASK:
            raise ValueError(f"PointReach: unknown task {task!r}; this robot runs only {TASK!r}")

    def task_info(self, task: str) -> dict[str, Any]:
        self._check(task)
        return {"num_subgoals": 1, "step_budget": STEP_BUDGET}

    def instructions(self, task: str) -> list[str]:
        self._check(task)
        return list(INSTRUCTIONS)

    def _obs(self) -> Obs:
        state = np.zeros(STATE_DIM, np.float32)
        state[:3], state[3:6] = self._p, self._target
        mask = np.zeros(STATE_DIM, bool)
        mask[:6] = True
        proprio = np.zeros(PROPRIO_DIM, np.float32)
        proprio[:3] = self._p
        return {"state": state, "state_mask": mask, "proprio": proprio}

    def reset(self, task: str, seed: int) -> tuple[Obs, dict[str, Any]]:
        self._check(task)
        rng = np.random.default_rng(seed)
        self._p = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
        self._target = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
        self._t = 0
        return self._obs(), {"instruction": INSTRUCTIONS[seed % len(INSTRUCTIONS)], "subgoals": 0}

    def step(self, action: np.ndarray) -> StepOut:
        a = np.asarray(action, np.float32)
        self._p = np.clip(self._p + 0.1 * a[:3], -1.0, 1.0).astype(np.float32)
        self._t += 1
        reached = bool(np.linalg.norm(self._p - self._target) < 0.1)
        return self._obs(), float(reached), reached, self._t >= STEP_BUDGET and not reached, {"subgoals": int(reached)}
