"""One simulated robot: an OGBench manipspace env behind the fleet's fixed observation/action contract.

Why a wrapper: every task of the suite must look the same to the learner and the bridge (schema.py): a
zero-padded `state` with its `state_mask`, a `proprio` vector with one layout for every task, an optional
64x64 image, a 5-d action in [-1, 1], a sparse reward, success as the only terminal, and a step budget as a
time-out (truncation, never terminal). The raw OGBench info dict stays available as `env.world` for the
privileged scripted expert and the simulated teleoperator, never for the policy.

Proprio layout (PROPRIO_DIM = 20, physical units, from OGBench's `proprio/*` entries):
  [0:6]   joint_pos (rad)      [6:12]  joint_vel (rad/s)     [12:15] effector_pos (m, world frame)
  [15]    cos(effector_yaw)    [16]    sin(effector_yaw)     [17]    gripper_opening (0 closed .. 1 open)
  [18]    gripper_vel          [19]    gripper_contact (0 .. 1)
Yaw is encoded as cos/sin so the vector is continuous across the +-pi wrap.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import mujoco
import numpy as np

from fleet_api import schema
from lwd_jax.sim.tasks import SubgoalTracker, Task, get_task

Obs = dict[str, np.ndarray]

PROPRIO_LAYOUT = (
    ("proprio/joint_pos", 6),
    ("proprio/joint_vel", 6),
    ("proprio/effector_pos", 3),
    ("effector_yaw_cos", 1),
    ("effector_yaw_sin", 1),
    ("proprio/gripper_opening", 1),
    ("proprio/gripper_vel", 1),
    ("proprio/gripper_contact", 1),
)
assert sum(n for _, n in PROPRIO_LAYOUT) == schema.PROPRIO_DIM, "PROPRIO_LAYOUT must fill schema.PROPRIO_DIM"

RENDER_CAMERA = "front_pixels"  # the camera OGBench's visual-* envs use
INSTRUCTION_STREAM = 1  # seed-sequence stream that picks the instruction, separate from the scene's reset
SUCCESS_REWARD = 1.0


def _backend_env(backend: str, render: bool) -> Any:
    """A fresh OGBench env in `task` mode; we handle termination and time-outs ourselves."""
    common: dict[str, Any] = dict(
        mode="task",
        terminate_at_goal=False,
        success_timing="post",  # success reflects the state *after* the action, so reward lands on that step
        visualize_info=False,  # as OGBench's visual envs: the goal is not drawn, language names it
    )
    if render:
        common.update(width=schema.IMAGE_SHAPE[1], height=schema.IMAGE_SHAPE[0])
    if backend in ("cube-single", "cube-double"):
        from ogbench.manipspace.envs.cube_env import CubeEnv

        return CubeEnv(env_type=backend.split("-")[1], permute_blocks=False, **common)
    if backend == "scene":
        from ogbench.manipspace.envs.scene_env import SceneEnv

        return SceneEnv(env_type="scene", permute_blocks=False, **common)
    if backend == "puzzle-3x3":
        from ogbench.manipspace.envs.puzzle_env import PuzzleEnv

        return PuzzleEnv(env_type="3x3", **common)
    raise ValueError(f"unknown backend {backend!r}")


def proprio_vector(world: dict[str, Any]) -> np.ndarray:
    """The [PROPRIO_DIM] float32 proprio vector of PROPRIO_LAYOUT from an OGBench info dict."""
    yaw = float(world["proprio/effector_yaw"][0])
    parts = []
    for key, _ in PROPRIO_LAYOUT:
        if key == "effector_yaw_cos":
            parts.append([np.cos(yaw)])
        elif key == "effector_yaw_sin":
            parts.append([np.sin(yaw)])
        else:
            parts.append(np.asarray(world[key], dtype=np.float64).reshape(-1))
    return np.concatenate(parts).astype(np.float32)


def pad_state(state: np.ndarray) -> np.ndarray:
    """Zero-pads a task state vector to [STATE_DIM] float32."""
    out = np.zeros(schema.STATE_DIM, dtype=np.float32)
    out[: state.shape[0]] = state
    return out


def pick_instruction(task: Task, seed: int | None) -> str:
    """The canonical instruction (seed None) or one of instruction/paraphrases chosen by `seed`."""
    if seed is None:
        return task.instruction
    rng = np.random.default_rng([seed, INSTRUCTION_STREAM])
    return task.instructions[int(rng.integers(len(task.instructions)))]


class SimEnv:
    """One simulated robot running one task. Gymnasium-like reset/step with dict observations.

    `world` is the privileged OGBench info (object poses, button states) plus `success`; experts and the
    simulated teleoperator read it, policies must not.
    """

    def __init__(self, task: Task, *, render: bool = False, step_budget: int | None = None, seed: int | None = None):
        if render and os.environ.get("MUJOCO_GL") == "disable":
            raise RuntimeError(
                f"task {task.name!r}: render=True but MUJOCO_GL=disable (lwd_jax.sim's headless default); "
                "set MUJOCO_GL=egl (GPUs, and Mesa's llvmpipe on CPU machines) or osmesa before importing lwd_jax.sim"
            )
        self.render = render
        self.ogb_env = _backend_env(task.backend, render)
        self.set_task(task, step_budget=step_budget)
        self._first_seed = seed  # used by the first reset() that is given no seed

    def set_task(self, task: Task | str, *, step_budget: int | None = None) -> None:
        """Switches this robot to another task of the same backend (no rebuild); takes effect at reset()."""
        task = get_task(task) if isinstance(task, str) else task
        if hasattr(self, "task") and task.backend != self.task.backend:
            raise ValueError(
                f"cannot switch env from task {self.task.name!r} (backend {self.task.backend!r}) to {task.name!r} "
                f"(backend {task.backend!r}); build a new env with make_env({task.name!r})"
            )
        if task.state_dim > schema.STATE_DIM:
            raise ValueError(
                f"task {task.name!r}: state dim {task.state_dim} exceeds schema.STATE_DIM={schema.STATE_DIM}"
            )
        self.task = task
        self.step_budget = int(step_budget or task.step_budget)
        self._tracker = SubgoalTracker(task.subgoals)
        self._mask = np.zeros(schema.STATE_DIM, dtype=bool)
        self._mask[: task.state_dim] = True
        self.instruction = task.instruction
        self.world: dict[str, Any] = {}
        self.elapsed_steps = 0
        self._done = True

    @property
    def subgoals_reached(self) -> int:
        return self._tracker.count

    @property
    def num_subgoals(self) -> int:
        return self.task.num_subgoals

    def _observe(self, state: np.ndarray) -> Obs:
        obs: Obs = {
            "state": pad_state(np.asarray(state)),
            "state_mask": self._mask.copy(),
            "proprio": proprio_vector(self.world),
        }
        if self.render:
            frame = self.ogb_env.render(camera=RENDER_CAMERA)
            obs["image"] = np.ascontiguousarray(frame, dtype=np.uint8)
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "subgoals": self._tracker.count,
            "num_subgoals": self.task.num_subgoals,
            "success": bool(self.world["success"]),
            "instruction": self.instruction,
            "elapsed_steps": self.elapsed_steps,
        }

    def _canonicalize_solver_state(self) -> None:
        """Clears what OGBench's reset leaves behind from its *unseeded* goal-settling steps.

        OGBench settles the goal scene with a few random actions from an unseeded action space, then restores
        qpos/qvel but not the controls or the constraint solver's warm start. A different warm start changes the
        first contact solves slightly, and over hundreds of contact-rich steps that decides whether a dropped
        cube lands in or next to the drawer: episodes were not reproducible from their seed (measured).
        """
        data = self.ogb_env._data
        data.ctrl[:] = 0.0
        data.qacc_warmstart[:] = 0.0
        mujoco.mj_forward(self.ogb_env._model, data)

    def reset(self, seed: int | None = None, *, instruction: str | None = None) -> tuple[Obs, dict[str, Any]]:
        """Starts an episode: the task's fixed scene with OGBench's seeded jitter and arm pose."""
        if seed is None:
            seed, self._first_seed = self._first_seed, None
        with warnings.catch_warnings():
            # OGBench's reset samples a few settling actions from a float64 Box; gymnasium warns about it.
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            state, info = self.ogb_env.reset(seed=seed, options={"task_info": self.task.task_info})
        if self.render:
            # Camera frames without shadows or multisampling (OGBench builds its renderer at the first frame, from
            # these settings): on a software renderer (Mesa llvmpipe, CPU machines) the two lights' shadow maps
            # and 4x MSAA were ~85% of the frame time (137 -> 22 ms per 64x64 step, busy 2-core machine); a
            # 64x64 policy input loses little by them.
            model = self.ogb_env._model
            model.vis.quality.offsamples = 0
            model.light_castshadow[:] = 0
        self._canonicalize_solver_state()
        self.world = dict(info, success=False)
        self._tracker.reset()
        self._tracker.update(self.world)
        self.instruction = instruction if instruction is not None else pick_instruction(self.task, seed)
        self.elapsed_steps = 0
        self._done = False
        return self._observe(state), self._info()

    def step(self, action: np.ndarray) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        """One control step (20 Hz). Returns obs, reward, terminated (success), truncated (budget), info."""
        if self._done:
            raise RuntimeError(f"task {self.task.name!r}: step() called on a finished episode; call reset() first")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (schema.ACTION_DIM,) or not np.all(np.isfinite(action)):
            raise ValueError(
                f"task {self.task.name!r}: action must be {schema.ACTION_DIM} finite numbers, got {action}"
            )
        action = np.clip(action, schema.ACTION_LOW, schema.ACTION_HIGH)
        state, _, _, _, info = self.ogb_env.step(action)
        self.elapsed_steps += 1
        self.world = dict(info, success=bool(info["success"]))
        self._tracker.update(self.world)
        terminated = bool(self.world["success"])
        truncated = not terminated and self.elapsed_steps >= self.step_budget
        self._done = terminated or truncated
        reward = SUCCESS_REWARD if terminated else 0.0
        return self._observe(state), reward, terminated, truncated, self._info()


def make_env(task_name: str, seed: int | None = None, render: bool = False, step_budget: int | None = None) -> SimEnv:
    """Builds the env of `task_name` (KeyError naming it if unknown); `seed` seeds its first reset()."""
    return SimEnv(get_task(task_name), render=render, step_budget=step_budget, seed=seed)
