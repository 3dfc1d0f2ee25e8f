"""The task registry of the simulated fleet: one UR5e embodiment, one 5-d action, many tasks.

Why a registry of plain data: a task name is a key in datasets, configs and the wire protocol, so everything
that defines a task — its OGBench scene and fixed init/goal, its instructions, its time-out, its ordered
sub-goals and the expert's plan — lives in one frozen record, looked up by name, and nothing else in the code
special-cases task names.

Goals are fixed per task (OGBench "singletask" style, with OGBench's small reset jitter): the state vector does
not contain the goal, so the language instruction is what tells a multi-task policy which task it is solving.

Sub-goals are *ordered* and *latched* (see `SubgoalTracker`): sub-goal k counts only once sub-goals 0..k-1
were reached, and stays counted even if a later stage undoes its condition (closing a drawer undoes "drawer
open"). The last sub-goal of every task is task success itself, so `subgoals == num_subgoals` iff success;
the step-wise score is `subgoals / num_subgoals`.

Step budgets (time-outs) are about 4-5x the clean expert's mean length (`measure_experts`), rounded up to 50
steps and at least 150: room for a slower learned policy and for teleoperator recoveries, while failed
episodes — which always run to the budget — stay cheap to generate.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fleet_api.tasks import TaskSpec, load_task_file
from lwd_jax.sim import lights_out
from lwd_jax.sim.skills import (
    MoveCube,
    PlanSkill,
    PressButton,
    SlideDrawer,
    SlideWindow,
    SolvePuzzle,
    World,
    button_states,
)

# Backends: the OGBench environment behind a task, and the size of its state vector.
BACKEND_STATE_DIMS = {"cube-single": 28, "cube-double": 37, "scene": 40, "puzzle-3x3": 55}

# Sub-goal thresholds. Success tolerances are OGBench's own (cube 0.04, drawer/window 0.04).
CUBE_SUCCESS_TOL = 0.04
SLIDE_SUCCESS_TOL = 0.04
CUBE_LIFTED_HEIGHT = 0.06  # cube rest height is 0.02; above this it is clearly off the table
SLIDE_MOVED = 0.05  # drawer/window moved at least this far from closed: "started to open"
DRAWER_OPEN_Q, WINDOW_OPEN_Q = -0.16, 0.2
# OGBench's "is the cube inside the drawer" box, relative to the drawer handle's y (scene_env._is_in_drawer).
DRAWER_BOX_X, DRAWER_BOX_Z = (0.21, 0.45), (0.0, 0.15)
DRAWER_BOX_DY = (-0.27, -0.07)


# ------------------------------------------------------------------------------------------------------------
# Sub-goal predicates: small frozen callables over the info dict (picklable and readable in a repr).
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSuccess:
    """The environment's own success flag (all goal conditions hold)."""

    def __call__(self, world: World) -> bool:
        return bool(world.get("success", False))


@dataclasses.dataclass(frozen=True)
class CubeLifted:
    block: int

    def __call__(self, world: World) -> bool:
        return float(world[f"privileged/block_{self.block}_pos"][2]) > CUBE_LIFTED_HEIGHT


@dataclasses.dataclass(frozen=True)
class CubeAt:
    block: int
    target: tuple[float, float, float]

    def __call__(self, world: World) -> bool:
        pos = np.asarray(world[f"privileged/block_{self.block}_pos"])
        return bool(np.linalg.norm(pos - np.asarray(self.target)) <= CUBE_SUCCESS_TOL)


@dataclasses.dataclass(frozen=True)
class CubeInDrawer:
    block: int

    def __call__(self, world: World) -> bool:
        pos = np.asarray(world[f"privileged/block_{self.block}_pos"])
        handle_y = float(world["privileged/drawer_handle_pos"][1])
        lo = np.array([DRAWER_BOX_X[0], handle_y + DRAWER_BOX_DY[0], DRAWER_BOX_Z[0]])
        hi = np.array([DRAWER_BOX_X[1], handle_y + DRAWER_BOX_DY[1], DRAWER_BOX_Z[1]])
        return bool(np.all(lo <= pos) and np.all(pos <= hi))


@dataclasses.dataclass(frozen=True)
class ButtonIs:
    button: int
    state: int

    def __call__(self, world: World) -> bool:
        return int(world[f"privileged/button_{self.button}_state"]) == self.state


@dataclasses.dataclass(frozen=True)
class SlideAt:
    """Drawer or window joint within `tol` of `q` (kind: 'drawer' | 'window')."""

    kind: str
    q: float
    tol: float = SLIDE_SUCCESS_TOL

    def __call__(self, world: World) -> bool:
        return abs(float(world[f"privileged/{self.kind}_pos"][0]) - self.q) <= self.tol


