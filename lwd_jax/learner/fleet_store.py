"""Where fleet episodes go on the learner: an RLDS dataset on disk (truth) and the online replay buffer (RAM).

Why both, in this order: the servicer acknowledges an episode only after `persist` returned, so the RLDS
shard is durable before the robot deletes its spooled copy; `on_accept` then cuts the episode into chunked
n-step transitions for the online buffer. A restarted learner calls `rebuild()`: it restores the buffers from
the dataset and returns the acknowledged episode ids with their digests, which seed the servicer's dedupe
table, so a robot that re-sends an episode whose ack was lost gets `duplicate` and nothing is stored twice.

Memory stays bounded however long the fleet runs (issue 16): the replay buffers have a capacity, and the
per-episode fleet log (the curves' data) goes to a JSONL file beside the dataset, `<rlds_dir>.episodes.jsonl`;
RAM keeps only the last `recent` records (the live fleet logs' window) and running counts. The log is also
the restart's index (each record: digest, shard, buffer rows), so a restart reads only the episodes the
buffers can still hold; it is derived data, checked against the dataset and rebuilt from it when they differ.

Threading: gRPC handler threads call persist/on_accept (serialized by the servicer), the training thread
samples; a lock guards the buffer and the episode log. Instruction embeddings for new wordings are computed
under the same serialization (see batching.InstructionTable).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
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
from lwd_jax.learner.acked import DEFAULT_WINDOW, AckedIndex


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
    accepted_at: float  # learner wall clock (time.time()) at acceptance (a full replay stamps the rebuild time)
    # What a restart needs without reading the episode (issue 16): its content digest (the dedupe table), its
    # RLDS shard, and the transitions it put in the fleet buffer and in the human-chunk buffer. -1 / "": a
    # record written before these fields (such a log is rebuilt by a full replay).
    digest: str = ""
    shard: int = -1
    rows: int = -1
    human_rows: int = -1


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
        own_dataset: bool = True,
        acked_window: int = DEFAULT_WINDOW,
    ):
        # own_dataset=False: the episodes are stored by ingest replicas (learner/replicas.py) and reach
        # on_accept from a StoreTail; this store then keeps only the buffers and the fleet log (at rlds_dir's
        # log path), and a restart refills them from the tail (rebuild returns nothing to dedupe against).
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
                                 embodiment=embodiment) if own_dataset else None
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
        # the servicer's dedupe index (id -> digest of every stored episode): derived from the dataset and its
        # log, checked and refilled by rebuild(); the newest `acked_window` ids in RAM, the rest in this file
        self.acked_path = rlds_dir.rstrip("/") + ".acked.sqlite"
        self._acked_window = acked_window
        self._acked: AckedIndex | None = None
        self._log: Any = None  # opened by rebuild() (kept, or rewritten), else at the first accept (rewritten)
        self._shard_of: dict[str, int] = {}  # episode id -> its shard, from persist to on_accept
        self._lock = threading.Lock()
        self.rebuild_stats: dict[str, Any] = {}

    # ---------------------------------------------------------------- servicer callbacks

    def persist(self, ep: Episode) -> None:
        """One RLDS shard per episode, durable when this returns (the ack follows). The servicer serialises
        persist/on_accept, so the shard just committed is this episode's."""
        if self.writer is None:
            raise RuntimeError(f"fleet store '{self.rlds_dir}' is fed by ingest replicas: they persist, not the learner")
        self.writer.append(ep)
        self._shard_of[ep.episode_id] = self.writer.num_shards - 1

    def _columns(self, ep: Episode) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(rows for the fleet buffer, rows for the human-chunk buffer) of one episode."""
        cols = buffer_columns(chunk_transitions(ep, **self._cut), self._table)
        human = {k: v[human_chunk_mask(ep.intervention, self._cut["chunk_len"])] for k, v in cols.items()}
        if self.keep == "human":  # HG-DAgger aggregates only what the human did
            cols = human
        return cols, human

    def _add(self, cols: dict[str, np.ndarray], human: dict[str, np.ndarray]) -> None:
        if len(cols["action"]):
            self.buffer.add(cols)
        if self.human is not self.buffer and len(human["action"]):
            self.human.add(human)

    def _record(self, rec: FleetEpisode, write: bool = True) -> None:
        """Counts `rec` (and appends it to the log file unless it is already there). Under the lock."""
        if write:
            if self._log is None:  # no rebuild() before the first accept: a fresh log, as a full replay writes
                self._log = open(self.log_path, "w")
            self._log.write(json.dumps(dataclasses.asdict(rec)) + "\n")
        self._recent.append(rec)
        self._count += 1
        self._robot_steps += rec.steps

    def _fleet_record(self, ep: Episode, cols: dict[str, np.ndarray], human: dict[str, np.ndarray], order: int,
                      shard: int) -> FleetEpisode:
        """The fleet-log record of an episode accepted now, whose buffer rows are `cols` / `human`."""
        return FleetEpisode(
            order=order, episode_id=ep.episode_id, robot_id=ep.robot_id, task=ep.task, success=bool(ep.success),
            steps=int(ep.num_steps), subgoal_frac=ep.subgoal_frac, policy_version=int(ep.policy_version),
            intervention_steps=int(ep.intervention.sum()), accepted_at=time.time(), digest=episode_digest(ep),
            shard=shard, rows=len(cols["action"]), human_rows=len(human["action"]) if self.human is not self.buffer else 0,
        )

    def on_accept(self, ep: Episode, shard: int | None = None) -> None:
        """Episode -> transitions -> online buffer, and one line in the fleet log."""
        cols, human = self._columns(ep)
        shard = self._shard_of.pop(ep.episode_id, -1) if shard is None else shard
        with self._lock:
            self._add(cols, human)
            self._record(self._fleet_record(ep, cols, human, self._count, shard))

    # ---------------------------------------------------------------- restart

    def rebuild(self) -> AckedIndex:
        """Restores the buffers and the fleet log from disk; returns the index {episode id: content digest} of
        what is stored (the servicer's dedupe table: a re-upload of an id with other content is refused), in
        bounded RAM (`AckedIndex`: the newest ids in RAM, every id in a file the servicer keeps adding to).

        Why not always replay everything: that read and cut every episode ever stored (83 s for 48k episodes
        in the soak), though the buffers can hold only the newest `capacity` transitions. The fleet log
        records each episode's digest, shard and buffer rows, so when it agrees with the dataset (one episode
        per shard, in acceptance order) only the episodes the buffers still hold are read: the newest ones
        up to the fleet buffer's capacity, and older ones only for their human-driven chunks, up to that
        buffer's. The rows before them are skipped (`TransitionBuffer.skip`), so the buffers end exactly as a
        full replay leaves them. Episodes committed after the log's last line (a crash between the shard's
        commit and its log line) are read and logged; a torn last line is dropped. A log that does not agree
        (missing, older format, another history) is rebuilt by the full replay, as before.
        """
        t0 = time.perf_counter()
        if self.writer is None:  # the replicas' store is re-read by the tail: a fresh log, nothing to dedupe here
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            self._log = open(self.log_path, "w")
            self.rebuild_stats = {"mode": "tail", "episodes": 0, "episodes_read": 0, "seconds": 0.0}
            return AckedIndex(window=None)
        n = self.writer.num_episodes
        records, valid_bytes = self._logged_records(n)
        if records is None:  # the full replay: every episode (if any), a fresh log
            self._log = open(self.log_path, "w")
            for shard, ep in enumerate(RLDSReader(self.rlds_dir, embodiment=self.embodiment).episodes() if n else []):
                self.on_accept(ep, shard=shard if self.writer.num_shards == n else -1)
            self.rebuild_stats = {"mode": "full replay", "episodes": n, "episodes_read": n,
                                  "seconds": time.perf_counter() - t0}
            return self._acked_index(lambda: ((e.episode_id, e.digest) for e in self.history()), n, None, None)
        kept = len(records)
        with open(self.log_path, "r+") as f:  # cut a torn tail line (and anything after the agreeing prefix)
            f.truncate(valid_bytes)
        self._log = open(self.log_path, "a")
        late = list(range(kept, n))  # committed, never logged: logged now, and read again below if the buffers need them
        if late:  # (rare: a crash between commits and log lines; re-reading them keeps one episode in RAM at a time)
            reader = RLDSReader(self.rlds_dir, embodiment=self.embodiment, shards=late)
            for shard, ep in zip(late, reader.episodes(), strict=True):
                records.append(self._fleet_record(ep, *self._columns(ep), order=shard, shard=shard))
                self._log.write(json.dumps(dataclasses.asdict(records[-1])) + "\n")
            self._log.flush()
        main_from = _tail_start([r.rows for r in records], self.buffer.capacity)
        human_from = _tail_start([r.human_rows for r in records], self.human.capacity) if self.human is not self.buffer else n
        needed = [i for i in range(n) if (i >= main_from and records[i].rows > 0)
                  or (i >= human_from and records[i].human_rows > 0)]  # (an episode that added no rows is not read)
        with self._lock:
            self.buffer.skip(sum(r.rows for r in records[:main_from]))
            if self.human is not self.buffer:
                self.human.skip(sum(r.human_rows for r in records[:human_from]))
            reader = RLDSReader(self.rlds_dir, embodiment=self.embodiment, shards=needed) if needed else None
            for i, ep in zip(needed, reader.episodes() if reader else [], strict=True):
                if ep.episode_id != records[i].episode_id:
                    raise RuntimeError(f"fleet store '{self.rlds_dir}': shard {i} holds episode {ep.episode_id}, the "
                                       f"log says {records[i].episode_id}; move {self.log_path} away to replay all")
                cols, human = self._columns(ep)
                if i >= main_from and len(cols["action"]):
                    self.buffer.add(cols)
                if self.human is not self.buffer and i >= human_from and len(human["action"]):
                    self.human.add(human)
            for rec in records:
                self._record(rec, write=False)
        self.rebuild_stats = {"mode": "log", "episodes": n, "episodes_read": len(needed) + len(late),
                              "late_episodes": len(late), "seconds": time.perf_counter() - t0}
        return self._acked_index(lambda: ((r.episode_id, r.digest) for r in records), n, records[0], records[-1])

    def _acked_index(self, pairs: Any, n: int, first: FleetEpisode | None, last: FleetEpisode | None) -> AckedIndex:
        """The dedupe index, refilled from `pairs()` unless it already agrees with the store: as many ids as
        stored episodes, and the first and last of them with their digests (the cheap checks that catch an
        index that lost its last inserts in a crash, or belongs to another dataset). `first=None`: always refill."""
        t0 = time.perf_counter()
        if self._acked is not None:
            self._acked.close()
        index = self._acked = AckedIndex(self.acked_path, window=self._acked_window)
        agrees = (first is not None and last is not None and len(index) == n
                  and index.lookup(first.episode_id) == (True, first.digest)
                  and index.lookup(last.episode_id) == (True, last.digest))
        if not agrees:
            index.clear()
            index.update(pairs())
        self.rebuild_stats.update(acked_index="kept" if agrees else "refilled", acked_seconds=time.perf_counter() - t0)
        return index

    def _logged_records(self, n: int) -> tuple[list[FleetEpisode] | None, int]:
        """(the fleet log's records that agree with the dataset: record i = shard i = the i-th accepted episode,
        with its digest and row counts; the bytes of the log they occupy), or (None, 0) when the log cannot
        stand for the dataset (full replay)."""
        if n == 0 or self.writer.num_shards != n:  # empty, or not one episode per shard: not a store this class filled
            return None, 0
        try:
            with open(self.log_path, "rb") as f:
                lines = f.readlines()
        except FileNotFoundError:
            lines = []
        if not lines:  # no log (or an empty one) beside a non-empty dataset: nothing to trust
            return None, 0
        out: list[FleetEpisode] = []
        valid = 0
        for i, line in enumerate(lines):
            try:
                rec = FleetEpisode(**json.loads(line))
            except (ValueError, TypeError):
                break  # a torn last line (a crash mid-write): the episodes from here on are read from their shards
            if rec.order != i or rec.shard != i or not rec.digest or rec.rows < 0 or rec.human_rows < 0:
                return None, 0  # an older log format, or another history than the dataset's
            if any(r > self.buffer.capacity for r in (rec.rows, rec.human_rows)):
                return None, 0  # a block larger than the buffer: only a full replay reproduces its layout
            out.append(rec)
            valid += len(line)
        return (out, valid) if len(out) <= n else (None, 0)

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
            if self._acked is not None:
                self._acked.close()
        if self.writer is not None:
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
            if self._log is not None and not self._log.closed:
                self._log.flush()
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path) as f:
            for line in f:
                yield FleetEpisode(**json.loads(line))


def _tail_start(rows: list[int], capacity: int) -> int:
    """The first index of the shortest suffix of `rows` holding at least `capacity` rows (0: all of them)."""
    total = 0
    for i in range(len(rows) - 1, -1, -1):
        total += rows[i]
        if total >= capacity:
            return i
    return 0


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
