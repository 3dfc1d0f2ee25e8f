"""The learner's input pipeline: the batches of the next calls are built (and handed to the devices) on a
background thread while the current update runs.

Why: the training thread used to sample, normalise, stack and transfer every batch between two updates,
serially with them (issue 17). On the main job's config that host-side build costs 2-8% of an update on a
2-core CPU (measured: 9.5 ms a call against 118 ms BC, 333 ms critic-only, 493 ms full updates) and far
more of an accelerator's update, which is the same milliseconds against a much faster step.

What stays the same: a batch is a function of the step it is built for (`Phase.batches(step)`), so the
offline stages train on exactly the batches they would have without the thread, and resume is still bit
for bit. The online stage's batches wait for fleet episodes (pacing) inside `batches(step)`; built one call
ahead, a batch may miss an episode that lands during the update in flight, the same staleness a robot's
policy already has. `depth` calls at most are built and not yet trained on (1: the next one); `depth = 0` builds each batch in the caller's thread, as before (a debugging switch).

Errors in the build (a failed fleet, a bad batch) are raised by `get` on the training thread, at the step
they belong to. Closing (the phase ended, a stop request) tells the thread to stop after the build in
flight; a build blocked waiting for fleet data returns on its own when the stage is finishing (see
online._wait_for), and the thread is a daemon, so nothing outlives the process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

Batches = dict[str, Any]

_POLL_S = 0.1  # how often a thread waiting for a slot, or a get waiting for a batch, re-checks


class Prefetcher:
    """Yields `build(step)` for step = start, start + stride, ... < end, at most `depth` calls built ahead.

    With depth 1 (the default) the next call's batch is built while the current update runs: all the overlap
    there is, and the least staleness (an episode accepted now is in a batch built within one call).

    `place(batches)` runs on the same thread after the build (the agent's device placement, so the transfer
    overlaps the update too). Use `get(step)` in step order; `close()` (or the context manager) ends it.
    """

    def __init__(self, build: Callable[[int], Batches], start: int, stride: int, end: int, depth: int = 1,
                 place: Callable[[Batches], Batches] | None = None):
        if stride < 1:
            raise ValueError(f"Prefetcher: stride must be >= 1, got {stride}")
        if depth < 0:
            raise ValueError(f"Prefetcher: depth (config.prefetch_batches) must be >= 0, got {depth}")
        self._build, self._place = build, place or (lambda b: b)
        self._next, self._stride, self._end, self.depth = int(start), int(stride), int(end), int(depth)
        self._closed = threading.Event()
        self._queue: queue.Queue = queue.Queue()
        self._slots = threading.Semaphore(depth)  # released by `get`: the build of a call starts when one is free
        self._thread: threading.Thread | None = None
        if depth > 0 and start < end:
            self._thread = threading.Thread(target=self._work, args=(int(start),), name="lwd-prefetch", daemon=True)
            self._thread.start()

    def _work(self, step: int) -> None:
        while step < self._end:
            while not self._slots.acquire(timeout=_POLL_S):  # at most `depth` calls built and not yet taken
                if self._closed.is_set():
                    return
            if self._closed.is_set():
                return
            try:
                item: tuple[int, Any, BaseException | None] = (step, self._place(self._build(step)), None)
            except BaseException as e:  # handed to the training thread, which raises it at this step
                item = (step, None, e)
            self._queue.put(item)  # never blocks: a slot was free
            if item[2] is not None:
                return
            step += self._stride

    def get(self, step: int) -> Batches:
        """The batches of the call starting at `step` (the next one in order), blocking until they are built."""
        if step != self._next:
            raise ValueError(f"Prefetcher: asked for step {step}, the next call in order starts at {self._next}")
        if step >= self._end:
            raise ValueError(f"Prefetcher: step {step} is at or past the phase's end ({self._end})")
        self._next += self._stride
        if self._thread is None:
            return self._place(self._build(step))
        while True:
            try:
                built, batches, error = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError(f"Prefetcher: the build thread ended before step {step}") from None
        self._slots.release()
        if error is not None:
            raise error
        assert built == step, (built, step)
        return batches

    def close(self) -> None:
        """Stops the thread after its build in flight and drops what it built ahead."""
        self._closed.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
