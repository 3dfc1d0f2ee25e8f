"""Sub-skills of the scripted experts: plain-data skill specs and a runner around OGBench's Markov oracles.

Why this shape: OGBench ships closed-loop ("Markov") oracles for four sub-skills — move a cube, press a button,
slide the drawer, slide the window — but they read their target from `privileged/target_*` entries that the
environment only fills in its random `data_collection` mode. Our tasks run the env in `task` mode with fixed
goals, so a `SkillRunner` writes those target entries itself (from the skill spec and the live simulator
state) and hands the augmented info to the unmodified oracle. Task plans stay plain data (see `tasks.py`).

A skill is *achieved* with the oracle's own tolerance (that is where the oracle switches from "manipulate"
to "retreat"), and *settled* once it is achieved and the arm has retreated above the oracle's own clearance
height, so the next skill never starts with the gripper still on the previous object.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from ogbench.manipspace.oracles.markov.button_markov import ButtonMarkovOracle
from ogbench.manipspace.oracles.markov.cube_markov import CubeMarkovOracle
from ogbench.manipspace.oracles.markov.drawer_markov import DrawerMarkovOracle
from ogbench.manipspace.oracles.markov.markov_oracle import MarkovOracle
from ogbench.manipspace.oracles.markov.window_markov import WindowMarkovOracle

from lwd_jax.sim import lights_out

World = Mapping[str, Any]  # the OGBench info dict of the current step, plus "success"

# Tolerances and clearance heights of the pinned ogbench==1.2.2 oracles (their switch points, copied as data).
CUBE_ACHIEVED_TOL = 0.02  # CubeMarkovOracle: target_pos_aligned
SLIDE_ACHIEVED_TOL = 0.01  # Drawer/WindowMarkovOracle: target_pos_aligned (handle distance)
CLEARANCE_HEIGHT = {"cube": 0.16, "button": 0.16, "drawer": 0.18, "window": 0.28}
GRIPPER_OPEN_CONTACT = 0.1  # gripper_contact below this: nothing held (the cube oracle's own threshold)
GRIPPER_HOLD_CONTACT = 0.5  # gripper_contact above this: an object is held
ORACLE_MIN_NORM = 0.4  # OGBench's default minimum action norm for the Markov oracles
ENGAGED_DIST = 0.04  # effector this close to a handle / button top counts as "manipulating" it
CUBE_CARRY_HEIGHT = 0.04  # a held cube above this height (rest height 0.02) is being carried
# Where the expert puts a cube in the drawer, in the closed-drawer frame: the interior centre (drawer_link body,
# y = -0.41 closed, -0.25 open). Measured on scene_put_cube_in_drawer: 0/80 failures here, 1/20 with the point
# 0.01 m nearer the front and 7/40 with it 0.01 m further in: the fingers catch the walls or the case's cover.
DRAWER_PLACE_POINT = (0.33, -0.41, 0.066)
# The strip of table the drawer sweeps (drawer.xml: body at x 0.33 +- 0.11; its front reaches y -0.07 when fully
# open, the case covers y < -0.32) with a cube's half-width of margin, and the height of the drawer floor.
DRAWER_PATH_X = (0.20, 0.46)
DRAWER_PATH_Y = (-0.34, -0.03)
DRAWER_FLOOR_Z = 0.045
# Where the expert sets a cube down to clear the drawer's path (free table, away from buttons and window).
CUBE_STAGING_POINT = (0.40, 0.05, 0.02)
RETREAT_ACTION = np.array([0.0, 0.0, 1.0, 0.0, -1.0])  # straight up with the gripper opening
# Yaw gate for handles: the oracles turn the wrist while they descend, and a wrist still ~1 rad off when the
# fingers reach a handle lands on it instead of around it (seen after a button press left the wrist at a
# random yaw: the drawer skill pushed on the handle until it timed out). The runner holds the descent until
# the wrist is aligned.
HANDLE_YAW_GATE = 0.25  # rad; above this yaw error the arm may not descend onto a handle
HANDLE_GATE_DIST = 0.05  # m; the gate applies while the effector is farther than this from the handle
# Jam recovery: the oracles move in straight lines, so from states a policy leaves behind (fingers hooked on a
# button box, wrist under a drawer lip) they can push forever against an obstacle. When the effector has moved
# less than JAM_DIST over JAM_WINDOW steps although the oracle asks to move, the runner lifts the arm for
# UNJAM_STEPS steps (keeping the oracle's gripper command) and lets the oracle re-approach from above.
JAM_WINDOW = 15
JAM_DIST = 0.005  # m over the whole window
JAM_MIN_COMMAND = 0.3  # |xyz action| the oracle must be asking for to call it a jam
UNJAM_STEPS = 8


# ------------------------------------------------------------------------------------------------------------
# Skill specs (plain data, used in task plans).
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MoveCube:
    """Pick cube `block` and place it at `target` (xyz); `target=None` means "into the drawer".

    The in-drawer target is a fixed point of the drawer body (`drawer_goal`, given for the closed drawer), so it
    follows the drawer as it slides.
    """

    block: int
    target: tuple[float, float, float] | None = None
    drawer_goal: tuple[float, float, float] = DRAWER_PLACE_POINT


@dataclasses.dataclass(frozen=True)
class PressButton:
    """Press button `button` until its state is `state` (None: toggle whatever it is when the skill starts)."""

    button: int
    state: int | None = None
    gripper_closed: bool = False  # OGBench presses puzzle buttons with a closed gripper


@dataclasses.dataclass(frozen=True)
class SlideDrawer:
    """Slide the drawer to joint position `target_q` (0: closed, -0.16: fully open)."""

    target_q: float


@dataclasses.dataclass(frozen=True)
class SlideWindow:
    """Slide the window to joint position `target_q` (0: closed, 0.2: fully open)."""

    target_q: float


@dataclasses.dataclass(frozen=True)
class SolvePuzzle:
    """Macro skill: press buttons until the lights-out board equals `goal` (re-solved before every press)."""

    goal: tuple[int, ...]
    rows: int = 3
    cols: int = 3


Skill = MoveCube | PressButton | SlideDrawer | SlideWindow
PlanSkill = Skill | SolvePuzzle


# ------------------------------------------------------------------------------------------------------------
# Pure helpers over the info dict / simulator.
# ------------------------------------------------------------------------------------------------------------


def button_states(world: World, num_buttons: int) -> np.ndarray:
    """Current 0/1 state of each button, from the info dict."""
    return np.array([int(world[f"privileged/button_{i}_state"]) for i in range(num_buttons)], dtype=np.int64)


def effector_clear(world: World, kind: str) -> bool:
    """The arm is above the oracle's clearance height for this kind of skill."""
    return float(world["proprio/effector_pos"][2]) >= CLEARANCE_HEIGHT[kind]


