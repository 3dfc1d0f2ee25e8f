"""Where fleet episodes go on the learner: an RLDS dataset on disk (truth) and the online replay buffer (RAM).

Why both, in this order: the servicer acknowledges an episode only after `persist` returned, so the RLDS
shard is durable before the robot deletes its spooled copy; `on_accept` then cuts the episode into chunked
n-step transitions for the online buffer. A restarted learner calls `rebuild()`: it replays the dataset into
a fresh buffer and returns the acknowledged episode ids, which seed the servicer's dedupe set, so a robot
that re-sends an episode whose ack was lost gets `duplicate` and nothing is stored twice.

Memory stays bounded however long the fleet runs (issue 16): the replay buffers have a capacity, and the
per-episode fleet log (the curves' data) goes to a JSONL file beside the dataset, `<rlds_dir>.episodes.jsonl`,
rewritten from the dataset at every start (it is derived data); RAM keeps only the last `recent` records
(the live fleet logs' window) and running counts.

Threading: gRPC handler threads call persist/on_accept (serialized by the servicer), the training thread
samples; a lock guards the buffer and the episode log. Instruction embeddings for new wordings are computed
under the same serialization (see batching.InstructionTable).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode
from fleet_api.wire import episode_digest
from lwd_jax.data.batching import InstructionTable, buffer_columns
from lwd_jax.data.replay import Batch, TransitionBuffer, mixed_batch
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.data.rlds_writer import RLDSWriter
from lwd_jax.data.transitions import chunk_transitions


@dataclasses.dataclass(frozen=True)
class FleetEpisode:
    """What the learner logs of one accepted episode (the x axis of 'success vs fleet episodes')."""

    order: int  # 0, 1, 2, ... in acceptance order (rebuilt in the same order after a restart)
    episode_id: str
    robot_id: str
    task: str
    success: bool
    steps: int
    subgoal_frac: float
    policy_version: int
    intervention_steps: int
    accepted_at: float  # learner wall clock (time.time()) at acceptance; replayed episodes carry the rebuild time


KEEP_MODES = ("all", "human")  # which transitions of an accepted episode enter the online buffer
RECENT_EPISODES = 10_000  # fleet-log records kept in RAM (a window of the live logs; the whole log is on disk)


def human_chunk_mask(intervention: np.ndarray, chunk_len: int) -> np.ndarray:
    """[T] bool: True at start step t when every action of the chunk t .. t+H-1 (within the episode) was human.

    Why whole chunks: HG-DAgger learns the expert's labels only; a chunk that starts autonomously and ends in
    a takeover holds the robot's own (corrected) actions, which BC must not imitate.
    """
    human = np.asarray(intervention, bool)
    t = len(human)
    robot = np.concatenate([[0], np.cumsum(~human)])  # robot[i] = robot-driven steps before i
    ends = np.minimum(np.arange(t) + chunk_len, t)
    return (robot[ends] - robot[:t]) == 0


class FleetStore:
    """The learner's fleet data: `persist` and `on_accept` for the servicer, `sample` for the training loop."""

    def __init__(
        self,
        rlds_dir: str,
        *,
        chunk_len: int,
        n_chunks: int | Mapping[str, int],
        gamma: float,
        task_ids: Mapping[str, int],
        table: InstructionTable,
        capacity: int,
        durable: bool = True,
        keep: str = "all",
        recent: int = RECENT_EPISODES,
        with_image: bool = False,
        embodiment: Embodiment = UR5E,
    ):
        self.rlds_dir = rlds_dir
        self._cut = dict(chunk_len=chunk_len, n_chunks=n_chunks, gamma=gamma, task_ids=dict(task_ids))
        self._table = table
        if keep not in KEEP_MODES:
            raise ValueError(f"FleetStore.keep: expected one of {KEEP_MODES}, got {keep!r}")
        self.keep = keep
        # with_image: the fleet's episodes carry camera frames (an image policy's robots); a new dataset takes
        # that layout, an existing one must already have it (RLDSWriter refuses a mix, naming the field)
        # embodiment: the fleet's body (its widths fix the dataset's layout; RLDSWriter refuses another one's)
        self.embodiment = embodiment
        self.writer = RLDSWriter(rlds_dir, durable=durable, known_tasks=dict(task_ids), with_image=with_image,
                                 embodiment=embodiment)
        self.buffer = TransitionBuffer(capacity)
        # The human-driven chunks again, on their own (a few % of fleet steps): the expert data a base flow can
        # clone beside the RL batch (agent.base_bc_data = "expert"). With keep="human" it is the buffer itself.
        self.human = self.buffer if keep == "human" else TransitionBuffer(capacity)
        if recent < 1:
            raise ValueError(f"FleetStore.recent: expected >= 1 fleet-log records kept in RAM, got {recent}")
        self._recent: collections.deque[FleetEpisode] = collections.deque(maxlen=recent)
        self._count = 0
        self._robot_steps = 0
        self.log_path = rlds_dir.rstrip("/") + ".episodes.jsonl"
        self._log = open(self.log_path, "w")  # derived from the dataset: rebuild() writes it again
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- servicer callbacks

    def persist(self, ep: Episode) -> None:
        """One RLDS shard per episode, durable when this returns (the ack follows)."""
        self.writer.append(ep)

    def on_accept(self, ep: Episode) -> None:
        """Episode -> transitions -> online buffer, and one line in the fleet log."""
        cols = buffer_columns(chunk_transitions(ep, **self._cut), self._table)
        rows = human_chunk_mask(ep.intervention, self._cut["chunk_len"])
        human = {k: v[rows] for k, v in cols.items()}
        if self.keep == "human":  # HG-DAgger aggregates only what the human did
            cols = human
        with self._lock:
            if len(cols["action"]):
                self.buffer.add(cols)
            if self.human is not self.buffer and len(human["action"]):
                self.human.add(human)
            rec = FleetEpisode(
                order=self._count, episode_id=ep.episode_id, robot_id=ep.robot_id, task=ep.task,
                success=bool(ep.success), steps=int(ep.num_steps), subgoal_frac=ep.subgoal_frac,
                policy_version=int(ep.policy_version), intervention_steps=int(ep.intervention.sum()),
                accepted_at=time.time(),
            )
            self._log.write(json.dumps(dataclasses.asdict(rec)) + "\n")
            self._recent.append(rec)
            self._count += 1
            self._robot_steps += rec.steps

    # ---------------------------------------------------------------- restart

    def rebuild(self) -> dict[str, str]:
        """Replays the fleet dataset on disk into the (empty) buffer; returns {episode id: content digest} of
        what is stored (the servicer's dedupe table: a re-upload of an id with other content is refused)."""

        if self.writer.num_episodes == 0:
            return {}
        ids = {}
        for ep in RLDSReader(self.rlds_dir, embodiment=self.embodiment).episodes():
            self.on_accept(ep)
            ids[ep.episode_id] = episode_digest(ep)
        return ids

    def close(self) -> None:
        with self._lock:
            self._log.close()
        self.writer.close()

    # ---------------------------------------------------------------- training side

    def __len__(self) -> int:
        """Fleet episodes accepted (rebuilt ones included)."""
        with self._lock:
            return self._count

    def robot_steps(self) -> int:
        """Robot control steps of every accepted episode (autonomous and human-driven alike)."""
        with self._lock:
            return self._robot_steps

    def num_transitions(self) -> int:
        with self._lock:
            return len(self.buffer)

    def sample(self, rng: np.random.Generator, offline: TransitionBuffer, n: int, online_fraction: float,
               balanced: bool = True) -> Batch:
        """A batch of `n`: `online_fraction` from the fleet buffer (once it has data), the rest offline. The
        lock is held only while fleet rows are read (the offline part is built beside the servicer's threads)."""
        return mixed_batch(rng, offline, self.buffer, n, online_fraction, balanced=balanced, online_lock=self._lock)

    def num_human_transitions(self) -> int:
        with self._lock:
            return len(self.human)

    def sample_expert(self, rng: np.random.Generator, demos: TransitionBuffer, n: int, balanced: bool = True) -> Batch:
        """A batch of `n` from the demos and the fleet's human-driven chunks, every stored transition of the two
        equally likely: the aggregate HG-DAgger clones (D ∪ D_human), whatever the RL batch's mix is."""
        with self._lock:
            frac = len(self.human) / max(len(demos) + len(self.human), 1)
        return mixed_batch(rng, demos, self.human, n, frac, balanced=balanced, online_lock=self._lock)

    def snapshot(self) -> list[FleetEpisode]:
        """The last `recent` fleet-log records (all of them in a run shorter than that), oldest first."""
        with self._lock:
            return list(self._recent)

    def history(self) -> Iterator[FleetEpisode]:
        """Every fleet-log record in acceptance order, read from the log file (the plots' data)."""
        with self._lock:
            if not self._log.closed:
                self._log.flush()
        with open(self.log_path) as f:
            for line in f:
                yield FleetEpisode(**json.loads(line))


def fleet_summary(episodes: list[FleetEpisode], window: int, tasks: list[str] | None = None,
                  robots: set[str] | None = None) -> dict[str, Any]:
    """Per-task success / step-wise score / cycle time over the last `window` episodes of each task.

    `robots` restricts to episodes from those robots (e.g. the ones without a human attendant, whose
    success is the policy's own).
    """
    eps = [e for e in episodes if robots is None or e.robot_id in robots]
    out: dict[str, Any] = {}
    for task in tasks or sorted({e.task for e in eps}):
        recent = [e for e in eps if e.task == task][-window:]
        if not recent:
            continue
        wins = [e.steps for e in recent if e.success]
        out[task] = {
            "episodes": len(recent),
            "success": float(np.mean([e.success for e in recent])),
            "score": float(np.mean([e.subgoal_frac for e in recent])),
            "cycle_steps": float(np.mean(wins)) if wins else float("nan"),
        }
    return out
