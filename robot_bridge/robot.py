"""The `Robot` interface the bridge daemon drives (the simulated backend is `robot_bridge/sim_robot.py`).

Why an interface this small: the daemon's job (run the policy at a fixed rate, let a human take over, record,
spool, upload, swap params) is the same for every robot; what differs is how to reset a scene, send one
action and read one observation, and how a human's command reaches the robot. Those four things are the
whole adapter. Everything a backend returns is already in the fleet's schema (fleet_api/schema.py) for its
body, `embodiment` (fleet_api/embodiment.py; the simulated UR5e by default): `state` zero-padded to its
`state_dim` with `state_mask`, `proprio` [proprio_dim], optional `image`, actions of `action_dim` within its
bounds. A policy made for another body is refused before it drives the robot.

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
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.tasks import TaskSpec

Obs = dict[str, np.ndarray]
StepOut = tuple[Obs, float, bool, bool, dict[str, Any]]
# "sim" names the simulated UR5e; imported by name so a robot with real hardware never loads MuJoCo.
SIM_BACKEND = "robot_bridge.sim_robot:SimRobot"


class Robot(abc.ABC):
    """One robot as the bridge daemon sees it (see the module docstring for the contract)."""

    #: The robot's body: action space and observation widths (its episodes are checked against it).
    embodiment: Embodiment = UR5E
    #: The robot's nominal control rate in Hz: what `cycle time` in seconds is measured against.
    control_hz: float = 20.0
    #: Tasks as data (the daemon's `task_file`, fleet_api/tasks.py): what the default `task_info` and
    #: `instructions` read, so an adapter need not describe its tasks in code.
    task_specs: Mapping[str, TaskSpec] = MappingProxyType({})

    @abc.abstractmethod
    def reset(self, task: str, seed: int) -> tuple[Obs, dict[str, Any]]:
        """Brings the robot to the start of `task`; returns the first observation and info."""

    @abc.abstractmethod
    def step(self, action: np.ndarray) -> StepOut:
        """Sends one action [embodiment.action_dim]; returns obs, reward, terminated (success), truncated
        (time-out), info."""

    def human_action(self, obs: Obs) -> np.ndarray | None:
        """The human's action when they hold control this tick, else None (default: no human attached)."""
        return None

    def task_info(self, task: str) -> dict[str, Any]:
        """Static facts of a task this robot can run: `num_subgoals` and `step_budget` (default: from the task
        file; a ValueError naming the task when it has none)."""
        spec = self.task_specs.get(task)
        if spec is None:
            raise ValueError(f"unknown task {task!r}: this robot's adapter does not describe it and no task file "
                             f"names it (known: {sorted(self.task_specs)})")
        return {"num_subgoals": spec.num_subgoals, "step_budget": spec.step_budget}

    def instructions(self, task: str) -> list[str]:
        """Wordings the robot may give for `task` (embedded ahead of time; default: the task file's, else none)."""
        spec = self.task_specs.get(task)
        return list(spec.instructions) if spec is not None else []

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