@dataclasses.dataclass(frozen=True)
class SlideMoved:
    """Drawer or window moved at least SLIDE_MOVED away from closed."""

    kind: str

    def __call__(self, world: World) -> bool:
        return abs(float(world[f"privileged/{self.kind}_pos"][0])) >= SLIDE_MOVED


@dataclasses.dataclass(frozen=True)
class PuzzlePresses:
    """At least `done` of the optimal presses from the initial board are done (order-free progress)."""

    init: tuple[int, ...]
    goal: tuple[int, ...]
    done: int
    rows: int = 3
    cols: int = 3

    def __call__(self, world: World) -> bool:
        total = lights_out.presses_remaining(np.asarray(self.init), np.asarray(self.goal), self.rows, self.cols)
        board = button_states(world, self.rows * self.cols)
        left = lights_out.presses_remaining(board, np.asarray(self.goal), self.rows, self.cols)
        return total - left >= self.done


@dataclasses.dataclass(frozen=True)
class Subgoal:
    name: str
    reached: Callable[[World], bool]


@dataclasses.dataclass(frozen=True)
class PlanStep:
    """One step of the expert's plan; `completes` is the sub-goal count once it is done (for resuming)."""

    skill: PlanSkill
    completes: int


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of the suite. `instructions[0]` is canonical, the rest are paraphrases."""

    name: str
    instructions: tuple[str, ...]
    backend: str
    task_info: Mapping[str, Any]  # OGBench `options["task_info"]`: fixed init and goal of the scene
    step_budget: int
    subgoals: tuple[Subgoal, ...]
    plan: tuple[PlanStep, ...]
    is_long: bool

    @property
    def instruction(self) -> str:
        return self.instructions[0]

    @property
    def num_subgoals(self) -> int:
        return len(self.subgoals)

    @property
    def state_dim(self) -> int:
        return BACKEND_STATE_DIMS[self.backend]


class SubgoalTracker:
    """Latched, ordered sub-goal counter of one episode (see the module docstring)."""

    def __init__(self, subgoals: tuple[Subgoal, ...]):
        self._subgoals = subgoals
        self.count = 0

    def reset(self) -> None:
        self.count = 0

    def update(self, world: World) -> int:
        """Advances past every consecutive sub-goal that now holds; success forces the full count."""
        n = len(self._subgoals)
        while self.count < n and self._subgoals[self.count].reached(world):
            self.count += 1
        if world.get("success", False):
            self.count = n
        return self.count


# ------------------------------------------------------------------------------------------------------------
# Task definitions. Image convention for the words: the front camera looks at the robot, +y is "right",
# larger x is "front" (nearer the camera).
# ------------------------------------------------------------------------------------------------------------

_REST_Z = 0.02


def _scene_info(block_xyz, buttons, drawer, window, goal_block_xyz, goal_buttons, goal_drawer, goal_window):
    return dict(
        init=dict(
            block_xyzs=np.array([block_xyz]), button_states=np.array(buttons), drawer_pos=drawer, window_pos=window
        ),
        goal=dict(
            block_xyzs=np.array([goal_block_xyz]),
            button_states=np.array(goal_buttons),
            drawer_pos=goal_drawer,
            window_pos=goal_window,
        ),
    )


# The suite's task file (fleet_api/tasks.py's format): wordings, step budgets and "long" flags live there, as
# for any robot's tasks; the learner and the daemons read the same file through `suite_specs()`.
SUITE_TASK_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "suite_tasks.toml")
_SUITE: dict[str, TaskSpec] = load_task_file(SUITE_TASK_FILE)


def _task(*, name: str, subgoals: tuple[Subgoal, ...], **scene: Any) -> Task:
    """A Task from its scene, sub-goal predicates and plan (code) and its task-file record (data); the sub-goal
    names must be the file's, in its order (a drifted file fails at import, naming the task)."""
    spec = _SUITE.get(name)
    if spec is None:
        raise KeyError(f"{SUITE_TASK_FILE}: no [{name}] table for the simulated task {name!r}")
    names = tuple(g.name for g in subgoals)
    if names != spec.subgoals:
        raise ValueError(f"{SUITE_TASK_FILE}: [{name}] field 'subgoals' is {list(spec.subgoals)}; the simulator's "
                         f"predicates are {list(names)}")
    return Task(name=name, instructions=spec.instructions, step_budget=spec.step_budget, subgoals=subgoals,
                is_long=spec.is_long, **scene)


def _puzzle_subgoals(init: tuple[int, ...], goal: tuple[int, ...]) -> tuple[Subgoal, ...]:
    total = lights_out.presses_remaining(np.asarray(init), np.asarray(goal), 3, 3)
    return tuple(Subgoal(f"press {k} of {total} done", PuzzlePresses(init, goal, k)) for k in range(1, total)) + (
        Subgoal("board matches the pattern", TaskSuccess()),
    )


