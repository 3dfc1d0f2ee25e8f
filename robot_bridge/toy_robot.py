"""Robots that are not the simulator: a point mass reaching a target (`backend = "robot_bridge.toy_robot:PointReach"`),
and a second embodiment, a 7-d reacher whose tasks come from a task file (`robot_bridge.toy_robot:Reach7`).

Why it exists: it is the smallest honest stand-in for "your own robot". It implements the `Robot` interface
with nothing but numpy, so a bridge install without MuJoCo, TensorFlow or the text encoder can run a full
daemon against a learner (tests/test_bridge_install.py), and it shows a hardware adapter's whole shape in
sixty lines. Dynamics: position p in [-1, 1]^3, action[:3] a velocity command (the other two action
dimensions are ignored), p += 0.1 * action[:3]; success when |p - target| < 0.1 (one sub-goal: reached).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleet_api.embodiment import Embodiment
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


# ------------------------------------------------------------------------------------------------------------
# A second embodiment: 7-d actions, tasks from a task file.
# ------------------------------------------------------------------------------------------------------------

# A 7-d body (think joint-velocity control of a 7-joint arm): state [q, target] (14 of 16), proprio [q] (7 of
# 8), actions in [-1, 1]^7, chunks of 4 at 10 Hz. experiments/robots/reach7.toml is the same spec as a file
# (the learner's config.embodiment); a test checks the two agree.
REACH7 = Embodiment(name="toy_reach_7d", action_dim=7, state_dim=16, proprio_dim=8, action_low=(-1.0,) * 7,
                    action_high=(1.0,) * 7, control_hz=10.0, chunk_len=4)
REACH7_STEP = 0.1  # q moves by this times the action per tick
REACH7_TOL = 0.1  # success: every coordinate within this of the target


class Reach7(Robot):
    """A 7-d point reaching a target: a robot that is neither the simulator nor 5-d, whose tasks come from a
    task file (the daemon's `task_file`: their wordings, step budgets and sub-goals). With two sub-goals the
    first is "halfway" (the distance to the target halved), the last success."""

    embodiment = REACH7
    control_hz = REACH7.control_hz

    def __init__(self) -> None:
        self._q = np.zeros(7, np.float32)
        self._target = np.zeros(7, np.float32)
        self._start_dist = 1.0
        self._budget, self._num_subgoals, self._reached, self._t = 1, 1, 0, 0

    def _obs(self) -> Obs:
        e = self.embodiment
        state, mask, proprio = np.zeros(e.state_dim, np.float32), np.zeros(e.state_dim, bool), np.zeros(e.proprio_dim, np.float32)
        state[:7], state[7:14], mask[:14], proprio[:7] = self._q, self._target, True, self._q
        return {"state": state, "state_mask": mask, "proprio": proprio}

    def reset(self, task: str, seed: int) -> tuple[Obs, dict[str, Any]]:
        info = self.task_info(task)  # ValueError naming an unknown task
        rng = np.random.default_rng(seed)
        self._q = rng.uniform(-0.5, 0.5, 7).astype(np.float32)
        self._target = rng.uniform(-0.5, 0.5, 7).astype(np.float32)
        self._start_dist = float(np.abs(self._q - self._target).max())
        self._budget, self._num_subgoals, self._reached, self._t = info["step_budget"], info["num_subgoals"], 0, 0
        wordings = self.instructions(task)
        return self._obs(), {"instruction": wordings[seed % len(wordings)], "subgoals": 0}

    def step(self, action: np.ndarray) -> StepOut:
        a = np.asarray(action, np.float32)
        self._q = np.clip(self._q + REACH7_STEP * a, -1.0, 1.0).astype(np.float32)
        self._t += 1
        dist = float(np.abs(self._q - self._target).max())
        success = dist < REACH7_TOL
        if self._num_subgoals > 1 and dist <= 0.5 * self._start_dist:
            self._reached = max(self._reached, 1)
        if success:
            self._reached = self._num_subgoals
        truncated = self._t >= self._budget and not success
        return self._obs(), float(success), success, truncated, {"subgoals": self._reached}


def reach7_expert(obs: Obs, rng: np.random.Generator, noise: float = 0.0) -> np.ndarray:
    """The scripted expert of `Reach7`: a chunk [chunk_len, 7] heading straight for the target (plus Gaussian
    action noise), from the observation alone; what the second embodiment's offline dataset is made of."""
    q, target = obs["state"][:7], obs["state"][7:14]
    chunk, out = q.copy(), []
    for _ in range(REACH7.chunk_len):
        a = np.clip((target - chunk) / REACH7_STEP + noise * rng.standard_normal(7), -1.0, 1.0).astype(np.float32)
        chunk = np.clip(chunk + REACH7_STEP * a, -1.0, 1.0)
        out.append(a)
    return np.stack(out)