def slide_joint_axis(ogb_env: Any, joint: str) -> np.ndarray:
    """World-frame axis of a slide joint (the direction a handle moves per unit of joint position)."""
    return np.array(ogb_env._data.xaxis[ogb_env._model.joint(joint).id], dtype=np.float64)


def drawer_cube_target(ogb_env: Any, world: World, drawer_goal: tuple[float, float, float]) -> np.ndarray:
    """Where a cube must go now so that it ends at `drawer_goal` once the drawer is closed (q = 0)."""
    q = float(world["privileged/drawer_pos"][0])
    return np.asarray(drawer_goal) + slide_joint_axis(ogb_env, "drawer_slide") * q


def cube_blocks_drawer(world: World, block: int) -> bool:
    """The cube lies on the table where the drawer slides (under it when open, in its way when closed).

    The arm cannot pick it there with the drawer open (reaching down shoves the drawer shut) and the drawer
    cannot open over it, so the expert first shuts the drawer and moves the cube aside (see experts.prerequisites).
    """
    pos = np.asarray(world[f"privileged/block_{block}_pos"])
    on_table = pos[2] < DRAWER_FLOOR_Z
    in_x = DRAWER_PATH_X[0] <= pos[0] <= DRAWER_PATH_X[1]
    in_y = DRAWER_PATH_Y[0] <= pos[1] <= DRAWER_PATH_Y[1]
    return bool(on_table and in_x and in_y)


def slide_handle_target(ogb_env: Any, world: World, kind: str, target_q: float) -> np.ndarray:
    """World position of the drawer/window handle when its joint is at `target_q`."""
    handle = np.asarray(world[f"privileged/{kind}_handle_pos"])
    q = float(world[f"privileged/{kind}_pos"][0])
    return handle + slide_joint_axis(ogb_env, f"{kind}_slide") * (target_q - q)