def _puzzle_task(name, init, goal) -> Task:
    n = lights_out.presses_remaining(np.asarray(init), np.asarray(goal), 3, 3)
    return _task(
        name=name,
        backend="puzzle-3x3",
        task_info=dict(init_button_states=np.array(init), goal_button_states=np.array(goal)),
        subgoals=_puzzle_subgoals(init, goal),
        plan=(PlanStep(SolvePuzzle(goal=goal), n),),
    )


_PICK_INIT, _PICK_GOAL = (0.425, 0.1, _REST_Z), (0.425, -0.1, _REST_Z)
_DIAG_INIT, _DIAG_GOAL = (0.35, -0.2, _REST_Z), (0.50, 0.2, _REST_Z)
_STACK_INIT = ((0.425, -0.2, _REST_Z), (0.425, 0.2, _REST_Z))
_STACK_GOAL = ((0.425, 0.0, _REST_Z), (0.425, 0.0, 3 * _REST_Z))
# OGBench's goal for a cube in the closed drawer: closing shoves the cube against the drawer's front wall, so
# this is where it comes to rest wherever in the drawer it was put (the expert puts it at the centre).
_DRAWER_CUBE_GOAL = (0.33, -0.356, 0.065986)
_PUZZLE_ALL_ON = (1,) * 9
_PUZZLE_CORNER_OFF = (0, 1, 1, 1, 1, 1, 1, 1, 1)
_PUZZLE_ALL_OFF = (0,) * 9
_PUZZLE_CHECKER = (0, 1, 0, 1, 0, 1, 0, 1, 0)
_PUZZLE_ANTI_DIAGONAL_OFF = (1, 1, 0, 1, 0, 1, 0, 1, 1)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task(
            name="cube_pick_place",
            backend="cube-single",
            task_info=dict(init_xyzs=np.array([_PICK_INIT]), goal_xyzs=np.array([_PICK_GOAL])),
            subgoals=(Subgoal("cube lifted", CubeLifted(0)), Subgoal("cube at the goal", TaskSuccess())),
            plan=(PlanStep(MoveCube(0, _PICK_GOAL), 2),),
        ),
        _task(
            name="cube_pick_place_diagonal",
            backend="cube-single",
            task_info=dict(init_xyzs=np.array([_DIAG_INIT]), goal_xyzs=np.array([_DIAG_GOAL])),
            subgoals=(Subgoal("cube lifted", CubeLifted(0)), Subgoal("cube at the goal", TaskSuccess())),
            plan=(PlanStep(MoveCube(0, _DIAG_GOAL), 2),),
        ),
        _task(
            name="cube_stack",
            backend="cube-double",
            task_info=dict(init_xyzs=np.array(_STACK_INIT), goal_xyzs=np.array(_STACK_GOAL)),
            subgoals=(
                Subgoal("red cube lifted", CubeLifted(0)),
                Subgoal("red cube in the middle", CubeAt(0, _STACK_GOAL[0])),
                Subgoal("blue cube lifted", CubeLifted(1)),
                Subgoal("blue cube stacked on the red cube", TaskSuccess()),
            ),
            plan=(PlanStep(MoveCube(0, _STACK_GOAL[0]), 2), PlanStep(MoveCube(1, _STACK_GOAL[1]), 4)),
        ),
        _task(
            name="scene_open_drawer",
            backend="scene",
            task_info=_scene_info(
                (0.40, 0.10, _REST_Z), [1, 1], 0.0, 0.0, (0.40, 0.10, _REST_Z), [1, 1], DRAWER_OPEN_Q, 0.0
            ),
            subgoals=(Subgoal("drawer moving", SlideMoved("drawer")), Subgoal("drawer open", TaskSuccess())),
            plan=(PlanStep(SlideDrawer(DRAWER_OPEN_Q), 2),),
        ),
        _task(
            name="scene_put_cube_in_drawer",
            backend="scene",
            task_info=_scene_info((0.35, 0.05, _REST_Z), [0, 0], 0.0, 0.0, _DRAWER_CUBE_GOAL, [1, 0], 0.0, 0.0),
            subgoals=(
                Subgoal("drawer unlocked", ButtonIs(0, 1)),
                Subgoal("drawer open", SlideAt("drawer", DRAWER_OPEN_Q)),
                Subgoal("cube in the drawer", CubeInDrawer(0)),
                Subgoal("drawer closed with the cube inside", TaskSuccess()),
            ),
            plan=(
                PlanStep(PressButton(0, 1), 1),
                PlanStep(SlideDrawer(DRAWER_OPEN_Q), 2),
                PlanStep(MoveCube(0, None), 3),
                PlanStep(SlideDrawer(0.0), 4),
            ),
        ),
        _task(
            name="scene_unlock_and_open",
            backend="scene",
            task_info=_scene_info(
                (0.40, 0.10, _REST_Z), [0, 0], 0.0, 0.0, (0.40, 0.10, _REST_Z), [1, 1], DRAWER_OPEN_Q, WINDOW_OPEN_Q
            ),
            subgoals=(
                Subgoal("drawer unlocked", ButtonIs(0, 1)),
                Subgoal("drawer open", SlideAt("drawer", DRAWER_OPEN_Q)),
                Subgoal("window unlocked", ButtonIs(1, 1)),
                Subgoal("window open", TaskSuccess()),
            ),
            plan=(
                PlanStep(PressButton(0, 1), 1),
                PlanStep(SlideDrawer(DRAWER_OPEN_Q), 2),
                PlanStep(PressButton(1, 1), 3),
                PlanStep(SlideWindow(WINDOW_OPEN_Q), 4),
            ),
        ),
        _task(
            name="scene_close_and_lock",
            backend="scene",
            task_info=_scene_info(
                (0.35, -0.05, _REST_Z), [0, 0], DRAWER_OPEN_Q, WINDOW_OPEN_Q, (0.35, -0.05, _REST_Z), [0, 0], 0.0, 0.0
            ),
            subgoals=(
                Subgoal("drawer unlocked", ButtonIs(0, 1)),
                Subgoal("drawer closed", SlideAt("drawer", 0.0)),
                Subgoal("drawer locked", ButtonIs(0, 0)),
                Subgoal("window unlocked", ButtonIs(1, 1)),
                Subgoal("window closed", SlideAt("window", 0.0)),
                Subgoal("window locked", TaskSuccess()),
            ),
            plan=(
                PlanStep(PressButton(0, 1), 1),
                PlanStep(SlideDrawer(0.0), 2),
                PlanStep(PressButton(0, 0), 3),
                PlanStep(PressButton(1, 1), 4),
                PlanStep(SlideWindow(0.0), 5),
                PlanStep(PressButton(1, 0), 6),
            ),
        ),
        _task(
            name="scene_rearrange",
            backend="scene",
            task_info=_scene_info(
                (0.35, 0.15, _REST_Z), [0, 0], 0.0, 0.0, _DRAWER_CUBE_GOAL, [0, 0], 0.0, WINDOW_OPEN_Q
            ),
            subgoals=(
                Subgoal("drawer unlocked", ButtonIs(0, 1)),
                Subgoal("drawer open", SlideAt("drawer", DRAWER_OPEN_Q)),
                Subgoal("cube in the drawer", CubeInDrawer(0)),
                Subgoal("drawer closed", SlideAt("drawer", 0.0)),
                Subgoal("drawer locked", ButtonIs(0, 0)),
                Subgoal("window unlocked", ButtonIs(1, 1)),
                Subgoal("window open", SlideAt("window", WINDOW_OPEN_Q)),
                Subgoal("window locked", TaskSuccess()),
            ),
            plan=(
                PlanStep(PressButton(0, 1), 1),
                PlanStep(SlideDrawer(DRAWER_OPEN_Q), 2),
                PlanStep(MoveCube(0, None), 3),
                PlanStep(SlideDrawer(0.0), 4),
                PlanStep(PressButton(0, 0), 5),
                PlanStep(PressButton(1, 1), 6),
                PlanStep(SlideWindow(WINDOW_OPEN_Q), 7),
                PlanStep(PressButton(1, 0), 8),
            ),
        ),
        _puzzle_task(
            "puzzle_3x3_diagonal_off",
            _PUZZLE_ALL_OFF,
            _PUZZLE_ANTI_DIAGONAL_OFF,
        ),
        _puzzle_task(
            "puzzle_3x3_one_off",
            _PUZZLE_ALL_ON,
            _PUZZLE_CORNER_OFF,
        ),
        _puzzle_task(
            "puzzle_3x3_all_on",
            _PUZZLE_CHECKER,
            _PUZZLE_ALL_ON,
        ),
    )
}


def suite_specs() -> dict[str, TaskSpec]:
    """The simulated suite's tasks as the learner and the robots see them (its task file's records)."""
    return {name: _SUITE[name] for name in task_names()}  # sorted, as task ids have always been


def task_names() -> list[str]:
    """All registered task names, sorted."""
    return sorted(TASKS)


def parse_tasks(spec: str, field: str = "config.tasks") -> list[str]:
    """"all" or comma-separated task names -> the task list; an unknown or empty list is an error naming `field`."""
    known = task_names()
    tasks = known if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"{field}: unknown task(s) {unknown or spec!r} (known: {known})")
    return tasks


def get_task(name: str) -> Task:
    """The task registered as `name`; raises KeyError naming it and listing the known tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {task_names()}") from None
