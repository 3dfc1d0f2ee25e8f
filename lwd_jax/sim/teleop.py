"""The simulated teleoperator: the "human" of the fleet who takes over a policy rollout when it goes wrong.

Why simulate it: human-in-the-loop RL (HIL-SERL-style) learns from interventions — the corrective segments
are near-expert data right where the policy is weakest — and the online loop, the bridge and the intervention
flags in the episode schema all need a human to exist. Here the human is the task's scripted expert.

The rule (checked every step, before the policy acts; cheap, privileged state only):
  Take over when either
    (a) progress stalls: no new sub-goal for `patience_steps` consecutive policy-controlled steps, or
    (b) a failure is imminent:
        - a cube is dropped: it is above `fall_height` m, moving down faster than `fall_speed` m/s, and the
          gripper is not in contact with anything (a held cube never "falls"; a placed cube is below the height);
        - a cube is leaving the workspace: its xy is outside the arm's workspace by more than
          `workspace_margin` m (unless it is stored in the drawer), or it fell below the table top.
  While in control it drives with a clean scripted expert resumed from the current state (the expert continues
  the task plan at the latched sub-goal count, first repairing what the policy undid: a re-locked or shut drawer,
  a cube in the drawer's path, a knocked-over stack base) and hands back as soon as the sub-goal count rises above the
  count at takeover — "fix the current stage, then let the robot try again" — or after `max_control_steps`
  (a human does not hold on forever; the stall rule may take over again later). After a hand-back the stall
  clock restarts. Every step's `intervention` flag is True exactly when the teleoperator chose the action.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lwd_jax.sim.env import Obs, SimEnv
from lwd_jax.sim.experts import ExpertConfig, ScriptedExpert
from lwd_jax.sim.skills import GRIPPER_OPEN_CONTACT, World
from lwd_jax.sim.tasks import CubeInDrawer

TELEOP_STREAM = 3  # seed-sequence stream of the teleoperator's expert
TABLE_Z = 0.0  # cube centre below this: it fell off the table


@dataclasses.dataclass(frozen=True)
class TeleopConfig:
    """When the simulated human takes over, and how long it may keep control."""

    # 5 s at 20 Hz. The clean expert's longest stretch without a new sub-goal is 30-80 steps (measure_experts'
    # "max steps between sub-goals"), so a policy about as quick as the expert is not interrupted for being slow.
    patience_steps: int = 100
    fall_speed: float = 0.25  # m/s downward
    fall_height: float = 0.10  # m; above any support height of the suite (table 0.02, drawer 0.066, stack 0.06)
    workspace_margin: float = 0.02  # m
    max_control_steps: int = 300
    expert: ExpertConfig = ExpertConfig()  # the human's own driving: clean by default


def cube_indices(world: World) -> list[int]:
    """Indices of the cubes present in this scene's info dict."""
    return sorted(int(k.split("_")[1]) for k in world if k.startswith("privileged/block_") and k.endswith("_pos"))


def imminent_failure(env: SimEnv, world: World, config: TeleopConfig) -> str | None:
    """'drop' / 'out_of_workspace' when a cube is being dropped or leaving the workspace, else None."""
    lo, hi = np.asarray(env.ogb_env._workspace_bounds)
    holding = float(world["proprio/gripper_contact"][0]) >= GRIPPER_OPEN_CONTACT
    has_drawer = "privileged/drawer_handle_pos" in world
    for i in cube_indices(world):
        pos = np.asarray(world[f"privileged/block_{i}_pos"])
        if has_drawer and CubeInDrawer(i)(world):
            continue  # stored in the drawer (which reaches past the workspace edge when closed)
        if np.any(pos[:2] < lo[:2] - config.workspace_margin) or np.any(pos[:2] > hi[:2] + config.workspace_margin):
            return "out_of_workspace"
        if pos[2] < TABLE_Z:
            return "out_of_workspace"
        vz = float(env.ogb_env._data.joint(f"object_joint_{i}").qvel[2])
        if not holding and pos[2] > config.fall_height and vz < -config.fall_speed:
            return "drop"
    return None


class Teleoperator:
    """Watches one env's rollout; `select(obs)` returns its action when it is in control, else None.

    `events` records (step, "takeover:<reason>") and (step, "handback").
    """

    def __init__(self, env: SimEnv, config: TeleopConfig | None = None, seed: int | None = None):
        self.env = env
        self.config = config or TeleopConfig()
        self.expert = ScriptedExpert(env, self.config.expert, seed, stream=TELEOP_STREAM)
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Call after env.reset(): the policy starts in control."""
        if seed is not None:
            self.expert = ScriptedExpert(self.env, self.config.expert, seed, stream=TELEOP_STREAM)
        self.in_control = False
        self.events: list[tuple[int, str]] = []
        self._last_count = self.env.subgoals_reached
        self._steps_without_progress = 0
        self._count_at_takeover = 0
        self._control_steps = 0

    def takeover_reason(self, world: World) -> str | None:
        """Why the human would take over now ('stall' / 'drop' / 'out_of_workspace'), or None."""
        if self._steps_without_progress >= self.config.patience_steps:
            return "stall"
        return imminent_failure(self.env, world, self.config)

    def _hand_back(self) -> None:
        self.in_control = False
        self._steps_without_progress = 0
        self.events.append((self.env.elapsed_steps, "handback"))

    def select(self, obs: Obs) -> np.ndarray | None:
        """Called before every env step. Returns the human's action if it is in control, else None."""
        world = self.env.world
        count = self.env.subgoals_reached
        if count > self._last_count:
            self._steps_without_progress = 0
        self._last_count = count
        if self.in_control:
            done = count > self._count_at_takeover or self._control_steps >= self.config.max_control_steps
            if done:
                self._hand_back()
        else:
            reason = self.takeover_reason(world)
            if reason is not None:
                self.in_control = True
                self._count_at_takeover = count
                self._control_steps = 0
                self.expert.reset(inject_failures=False)
                self.events.append((self.env.elapsed_steps, f"takeover:{reason}"))
        if not self.in_control:
            self._steps_without_progress += 1
            return None
        self._control_steps += 1
        return self.expert(obs)

    @property
    def num_takeovers(self) -> int:
        return sum(1 for _, e in self.events if e.startswith("takeover"))