def nearest_button(ogb_env: Any, world: World, candidates: tuple[int, ...]) -> int:
    """The candidate button whose top is closest (xy) to the effector: the puzzle expert's press order."""
    eff = np.asarray(world["proprio/effector_pos"])[:2]
    tops = [ogb_env._data.site_xpos[ogb_env._button_site_ids[b]][:2] for b in candidates]
    return candidates[int(np.argmin([np.linalg.norm(t - eff) for t in tops]))]


# ------------------------------------------------------------------------------------------------------------
# Runtime.
# ------------------------------------------------------------------------------------------------------------


def _make_oracle(skill: Skill, ogb_env: Any) -> MarkovOracle:
    """A fresh OGBench Markov oracle for `skill`."""
    if isinstance(skill, MoveCube):
        return CubeMarkovOracle(env=ogb_env, min_norm=ORACLE_MIN_NORM)
    if isinstance(skill, PressButton):
        return ButtonMarkovOracle(env=ogb_env, min_norm=ORACLE_MIN_NORM, gripper_always_closed=skill.gripper_closed)
    if isinstance(skill, SlideDrawer):
        return DrawerMarkovOracle(env=ogb_env, min_norm=ORACLE_MIN_NORM)
    if isinstance(skill, SlideWindow):
        return WindowMarkovOracle(env=ogb_env, min_norm=ORACLE_MIN_NORM)
    raise TypeError(f"no oracle for skill {skill!r}")


def skill_kind(skill: Skill) -> str:
    """'cube' | 'button' | 'drawer' | 'window' (keys of CLEARANCE_HEIGHT)."""
    return {MoveCube: "cube", PressButton: "button", SlideDrawer: "drawer", SlideWindow: "window"}[type(skill)]


