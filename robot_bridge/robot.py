"""The `Robot` interface the bridge daemon drives (the simulated backend is `robot_bridge/sim_robot.py`).

Why an interface this small: the daemon's job (run the policy at a fixed rate, let a human take over, record,
spool, upload, swap params) is the same for every robot; what differs is how to reset a scene, send one
action and read one observation, and how a human's command reaches the robot. Those four things are the
whole adapter. Everything a backend returns is already in the fleet's schema (fleet_api/schema.py):
`state` zero-padded to STATE_DIM with `state_mask`, `proprio` [PROPRIO_DIM], optional `image`, 5-d actions.

Adapter point for real hardware (e.g. an AgiBot G1 through its vendor SDK): subclass `Robot` in your own
module and name it in the robot's config file (`backend = "my_pkg.my_module:MyRobot"`). The daemon calls

    reset(task, seed)      -> (obs, info)   move to the task's start; info has "instruction", "subgoals"
    step(action)           -> (obs, reward, terminated, truncated, info)   one control tick, non-blocking
    human_action(obs)      -> action | None  the teleoperator's command when a human holds control
    close()

`info["subgoals"]` is the number of the task's sub-goals reached so far (0 if the robot cannot tell; then the
step-wise score degrades to success only). Pacing is the daemon's: `step` should send the command and return
the newest observation without sleeping. A real robot's `human_action` reads its teleop device (a leader arm,
a spacemouse) and returns None while the operator has not pressed the takeover pedal.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any

import numpy as np

Obs = dict[str, np.ndarray]
StepOut = tuple[Obs, float, bool, bool, dict[str, Any]]
# "sim" names the simulated UR5e; imported by name so a robot with real hardware never loads MuJoCo.
SIM_BACKEND = "robot_bridge.sim_robot:SimRobot"


class Robot(abc.ABC):
    """One robot as the bridge daemon sees it (see the module docstring for the contract)."""

    #: The robot's nominal control rate in Hz: what `cycle time` in seconds is measured against.
    control_hz: float = 20.0

    @abc.abstractmethod
    def reset(self, task: str, seed: int) -> tuple[Obs, dict[str, Any]]:
        """Brings the robot to the start of `task`; returns the first observation and info."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> StepOut:
        """Sends one action [ACTION_DIM]; returns obs, reward, terminated (success), truncated (time-out), info."""

    def human_action(self, obs: Obs) -> np.ndarray | None:
        """The human's action when they hold control this tick, else None (default: no human attached)."""
        return None

    def task_info(self, task: str) -> dict[str, Any]:
        """Static facts of a task this robot can run: `num_subgoals` and `step_budget`."""
        raise NotImplementedError

    def instructions(self, task: str) -> list[str]:
        """Wordings the robot may give for `task` (embedded ahead of time; default: none known)."""
        return []

    def close(self) -> None:  # noqa: B027 (optional hook: most backends have nothing to release)
        """Releases hardware or simulator resources."""


def load_backend(spec: str, **kwargs: Any) -> Robot:
    """`"sim"` -> SimRobot(**kwargs); `"package.module:ClassName"` -> that Robot subclass (real hardware)."""
    if spec == "sim":
        spec = SIM_BACKEND
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"field 'backend': expected 'sim' or 'package.module:ClassName', got {spec!r}")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Robot)):
        raise ValueError(f"field 'backend': {spec!r} is not a robot_bridge.robot.Robot subclass")
    return cls(**kwargs)
