"""The one episode schema shared by the simulator, the RLDS writer/reader, the bridge and the learner.

Why one module: every edge that accepts an episode (data generation, RLDS read, gRPC ingest) validates
against the same definition, so a shape or dtype mistake is caught where it enters, with the field named,
instead of deep inside a jitted update.

RLDS step convention (the same as the public RLDS datasets): an episode of T actions is stored as T + 1
steps. Step t holds observation s_t, the action a_t taken from it and the reward r_t received for it.
The final step (``is_last``) holds the final observation s_T with a zero action and zero reward; it is
``is_terminal`` only when the episode ended in a true terminal state (success), never on a time-out.
In memory (`Episode`) we keep the T + 1 observations and the T actions/rewards without padding.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment

# The simulated suite's sizes (its embodiment, `embodiment.UR5E`). Another robot brings its own `Embodiment`
# and passes it where episodes are checked (`validate_episode`, the servicer, the RLDS writer and reader).
ACTION_DIM = UR5E.action_dim  # manipspace action: dx, dy, dz, dyaw, gripper; bounds [-1, 1].
STATE_DIM = UR5E.state_dim  # task state, zero-padded to this size for every task; `state_mask` marks the real part.
PROPRIO_DIM = UR5E.proprio_dim  # arm/gripper proprioception, the same layout for every task (lwd_jax/sim/env.py).
IMAGE_SHAPE = UR5E.image_shape  # optional camera image (only when rendering is available).
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
# Episode ids of fleet uploads are uuid4 hex (what `Episode` mints): the idempotency key of an upload and a
# file name on both sides, so the wire accepts nothing else (offline datasets keep their own ids).
EPISODE_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# |reward| above this is a recorder bug, not a reward (finite is not enough: 3e38 would poison the critic).
# The learner may pass its own bound (FleetServicer(max_abs_reward=...)).
DEFAULT_MAX_ABS_REWARD = 1e3
MAX_SUBGOALS = 1_000
# Per-field (dtype, row shape) of the wire and of RLDS for the simulated UR5e: what a header may declare, checked
# before any payload (another body: `Embodiment.field_layout()`).
FIELD_LAYOUT: dict[str, tuple[str, tuple[int, ...]]] = UR5E.field_layout()


class Source(str, enum.Enum):
    """Where an episode came from; stored in `episode_metadata/source`."""

    DEMO = "demo"  # scripted expert at zero or small noise
    ROLLOUT = "rollout"  # a policy's autonomous rollout (noisy expert offline, the fleet online)
    EXPLORATION = "exploration"  # deliberate exploration / injected failure modes
    INTERVENTION = "intervention"  # a rollout in which the (simulated) human took over at least once


class SchemaError(ValueError):
    """An episode (or one of its fields) does not match the schema.

    The message always names the field, what was expected and what was received, and — where known — the
    dataset and episode, so a user can find the bad record without a debugger.
    """


@dataclasses.dataclass
class Episode:
    """One whole episode in memory. Shapes: T actions, T + 1 observations.

    observation: dict with
      state:      [T+1, STATE_DIM] float32 (zero-padded task state)
      state_mask: [T+1, STATE_DIM] bool    (True on the task's real state entries)
      proprio:    [T+1, PROPRIO_DIM] float32
      image:      [T+1, 64, 64, 3] uint8   (optional)
    action:       [T, ACTION_DIM] float32
    reward:       [T] float32
    intervention: [T] bool (True where the human/teleoperator chose the action)
    subgoals:     [T+1] int32, number of the task's sub-goals reached so far (for the step-wise score)
    terminal:     the episode ended in a true terminal state (success) rather than a time-out
    """

    observation: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    intervention: np.ndarray
    subgoals: np.ndarray
    terminal: bool
    language_instruction: str
    task: str
    robot_id: str = "sim-0"
    policy_version: int = 0
    source: str = Source.DEMO.value
    success: bool = False
    num_subgoals: int = 1
    episode_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def num_steps(self) -> int:
        """Number of actions taken (T)."""
        return int(self.action.shape[0])

    @property
    def subgoal_frac(self) -> float:
        """Fraction of the task's sub-goals reached by the end: the paper's step-wise score of this episode."""
        return float(self.subgoals[-1]) / max(int(self.num_subgoals), 1)

    def metadata(self) -> dict[str, Any]:
        """The `episode_metadata` written to RLDS."""
        return {
            "episode_id": self.episode_id,
            "task": self.task,
            "robot_id": self.robot_id,
            "policy_version": int(self.policy_version),
            "source": self.source,
            "success": bool(self.success),
            "num_subgoals": int(self.num_subgoals),
        }


def _check_array(
    where: str, field: str, value: Any, shape: tuple[int, ...], dtype: np.dtype | type
) -> np.ndarray:
    """Returns `value` as an array after checking shape and dtype kind; raises SchemaError naming `field`."""
    if not isinstance(value, np.ndarray):
        raise SchemaError(f"{where}: field '{field}' must be a numpy array, got {type(value).__name__}")
    if value.shape != shape:
        raise SchemaError(f"{where}: field '{field}' expected shape {shape}, got {value.shape}")
    want = np.dtype(dtype)
    if value.dtype != want:
        raise SchemaError(f"{where}: field '{field}' expected dtype {want}, got {value.dtype}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        bad = np.argwhere(~np.isfinite(value))[0].tolist()
        raise SchemaError(f"{where}: field '{field}' holds a non-finite value at index {bad}")
    return value


def validate_episode(
    ep: Episode,
    *,
    known_tasks: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    max_abs_reward: float = DEFAULT_MAX_ABS_REWARD,
    embodiment: Embodiment = UR5E,
    where: str = "episode",
) -> Episode:
    """Checks every field of `ep` against the schema; returns it unchanged or raises SchemaError.

    `known_tasks` (a task registry) rejects unknown task names; `max_steps` bounds the length, so a
    runaway recorder cannot fill the learner's disk with one episode; `max_abs_reward` bounds rewards;
    `embodiment` gives the widths of actions, state and proprio and the action bounds.
    """
    where = f"{where} {ep.episode_id} (task {ep.task!r})"
    a_dim, s_dim, p_dim = embodiment.action_dim, embodiment.state_dim, embodiment.proprio_dim
    if known_tasks is not None and ep.task not in known_tasks:
        raise SchemaError(f"{where}: field 'task' names an unknown task {ep.task!r}; known: {sorted(known_tasks)}")
    if not isinstance(ep.action, np.ndarray) or ep.action.ndim != 2:
        raise SchemaError(f"{where}: field 'action' expected a [T, {a_dim}] array, got {getattr(ep.action, 'shape', type(ep.action))}")
    t = ep.action.shape[0]
    if t < 1:
        raise SchemaError(f"{where}: field 'action' expected at least 1 step, got 0")
    if max_steps is not None and t > max_steps:
        raise SchemaError(f"{where}: field 'action' expected at most {max_steps} steps, got {t}")
    if ep.action.ndim == 2 and ep.action.shape[1] != a_dim:
        raise SchemaError(f"{where}: field 'action' expected {a_dim}-d actions (embodiment {embodiment.describe()}), "
                          f"got {ep.action.shape[1]}-d")
    _check_array(where, "action", ep.action, (t, a_dim), np.float32)
    low, high = np.asarray(embodiment.action_low, np.float32), np.asarray(embodiment.action_high, np.float32)
    outside = (ep.action < low - 1e-5) | (ep.action > high + 1e-5)
    if np.any(outside):
        dim = int(np.argwhere(outside)[0][1])
        raise SchemaError(f"{where}: field 'action' expected values in [{low[dim]:g}, {high[dim]:g}] in dimension {dim}, "
                          f"got {ep.action[:, dim].min():.3f} .. {ep.action[:, dim].max():.3f}")
    _check_array(where, "reward", ep.reward, (t,), np.float32)
    _check_array(where, "intervention", ep.intervention, (t,), np.bool_)
    _check_array(where, "subgoals", ep.subgoals, (t + 1,), np.int32)
    if np.abs(ep.reward).max() > max_abs_reward:
        raise SchemaError(f"{where}: field 'reward' expected |r| <= {max_abs_reward:g}, got {np.abs(ep.reward).max():.3g}")
    if not isinstance(ep.num_subgoals, int | np.integer) or not 0 <= int(ep.num_subgoals) <= MAX_SUBGOALS:
        raise SchemaError(f"{where}: field 'num_subgoals' expected an int in [0, {MAX_SUBGOALS}], got {ep.num_subgoals!r}")
    if ep.subgoals.min() < 0 or ep.subgoals.max() > int(ep.num_subgoals):
        raise SchemaError(f"{where}: field 'subgoals' expected counts in [0, num_subgoals={ep.num_subgoals}], "
                          f"got [{ep.subgoals.min()}, {ep.subgoals.max()}]")
    obs = ep.observation
    if not isinstance(obs, dict):
        raise SchemaError(f"{where}: field 'observation' must be a dict, got {type(obs).__name__}")
    for key in ("state", "state_mask", "proprio"):
        if key not in obs:
            raise SchemaError(f"{where}: field 'observation/{key}' is missing")
    _check_array(where, "observation/state", obs["state"], (t + 1, s_dim), np.float32)
    _check_array(where, "observation/state_mask", obs["state_mask"], (t + 1, s_dim), np.bool_)
    _check_array(where, "observation/proprio", obs["proprio"], (t + 1, p_dim), np.float32)
    if "image" in obs:
        _check_array(where, "observation/image", obs["image"], (t + 1, *embodiment.image_shape), np.uint8)
    extra = set(obs) - {"state", "state_mask", "proprio", "image"}
    if extra:
        raise SchemaError(f"{where}: field 'observation' has unknown keys {sorted(extra)}")
    if not isinstance(ep.language_instruction, str) or not ep.language_instruction.strip():
        raise SchemaError(f"{where}: field 'language_instruction' must be a non-empty string")
    if ep.source not in {s.value for s in Source}:
        raise SchemaError(f"{where}: field 'source' expected one of {[s.value for s in Source]}, got {ep.source!r}")
    if ep.terminal and not ep.success:
        raise SchemaError(f"{where}: field 'terminal' is True but 'success' is False (only success terminates)")
    return ep


STEP_FIELDS = ("action", "reward", "intervention", "subgoals")
META_FIELDS = (
    "terminal",
    "language_instruction",
    "task",
    "robot_id",
    "policy_version",
    "source",
    "success",
    "num_subgoals",
    "episode_id",
)


def as_action_chunk(raw: Any, where: str, action_dim: int = ACTION_DIM) -> np.ndarray:
    """A policy's output as an [H, action_dim] float32 chunk; raises ValueError naming the bad shape.

    Why here: the simulator's recorder and the robot's runner both execute policy chunks, and a wrongly
    shaped output must fail the same way in both (never be reshaped into some other chunk).
    """
    chunk = np.asarray(raw, dtype=np.float32)
    if chunk.ndim == 1:
        chunk = chunk[None]
    if chunk.ndim != 2 or chunk.shape[0] < 1 or chunk.shape[1] != action_dim:
        raise ValueError(f"{where}: policy must return [{action_dim}] or [H, {action_dim}], got {np.shape(raw)}")
    return chunk


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def assemble_episode(
    observation: dict[str, np.ndarray], steps: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Episode:
    """An `Episode` from per-step arrays (`STEP_FIELDS`, as given: no dtype conversion, so validation still
    sees what arrived) and metadata scalars (`META_FIELDS`; bytes decoded as UTF-8).

    Why one constructor: RLDS records, gRPC messages and spool files all carry the same two halves, and the
    meaning of each metadata field must not drift between those readers.
    """
    return Episode(
        observation=observation,
        **{k: steps[k] for k in STEP_FIELDS},
        terminal=bool(meta["terminal"]),
        language_instruction=_text(meta["language_instruction"]),
        task=_text(meta["task"]),
        robot_id=_text(meta["robot_id"]),
        policy_version=int(meta["policy_version"]),
        source=_text(meta["source"]),
        success=bool(meta["success"]),
        num_subgoals=int(meta["num_subgoals"]),
        episode_id=_text(meta["episode_id"]),
    )