class SkillRunner:
    """Runs one concrete skill with its OGBench oracle from the current state.

    `rng` seeds the oracle's retreat pose (the oracles draw it from numpy's global RNG, which would make
    experts irreproducible), so an expert with a seed is deterministic.
    """

    def __init__(self, skill: Skill, ogb_env: Any, world: World, rng: np.random.Generator):
        if isinstance(skill, PressButton) and skill.state is None:
            current = int(world[f"privileged/button_{skill.button}_state"])
            skill = dataclasses.replace(skill, state=1 - current)
        self.skill = skill
        self.kind = skill_kind(skill)
        self._env = ogb_env
        self._oracle = _make_oracle(skill, ogb_env)
        self._oracle.reset(None, self._augment(world))
        bounds = np.array(ogb_env._arm_sampling_bounds, dtype=np.float64)  # a copy: never edit the env's bounds
        if self.kind == "window":  # the window oracle retreats above its (tall) frame
            bounds[0, 2] = max(bounds[0, 2], CLEARANCE_HEIGHT["window"] + 0.02)
        self._oracle._final_pos = rng.uniform(bounds[0], bounds[1])
        self._oracle._final_yaw = rng.uniform(-np.pi, np.pi)
        self.steps = 0
        self.unjams = 0  # how many times the jam recovery fired (diagnostics)
        self._recent_eff: collections.deque[np.ndarray] = collections.deque(maxlen=JAM_WINDOW)
        self._unjam_left = 0

    def _cube_target(self, world: World) -> np.ndarray:
        skill = self.skill
        assert isinstance(skill, MoveCube)
        if skill.target is None:
            return drawer_cube_target(self._env, world, skill.drawer_goal)
        return np.asarray(skill.target, dtype=np.float64)

    def _augment(self, world: World) -> dict[str, Any]:
        """The info dict with the `privileged/target_*` entries this skill's oracle reads."""
        info = dict(world)
        skill = self.skill
        if isinstance(skill, MoveCube):
            info["privileged/target_block"] = skill.block
            info["privileged/target_block_pos"] = self._cube_target(world)
            # Cubes are 4-fold symmetric and success ignores yaw: keep the cube's current yaw.
            info["privileged/target_block_yaw"] = np.asarray(world[f"privileged/block_{skill.block}_yaw"])
        elif isinstance(skill, PressButton):
            info["privileged/target_button"] = skill.button
            info["privileged/target_button_state"] = skill.state
            info["privileged/target_button_top_pos"] = self._env._data.site_xpos[
                self._env._button_site_ids[skill.button]
            ].copy()
        elif isinstance(skill, SlideDrawer):
            info["privileged/target_drawer_handle_pos"] = slide_handle_target(
                self._env, world, "drawer", skill.target_q
            )
        elif isinstance(skill, SlideWindow):
            info["privileged/target_window_handle_pos"] = slide_handle_target(
                self._env, world, "window", skill.target_q
            )
        return info

    def achieved(self, world: World) -> bool:
        """The skill's effect holds, at the oracle's own tolerance."""
        skill = self.skill
        if isinstance(skill, MoveCube):
            pos = np.asarray(world[f"privileged/block_{skill.block}_pos"])
            return bool(np.linalg.norm(pos - self._cube_target(world)) <= CUBE_ACHIEVED_TOL)
        if isinstance(skill, PressButton):
            return int(world[f"privileged/button_{skill.button}_state"]) == skill.state
        q = float(world[f"privileged/{self.kind}_pos"][0])
        return abs(q - skill.target_q) <= SLIDE_ACHIEVED_TOL

    def settled(self, world: World) -> bool:
        """Achieved, object released and the arm clear: safe to start the next skill."""
        if not (self.achieved(world) and effector_clear(world, self.kind)):
            return False
        if self.kind == "cube":
            return float(world["proprio/gripper_contact"][0]) < GRIPPER_OPEN_CONTACT
        return True

    def engaged(self, world: World) -> bool:
        """The robot is in the middle of manipulating the object (where an injected 'drop' does harm)."""
        eff = np.asarray(world["proprio/effector_pos"])
        skill = self.skill
        if isinstance(skill, MoveCube):
            held = float(world["proprio/gripper_contact"][0]) > GRIPPER_HOLD_CONTACT
            lifted = float(world[f"privileged/block_{skill.block}_pos"][2]) > CUBE_CARRY_HEIGHT
            return held and lifted and not self.achieved(world)
        if isinstance(skill, PressButton):
            top = self._env._data.site_xpos[self._env._button_site_ids[skill.button]]
            return bool(np.linalg.norm(top - eff) <= ENGAGED_DIST) and not self.achieved(world)
        handle = np.asarray(world[f"privileged/{self.kind}_handle_pos"])
        return bool(np.linalg.norm(handle - eff) <= ENGAGED_DIST) and not self.achieved(world)

    def _handle_yaw_error(self, world: World) -> float:
        """|wrist yaw - handle yaw| modulo the handle's 2-fold symmetry (the oracle's own target yaw)."""
        eff_yaw = float(world["proprio/effector_yaw"][0])
        target = self._oracle.shortest_yaw(eff_yaw, float(world[f"privileged/{self.kind}_handle_yaw"][0]), n=2)
        return abs(target - eff_yaw)

    def _jammed(self, world: World, action: np.ndarray) -> bool:
        """The oracle asks to move but the effector has not moved over the last JAM_WINDOW steps."""
        self._recent_eff.append(np.asarray(world["proprio/effector_pos"], dtype=np.float64).copy())
        if len(self._recent_eff) < JAM_WINDOW or self.achieved(world):
            return False
        moved = np.linalg.norm(self._recent_eff[-1] - self._recent_eff[0])
        return moved < JAM_DIST and np.linalg.norm(action[:3]) > JAM_MIN_COMMAND

    def act(self, world: World) -> np.ndarray:
        """The oracle's action in [-1, 1]^5, with the handle yaw gate and jam recovery (see constants)."""
        self.steps += 1
        action = np.asarray(self._oracle.select_action(None, self._augment(world)), dtype=np.float64)
        if self._unjam_left > 0:
            self._unjam_left -= 1
            return np.array([0.0, 0.0, 1.0, 0.0, action[4]])
        if self._jammed(world, action):
            self.unjams += 1
            self._recent_eff.clear()
            self._unjam_left = UNJAM_STEPS - 1
            return np.array([0.0, 0.0, 1.0, 0.0, action[4]])
        if self.kind in ("drawer", "window") and not self.achieved(world):
            handle = np.asarray(world[f"privileged/{self.kind}_handle_pos"])
            far = np.linalg.norm(handle - np.asarray(world["proprio/effector_pos"])) > HANDLE_GATE_DIST
            if far and self._handle_yaw_error(world) > HANDLE_YAW_GATE:
                action[2] = max(action[2], 0.0)
        return action


def next_puzzle_press(skill: SolvePuzzle, ogb_env: Any, world: World) -> PressButton | None:
    """The next press of a closed-loop lights-out solution from the current board (None when solved)."""
    board = button_states(world, skill.rows * skill.cols)
    presses = lights_out.solve(board, np.asarray(skill.goal), skill.rows, skill.cols)
    if not presses:
        return None
    return PressButton(button=nearest_button(ogb_env, world, presses), state=None, gripper_closed=True)
