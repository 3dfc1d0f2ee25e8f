"""Task-level scripted experts: a task's plan of sub-skills, executed with OGBench's Markov oracles.

Why scripted experts: they produce the offline data (demos at zero noise; suboptimal and failed episodes on
purpose through the knobs below) and they are the hands of the simulated teleoperator. They are closed-loop
within each skill (an oracle re-reads the state every step, so a dropped cube is re-grasped), follow the task's
ordered plan across skills, and can start from any state of the episode by resuming the plan at the latched
sub-goal count (`reset()` mid-episode), which is how the teleoperator takes over.

Knobs (`ExpertConfig`), all seeded per episode:
  noise_std      Gaussian action noise, per-dimension scaled by `noise_dim_scale` (see NOISE_DIM_SCALE).
  p_drop         per-episode probability of one "drop": after a few steps of manipulating an object (carrying a
                 cube, holding a handle, pressing a button) the gripper opens and the arm retreats upward for
                 `drop_steps` steps; the expert then resumes (recovering costs time, or fails at the budget).
  p_wrong_order  per-episode probability of a wrong plan: two adjacent plan steps swapped (multi-step plans,
                 e.g. opening a still-locked drawer first), or, for one-step plans, a detour first: the cube to a
                 wrong place, a wrong puzzle button, or toggling the lock of the drawer/window to be opened.
  p_stall        per-episode probability of doing nothing (zero action: the arm holds, sagging slowly) for `stall_steps` steps,
                 starting at a uniform fraction `stall_start_frac` of the step budget.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fleet_api import schema
from lwd_jax.sim import lights_out
from lwd_jax.sim.env import Obs, SimEnv
from lwd_jax.sim.skills import (
    CUBE_STAGING_POINT,
    RETREAT_ACTION,
    MoveCube,
    PlanSkill,
    PressButton,
    SkillRunner,
    SlideDrawer,
    SlideWindow,
    SolvePuzzle,
    World,
    button_states,
    cube_blocks_drawer,
    next_puzzle_press,
)
from lwd_jax.sim.tasks import DRAWER_OPEN_Q

EXPERT_STREAM = 2  # seed-sequence stream of the expert (the env uses its own streams)
# Where a "wrong place" for a cube is drawn from (OGBench's cube sampling region) and how far from the goal.
WRONG_CUBE_XY_BOUNDS = ((0.3, -0.3), (0.55, 0.3))
WRONG_CUBE_MIN_DIST = 0.15
WRONG_CUBE_MAX_TRIES = 100
# The lock button of each slide in the scene (button 0 locks the drawer, button 1 the window).
SLIDE_LOCK_BUTTON = {SlideDrawer: 0, SlideWindow: 1}
# Per-dimension noise scale. OGBench's noisy datasets use (1, 1, 1, 3, 10); with a 10x gripper scale a cube
# slips out at any noise level that matters (measured, 10 seeds, success cube_pick_place / put_cube_in_drawer:
# noise 0.1 -> 100% / 30%, 0.2 -> 50% / 0%). With (1, 1, 1, 2, 3) the knob grades smoothly:
# 0.2 -> 100% / 90%, 0.3 -> 100% / 40% (2x longer episodes), 0.5 -> 20% / 0%.
NOISE_DIM_SCALE = (1.0, 1.0, 1.0, 2.0, 3.0)
HOLD_ACTION = np.zeros(schema.ACTION_DIM)  # relative control: "stay here" (the arm sags slowly under gravity)
DRAWER_PLACEABLE_Q = -0.12  # drawer opened at least this far: a cube fits in (OGBench's own threshold)
CUBE_REST_Z = 0.02  # a cube's centre height resting on the table
CUBE_SIZE = 0.04
CUBE_SUCCESS_TOL = 0.04  # OGBench's success tolerance for a cube
CUBE_CARRY_HEIGHT = 0.04  # a cube's centre above this is off the table (held or on something)
CUBE_ASIDE_POINT = (0.35, 0.15, 0.02)  # free table to park a cube while a stack's base is rebuilt
DRAWER_SHUT_Q = -0.04  # drawer closed at least this far (OGBench's success tolerance around 0): no way in


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """Noise and failure-injection knobs of a scripted expert (all zero: a clean demonstrator)."""

    noise_std: float = 0.0
    noise_dim_scale: tuple[float, ...] = NOISE_DIM_SCALE  # dx, dy, dz, dyaw, gripper
    p_drop: float = 0.0
    p_wrong_order: float = 0.0
    p_stall: float = 0.0
    drop_steps: int = 10
    drop_after_engaged: tuple[int, int] = (1, 15)  # engaged steps before the drop, uniform in [lo, hi)
    stall_steps: int = 100
    stall_start_frac: tuple[float, float] = (0.0, 0.5)
    skill_timeout: int = 300  # a skill that has not settled by then is abandoned (the plan moves on)

    @property
    def injects_failures(self) -> bool:
        return self.p_drop > 0 or self.p_wrong_order > 0 or self.p_stall > 0


def resume_index(plan: tuple[PlanSkill, ...], completes: tuple[int, ...], subgoals_reached: int) -> int:
    """Index of the first plan step whose sub-goal is not yet reached (len(plan) when all are)."""
    for i, done_after in enumerate(completes):
        if done_after > subgoals_reached:
            return i
    return len(plan)


def _wrong_cube_target(rng: np.random.Generator, goal: tuple[float, float, float]) -> tuple[float, float, float]:
    lo, hi = np.asarray(WRONG_CUBE_XY_BOUNDS[0]), np.asarray(WRONG_CUBE_XY_BOUNDS[1])
    xy = rng.uniform(lo, hi)
    for _ in range(WRONG_CUBE_MAX_TRIES):
        if np.linalg.norm(xy - np.asarray(goal[:2])) >= WRONG_CUBE_MIN_DIST:
            break
        xy = rng.uniform(lo, hi)
    return (float(xy[0]), float(xy[1]), float(goal[2]) if goal[2] < 0.04 else 0.02)


def wrong_plan(plan: list[PlanSkill], rng: np.random.Generator, world: World) -> list[PlanSkill]:
    """The plan with one injected ordering/target mistake (see the module docstring)."""
    plan = list(plan)
    if len(plan) >= 2:
        i = int(rng.integers(len(plan) - 1))
        plan[i], plan[i + 1] = plan[i + 1], plan[i]
        return plan
    step = plan[0]
    if isinstance(step, MoveCube):
        goal = step.target if step.target is not None else step.drawer_goal
        return [MoveCube(step.block, _wrong_cube_target(rng, goal)), *plan]
    if isinstance(step, SolvePuzzle):
        n = step.rows * step.cols
        needed = set(lights_out.solve(button_states(world, n), np.asarray(step.goal), step.rows, step.cols))
        wrong = [b for b in range(n) if b not in needed]
        button = int(rng.choice(wrong)) if wrong else int(rng.integers(n))
        return [PressButton(button, None, gripper_closed=True), *plan]
    if type(step) in SLIDE_LOCK_BUTTON:
        return [PressButton(SLIDE_LOCK_BUTTON[type(step)], None), *plan]
    return [*plan, *plan]  # a step type without a natural mistake: do it twice


def stack_support(skill: MoveCube, plan: tuple[PlanSkill, ...]) -> MoveCube | None:
    """The plan step that places the cube `skill` stacks onto (same xy, one cube lower), if any."""
    if skill.target is None or skill.target[2] < CUBE_REST_Z + CUBE_SIZE / 2:
        return None
    below = (skill.target[0], skill.target[1], skill.target[2] - CUBE_SIZE)
    for step in plan:
        if isinstance(step, MoveCube) and step.target is not None and np.allclose(step.target, below):
            return step
    return None


def prerequisites(
    skill: PlanSkill, world: World, plan: tuple[PlanSkill, ...] = (), *, started: bool = False
) -> list[PlanSkill]:
    """Skills that must run before `skill` can work from this state (scene locks, the drawer, a stack's base).

    Why: the plan is resumed at the latched sub-goal count (teleoperator takeovers), but a policy may have
    undone an earlier stage since — re-locked the drawer, closed it again, knocked the base cube off its spot.
    Repairing those preconditions keeps the expert able to finish from any state a rollout leaves behind. For a
    skill already `started` the drawer test uses a looser threshold (hysteresis): reaching for a cube lying next
    to the drawer nudges it half shut, and re-opening it every time would loop forever.
    """
    if type(skill) in SLIDE_LOCK_BUTTON:
        lock = SLIDE_LOCK_BUTTON[type(skill)]
        if int(world[f"privileged/button_{lock}_state"]) == 0:
            return [PressButton(lock, 1)]
    if isinstance(skill, MoveCube) and skill.target is None:
        drawer_q = float(world["privileged/drawer_pos"][0])
        if cube_blocks_drawer(world, skill.block):
            stage = MoveCube(skill.block, CUBE_STAGING_POINT)
            if drawer_q <= DRAWER_SHUT_Q:  # open: shut it first, the cube is under it
                shut = SlideDrawer(0.0)
                return [*prerequisites(shut, world), shut, stage]
            return [stage]
        if drawer_q > (DRAWER_SHUT_Q if started else DRAWER_PLACEABLE_Q):
            open_drawer = SlideDrawer(DRAWER_OPEN_Q)
            return [*prerequisites(open_drawer, world), open_drawer]
    if isinstance(skill, MoveCube) and (support := stack_support(skill, plan)) is not None:
        assert support.target is not None
        base = np.asarray(world[f"privileged/block_{support.block}_pos"])
        if np.linalg.norm(base - np.asarray(support.target)) > CUBE_SUCCESS_TOL:
            top = np.asarray(world[f"privileged/block_{skill.block}_pos"])
            held = top[2] > CUBE_CARRY_HEIGHT
            on_spot = np.linalg.norm(top[:2] - np.asarray(support.target[:2])) <= CUBE_SUCCESS_TOL
            if held or on_spot:  # set the top cube down out of the way first, then rebuild the base
                return [MoveCube(skill.block, CUBE_ASIDE_POINT), support]
            return [support]
    return []


class ScriptedExpert:
    """The task-level expert of one env. Call `reset()` after `env.reset()` (or mid-episode to resume).

    As a policy it takes the observation dict (unused: it reads the privileged `env.world`) and returns one
    action in [-1, 1]^5. `events` lists the injected failures that actually fired, as (step, kind).
    """

    def __init__(
        self, env: SimEnv, config: ExpertConfig | None = None, seed: int | None = None, *, stream: int = EXPERT_STREAM
    ):
        self.env = env
        self.config = config or ExpertConfig()
        self._stream = stream  # keeps this expert's random draws independent of other users of the same seed
        self._rng = np.random.default_rng(None if seed is None else [seed, stream])
        self.events: list[tuple[int, str]] = []
        self._plan: list[PlanSkill] = []
        self._index = 0
        self._runner: SkillRunner | None = None
        self._repair = True
        self._t = 0
        self._last_env_step: int | None = None
        self._stall_at: int | None = None
        self._stall_left = 0
        self._drop_countdown: int | None = None
        self._drop_left = 0

    # -- episode setup ---------------------------------------------------------------------------------------

    def reset(self, seed: int | None = None, *, inject_failures: bool = True) -> None:
        """Plans from the env's current state; draws this episode's failure events if `inject_failures`."""
        if seed is not None:
            self._rng = np.random.default_rng([seed, self._stream])
        world = self.env.world
        self._replan()
        self._t = 0
        self._last_env_step = None
        self.events = []
        self._stall_at, self._stall_left = None, 0
        self._drop_countdown, self._drop_left = None, 0
        self._repair = True
        if not inject_failures:
            return
        cfg = self.config
        # Fixed draw order (one uniform per knob) so changing one probability does not reshuffle the others.
        u_wrong, u_drop, u_stall = self._rng.random(3)
        if u_wrong < cfg.p_wrong_order and self._plan:
            self._plan = wrong_plan(self._plan, self._rng, world)
            self._repair = False  # a wrong plan is executed blindly: that is the failure mode
            self.events.append((0, "wrong_order"))
        if u_drop < cfg.p_drop:
            self._drop_countdown = int(self._rng.integers(*cfg.drop_after_engaged))
        if u_stall < cfg.p_stall:
            lo, hi = cfg.stall_start_frac
            self._stall_at = int(self._rng.uniform(lo, hi) * self.env.step_budget)

    def _replan(self) -> None:
        """The task plan from the first step whose sub-goal the env has not latched yet."""
        plan = tuple(step.skill for step in self.env.task.plan)
        completes = tuple(step.completes for step in self.env.task.plan)
        self._plan = list(plan[resume_index(plan, completes, self.env.subgoals_reached) :])
        self._index = 0
        self._runner = None

    # -- acting ----------------------------------------------------------------------------------------------

    def _start_runner(self, world: World) -> None:
        """Creates the runner of the current plan step, skipping solved puzzle macros; None when done."""
        self._runner = None
        while self._index < len(self._plan):
            step = self._plan[self._index]
            if isinstance(step, SolvePuzzle):
                press = next_puzzle_press(step, self.env.ogb_env, world)
                if press is None:
                    self._index += 1
                    continue
                self._runner = SkillRunner(press, self.env.ogb_env, world, self._rng)
                return
            if self._repairable():
                needed = prerequisites(step, world, self._task_plan())
                if needed:
                    self._plan[self._index : self._index] = needed
                    step = self._plan[self._index]
            self._runner = SkillRunner(step, self.env.ogb_env, world, self._rng)
            return

    def _repairable(self) -> bool:
        return self._repair and not any(isinstance(step.skill, SolvePuzzle) for step in self.env.task.plan)

    def _task_plan(self) -> tuple[PlanSkill, ...]:
        return tuple(step.skill for step in self.env.task.plan)

    def _advance_if_done(self, world: World) -> None:
        runner = self._runner
        if runner is None:
            self._start_runner(world)
            return
        if self._repairable() and prerequisites(self._plan[self._index], world, self._task_plan(), started=True):
            self._start_runner(world)  # a precondition broke mid-skill (e.g. the drawer got shut): repair first
            return
        if runner.settled(world) or runner.steps >= self.config.skill_timeout:
            if not isinstance(self._plan[self._index], SolvePuzzle):
                self._index += 1  # a puzzle macro stays current until the board is solved
            self._start_runner(world)

    @property
    def plan_done(self) -> bool:
        """Every plan step has been executed (or abandoned)."""
        return self._index >= len(self._plan)

    @property
    def current_skill(self) -> Any:
        return None if self._runner is None else self._runner.skill

    def _failure_action(self, world: World) -> np.ndarray | None:
        """The action of an injected stall or drop when one is active now, else None."""
        if self._stall_at is not None and self._t >= self._stall_at:
            self._stall_at, self._stall_left = None, self.config.stall_steps
            self.events.append((self._t, "stall"))
        if self._stall_left > 0:
            self._stall_left -= 1
            return HOLD_ACTION.copy()
        if self._drop_countdown is not None and self._runner is not None and self._runner.engaged(world):
            self._drop_countdown -= 1
            if self._drop_countdown <= 0:
                self._drop_countdown, self._drop_left = None, self.config.drop_steps
                self.events.append((self._t, "drop"))
        if self._drop_left > 0:
            self._drop_left -= 1
            return RETREAT_ACTION.copy()
        return None

    def act(self, world: World) -> np.ndarray:
        """One action from the privileged world state."""
        resumed = self._last_env_step is not None and self.env.elapsed_steps != self._last_env_step + 1
        if resumed and self._repair:
            # Someone else (the teleoperator) drove since our last action: continue from the progress now
            # latched instead of redoing (or undoing) a stage. A wrong plan is followed blindly, on purpose.
            self._replan()
        self._last_env_step = self.env.elapsed_steps
        self._advance_if_done(world)
        action = self._failure_action(world)
        if action is None:
            action = HOLD_ACTION.copy() if self._runner is None else self._runner.act(world)
            if self.config.noise_std > 0:
                scale = self.config.noise_std * np.asarray(self.config.noise_dim_scale)
                action = action + self._rng.normal(0.0, 1.0, schema.ACTION_DIM) * scale
        self._t += 1
        return np.clip(action, schema.ACTION_LOW, schema.ACTION_HIGH).astype(np.float32)

    def __call__(self, obs: Obs | None = None, instruction: str | None = None) -> np.ndarray:
        return self.act(self.env.world)


def make_expert(env: SimEnv, config: ExpertConfig | None = None, seed: int | None = None) -> ScriptedExpert:
    """A scripted expert bound to `env` (call `.reset(seed)` after each `env.reset`)."""
    return ScriptedExpert(env, config, seed)
