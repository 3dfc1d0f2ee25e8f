"""Replay buffers of chunked n-step transitions and the offline/online, per-task batch mixer.

Why in-memory numpy columns: on a 2-core learner the update step is the bottleneck, and a batch gather
from contiguous arrays costs microseconds, while reading RLDS per batch would cost milliseconds. The RLDS
files on disk stay the source of truth (a restarted learner rebuilds these buffers from them).

Task balance: long tasks yield fewer, longer episodes and rare tasks few of either; sampling a task
first (uniform over the tasks present, or by given weights) and then a transition within it keeps them
from being drowned, as ALGORITHMS.md asks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager

import numpy as np

Batch = dict[str, np.ndarray]


class TransitionBuffer:
    """Columns of transitions (`dict[str, array]`, leading axis = transition), FIFO once at capacity.

    Every added block must carry the same keys, trailing shapes and dtypes as the first one and a
    `task_id` column; a mismatch raises naming the key, and the buffer is left as it was.
    """

    def __init__(self, capacity: int, task_key: str = "task_id"):
        if capacity < 1:
            raise ValueError(f"replay: capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.task_key = task_key
        self._cols: dict[str, np.ndarray] = {}
        self._size = 0
        self._cursor = 0  # next write position (ring)
        self._added = 0  # total transitions ever added (a checkpointable cursor)
        self._task_index: dict[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._size

    @property
    def total_added(self) -> int:
        """Transitions ever added, including evicted ones (saved in checkpoints as the data cursor)."""
        return self._added

    def _check_block(self, block: Mapping[str, np.ndarray]) -> int:
        if self.task_key not in block:
            raise KeyError(f"replay: added block lacks the '{self.task_key}' column")
        n = len(block[self.task_key])
        for k, v in block.items():
            if len(v) != n:
                raise ValueError(f"replay: column '{k}' has {len(v)} rows, expected {n} like '{self.task_key}'")
        if self._cols:
            if set(block) != set(self._cols):
                raise KeyError(f"replay: columns {sorted(set(block) ^ set(self._cols))} differ from the buffer's")
            for k, v in block.items():
                want = self._cols[k]
                if v.shape[1:] != want.shape[1:] or v.dtype != want.dtype:
                    raise ValueError(
                        f"replay: column '{k}' expected {want.dtype}{list(want.shape[1:])}, got {v.dtype}{list(v.shape[1:])}"
                    )
        return n

    def add(self, block: Mapping[str, np.ndarray]) -> None:
        """Appends a block of transitions; the oldest ones are overwritten when full."""
        block = {k: np.asarray(v) for k, v in block.items()}
        n = self._check_block(block)
        if n == 0:
            return
        if not self._cols:
            self._cols = {k: np.zeros((self.capacity, *v.shape[1:]), v.dtype) for k, v in block.items()}
        if n > self.capacity:  # only the newest `capacity` rows can survive anyway
            block = {k: v[-self.capacity :] for k, v in block.items()}
            self._added += n - self.capacity
            n = self.capacity
        idx = (self._cursor + np.arange(n)) % self.capacity
        for k, v in block.items():
            self._cols[k][idx] = v
        self._cursor = int((self._cursor + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)
        self._added += n
        self._task_index = None

    def skip(self, n: int) -> None:
        """Advances the ring as if `n` rows had been added, without their data: a restart that replays only the
        newest rows (`FleetStore.rebuild`) skips the older ones, which those newest rows overwrite anyway,
        and ends in the same layout (rows, cursor, size, total added) as replaying everything."""
        if n < 0:
            raise ValueError(f"replay: cannot skip {n} rows")
        self._cursor = int((self._cursor + n) % self.capacity)
        self._size = min(self._size + n, self.capacity)
        self._added += n
        self._task_index = None

    def tasks(self) -> dict[int, np.ndarray]:
        """Row indices per task id, rebuilt lazily after adds."""
        if self._task_index is None:
            ids = self._cols[self.task_key][: self._size] if self._cols else np.zeros(0, np.int32)
            self._task_index = {int(t): np.flatnonzero(ids == t) for t in np.unique(ids)}
        return self._task_index

    def sample_indices(
        self, rng: np.random.Generator, n: int, task_weights: Mapping[int, float] | None = None, balanced: bool = True
    ) -> np.ndarray:
        """`n` row indices: uniform over rows, or task first (by `task_weights`, default uniform) then row."""
        if self._size == 0:
            raise ValueError("replay: cannot sample from an empty buffer")
        if not balanced:
            return rng.integers(0, self._size, size=n)
        per_task = self.tasks()
        ids = np.array(sorted(per_task))
        w = np.array([float((task_weights or {}).get(int(t), 1.0)) for t in ids])
        if w.sum() <= 0:
            raise ValueError(f"replay: task weights {dict(zip(ids.tolist(), w.tolist(), strict=True))} sum to zero")
        which = rng.choice(len(ids), size=n, p=w / w.sum())
        out = np.empty(n, np.int64)
        for j in np.unique(which):
            rows = per_task[int(ids[j])]
            sel = which == j
            out[sel] = rows[rng.integers(0, len(rows), size=int(sel.sum()))]
        return out

    def gather(self, idx: np.ndarray) -> Batch:
        """The rows `idx` of every column."""
        return {k: v[idx] for k, v in self._cols.items()}

    def sample(self, rng: np.random.Generator, n: int, **kw) -> Batch:
        return self.gather(self.sample_indices(rng, n, **kw))


def mixed_batch(
    rng: np.random.Generator,
    offline: TransitionBuffer,
    online: TransitionBuffer | None,
    batch_size: int,
    online_fraction: float,
    balanced: bool = True,
    task_weights: Mapping[int, float] | None = None,
    online_lock: AbstractContextManager | None = None,
) -> Batch:
    """One batch, `online_fraction` of it from the online buffer (while it has data), the rest offline.

    The split is fixed per batch (not sampled) so the ratio the config states is the ratio trained on.
    `online_lock` guards the online buffer (gRPC threads add to it): held only while its size is read and its
    rows are copied out, never across the offline part (issue 17: the training thread's batch build must not
    keep the servicer waiting). A buffer only grows, so the split decided first stays valid.
    """
    if not 0.0 <= online_fraction <= 1.0:
        raise ValueError(f"mixed_batch: online_fraction must be in [0, 1], got {online_fraction}")
    lock = online_lock if online_lock is not None else contextlib.nullcontext()
    with lock:
        n_on = int(round(batch_size * online_fraction)) if online is not None and len(online) else 0
    parts = []
    if batch_size - n_on:
        parts.append(offline.sample(rng, batch_size - n_on, task_weights=task_weights, balanced=balanced))
    if n_on:
        with lock:
            parts.append(online.sample(rng, n_on, task_weights=task_weights, balanced=balanced))
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
