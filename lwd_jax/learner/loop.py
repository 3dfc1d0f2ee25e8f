"""The one learner loop every stage runs: BC pretrain, critic warm-up, offline RL and online RL.

Why one loop: logging, finite checks, critic probes, checkpoints, periodic evaluations and parameter
publishing must follow the same cadence whatever the stage, and a stage must differ only in what it
updates and where its batches come from. A `Phase` says exactly that; `Learner.run` runs phases back to
back from the state's step, so resume (from any checkpoint) re-enters the right phase at the right step.

Cadence, with U = updates per jitted call (a step counter that advances by U): an event "every N" fires
on the call that crosses a multiple of N (`step % N < U`); logs, checkpoints and the probe also fire at
the end of every phase, so each phase's last state is logged and saved.

Input: a phase's batches are built ahead on a background thread (`learner/prefetch.py`, depth
`config.prefetch_batches`) and placed on the devices by `place` (the agent's batch sharding), overlapping
the update in flight; a batch is still a function of its step, so what each call trains on is unchanged.

Stopping: `Learner.stop` (an Event the entry points set on SIGTERM/SIGINT) ends the running phase after
the update in flight, as if it were the phase's end: logged and checkpointed, so the same command resumes
from there. A phase's `done()` ends it early the same way (the online stage's wall-clock budget). With
several processes both are agreed after every call (`sharding.any_process`): one host's signal or clock
ends the phase on every host at the same step, so none is left waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import jax

from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.critic_probe import CriticProbe
from lwd_jax.learner.evaluation import EvalCache
from lwd_jax.learner.metrics_log import MetricsLogger, check_finite
from lwd_jax.learner.prefetch import Prefetcher
from lwd_jax.sharding import any_process, host_local

Batches = dict[str, Any]
UpdateFn = Callable[[Any, Batches], tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass
class Phase:
    """One stage of training, from the previous phase's end to `end` (learner updates).

    update(state, batches) -> (state, metrics): the agent's jitted update for this phase.
    batches(step) -> stacked batches [U, B, ...] for the call that starts at `step` (may block: the online
      phase waits for fleet episodes there).
    after_update(state, step): side effects after each call (the online phase publishes params there).
    extra_logs(step) -> scalars logged beside the update's metrics (the fleet's success, ...).
    checkpoint_meta() -> what the phase adds to each checkpoint's JSON record (param version, ...).
    probe: the critic probe runs on this phase's log cadence (not during BC, which trains no critic).
    evaluate_every: periodic policy evaluations during the phase (the RL phases), each stored as
      `evals/<phase>@<step>.json` on the test scenes (a learning curve that pairs with the stage evaluations).
    eval_meta() -> what the phase adds to each periodic evaluation's record (the fleet episodes so far: the
      x of the success-vs-fleet-episodes plot).
    done() -> True ends the phase before `end` (checked after every call).
    updates_per_call: this phase's U when not the learner's (`config.updates_per_call`): the online stage's
      calls can be shorter, so a fleet episode waits less for the next batch built (`online.updates_per_call`).
    """

    name: str
    end: int
    update: UpdateFn
    batches: Callable[[int], Batches]
    after_update: Callable[[Any, int], None] | None = None
    extra_logs: Callable[[int], dict[str, float]] | None = None
    checkpoint_meta: Callable[[], dict[str, Any]] | None = None
    probe: bool = True
    evaluate_every: bool = False
    eval_meta: Callable[[], dict[str, Any]] | None = None
    done: Callable[[], bool] | None = None
    updates_per_call: int | None = None


def due(step: int, every: int, per_call: int) -> bool:
    """True on the call (advancing `step` by `per_call`) that reached or crossed a multiple of `every`."""
    return step % every < per_call


class Learner:
    """Runs phases with one cadence for logs, probes, checkpoints and evaluations (see the module doc)."""

    def __init__(self, cfg: Any, logger: MetricsLogger, ckpt: Checkpointer, probe: CriticProbe | None,
                 evals: EvalCache | None, progress: Any = None, stop: threading.Event | None = None,
                 place: Callable[[Batches], Batches] | None = None):
        self.cfg, self.logger, self.ckpt, self.probe, self.evals, self.progress = cfg, logger, ckpt, probe, evals, progress
        self.u = int(cfg.updates_per_call)
        self.prefetch = int(cfg.get("prefetch_batches", 1))
        self.place = place  # batches -> device arrays (LWDAgent.place_batches), run on the prefetch thread
        self.stop = stop if stop is not None else threading.Event()

    @property
    def stopped(self) -> bool:
        """A stop request on any process (agreed: with several processes a collective, so every process asks
        at the same point of the run, as `experiments.train` does between stages)."""
        if any_process(self.stop.is_set())[0]:
            self.stop.set()
        return self.stop.is_set()

    def run(self, state: Any, phase: Phase) -> Any:
        """Trains from `state.step` to `phase.end` (nothing when already there, or once stopped); returns the state."""
        u = phase.updates_per_call or self.u
        step = int(state.step)
        saved = step  # a stop between calls still leaves the newest update checkpointed
        with Prefetcher(phase.batches, step, u, phase.end, self.prefetch, self.place) as ahead:
            state, step, saved = self._calls(state, phase, step, saved, ahead, u)
        if saved != step:
            self._save(state, step, phase)
        return state

    def _calls(self, state: Any, phase: Phase, step: int, saved: int, ahead: Prefetcher,
               u: int) -> tuple[Any, int, int]:
        """The phase's calls (`u` updates each) from `step` until its end, a stop or `done()`; returns (state,
        step, last saved step)."""
        cfg = self.cfg
        stopping = self.stopped
        while step < phase.end and not stopping:
            state, metrics = phase.update(state, ahead.get(step))
            step += u
            if self.progress is not None:
                self.progress.update(u)
            if phase.after_update is not None:
                phase.after_update(state, step)
            # One decision for every process (a signal or a wall clock seen by one host ends the phase on all)
            stopping, finished = any_process(self.stop.is_set(), phase.done is not None and phase.done())
            if stopping:
                self.stop.set()
            last = step >= phase.end or stopping or finished
            if due(step, cfg.log_every, u) or last:
                scalars = self.logger.log(step, host_local(metrics), prefix=phase.name)  # this host's copy
                check_finite(scalars, step)
                if phase.extra_logs is not None:
                    self.logger.log(step, phase.extra_logs(step))
                if phase.probe and self.probe is not None:
                    self.probe.log(state, step, self.logger)
            if due(step, cfg.checkpoint_every, u) or last:
                self._save(state, step, phase)
                saved = step
            if phase.evaluate_every and self.evals is not None and due(step, cfg.eval.every, u) and not last:
                self.evals.progress(phase.name, state, step, self.logger,
                                    phase.eval_meta() if phase.eval_meta is not None else {})
            if last:
                break
        return state, step, saved

    def _save(self, state: Any, step: int, phase: Phase) -> None:
        meta = {"phase": phase.name, "step": step, "version": 0, "config": self.cfg.to_json()}
        meta.update(phase.checkpoint_meta() if phase.checkpoint_meta is not None else {})
        self.ckpt.save(step, state, meta, force=True)
