"""The learner's input pipeline (lwd_jax/learner/prefetch.py): batches built ahead on a thread, in step order,
errors raised at their step, a prompt close, and training on prefetched, device-placed batches equal to
training on batches built in the loop, bit for bit."""

from __future__ import annotations

import threading
import time

import jax
import ml_collections
import numpy as np
import pytest

from lwd_jax import sharding as shd
from lwd_jax.agent import LWDAgent
from lwd_jax.fake import random_batches, random_obs
from lwd_jax.learner.checkpoint import Checkpointer
from lwd_jax.learner.loop import Learner, Phase
from lwd_jax.learner.metrics_log import MetricsLogger
from lwd_jax.learner.prefetch import Prefetcher
from tests.agent_config import smoke_agent_config


def _wait_until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.01)
    return cond()


def test_batches_come_in_step_order_and_are_built_ahead_on_another_thread():
    built: list[tuple[int, str]] = []

    def build(step: int) -> dict:
        built.append((step, threading.current_thread().name))
        return {"step": step}

    with Prefetcher(build, start=4, stride=2, end=14, depth=2) as ahead:
        assert ahead.get(4) == {"step": 4}
        # while the caller "updates", the next calls' batches are built: at most 2 ahead of the one it has
        assert _wait_until(lambda: [s for s, _ in built][:3] == [4, 6, 8])
        assert all(name == "lwd-prefetch" for _, name in built)
        assert [ahead.get(s)["step"] for s in (6, 8, 10, 12)] == [6, 8, 10, 12]
        with pytest.raises(ValueError, match="at or past the phase's end"):
            ahead.get(14)
    assert [s for s, _ in built] == [4, 6, 8, 10, 12]  # nothing built past the end
    with Prefetcher(build, start=0, stride=2, end=4, depth=2) as ahead, pytest.raises(ValueError, match="next call"):
        ahead.get(2)  # out of order: the batches of step 0 come first


def test_depth_zero_builds_in_the_callers_thread():
    names = []
    with Prefetcher(lambda s: names.append(threading.current_thread().name) or {"s": s}, 0, 1, 3, depth=0) as ahead:
        assert [ahead.get(s)["s"] for s in range(3)] == [0, 1, 2]
    assert names == [threading.current_thread().name] * 3


def test_a_build_error_is_raised_at_its_step():
    def build(step: int) -> dict:
        if step == 2:
            raise RuntimeError("every bridge daemon exited with an error")
        return {"s": step}

    with Prefetcher(build, 0, 1, 10, depth=3) as ahead:
        assert ahead.get(0)["s"] == 0 and ahead.get(1)["s"] == 1  # the batches before it arrive
        with pytest.raises(RuntimeError, match="every bridge daemon"):
            ahead.get(2)


def test_close_stops_a_thread_blocked_on_a_full_queue_promptly():
    calls = []
    ahead = Prefetcher(lambda s: calls.append(s) or {"s": s}, 0, 1, 1_000_000, depth=2)
    assert _wait_until(lambda: len(calls) == 2)  # two built ahead, the thread waits for a slot
    t0 = time.monotonic()
    ahead.close()
    assert time.monotonic() - t0 < 2.0 and ahead._thread is not None and not ahead._thread.is_alive()
    assert len(calls) == 2  # stopped: nothing more built
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(lambda s: {}, 0, 1, 2, depth=-1)


def test_training_on_prefetched_placed_batches_equals_building_them_in_the_loop(tmp_path):
    """The BC and critic updates of two learner phases, with batches built a call ahead and placed on the
    devices by the agent, end at the same parameters as with batches built between updates."""
    agent = LWDAgent(smoke_agent_config(), shd.make_mesh(devices=jax.devices()[:1]))
    example = random_obs(np.random.default_rng(0), 2)

    def train(depth: int, where: str):
        cfg = ml_collections.ConfigDict(dict(updates_per_call=2, log_every=4, checkpoint_every=1000,
                                             prefetch_batches=depth, eval=dict(every=1000), config_note=where))
        ckpt = Checkpointer(str(tmp_path / where))
        learner = Learner(cfg, MetricsLogger(str(tmp_path / where / "logs"), quiet=True), ckpt, None, None,
                          place=agent.place_batches if depth else None)
        state = agent.init(0, example)
        state = learner.run(state, Phase("pretrain", 4, agent.pretrain_update, lambda s: random_batches(s, 2, 16),
                                         probe=False))
        state = learner.run(state, Phase("critic", 8, agent.critic_update, lambda s: random_batches(100 + s, 2, 16)))
        ckpt.close()
        return jax.device_get(state.params)

    ahead, inline = train(1, "ahead"), train(0, "inline")
    for a, b in zip(jax.tree.leaves(ahead), jax.tree.leaves(inline), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_phase_can_run_shorter_calls_than_the_learner(tmp_path):
    """`Phase.updates_per_call` (the online stage's `online.updates_per_call`): that phase's calls take its U
    batches and advance the step by its U, whatever the learner's U; logs and the final checkpoint land at the
    phase's own steps."""
    agent = LWDAgent(smoke_agent_config(), shd.make_mesh(devices=jax.devices()[:1]))
    cfg = ml_collections.ConfigDict(dict(updates_per_call=4, log_every=1000, checkpoint_every=1000,
                                         prefetch_batches=1, eval=dict(every=1000)))
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    learner = Learner(cfg, MetricsLogger(str(tmp_path / "logs"), quiet=True), ckpt, None, None,
                      place=agent.place_batches)
    asked: list[int] = []

    def batches(step: int) -> dict:
        asked.append(step)
        return random_batches(step, 1, 16)

    state = learner.run(agent.init(0, random_obs(np.random.default_rng(0), 2)),
                        Phase("pretrain", 3, agent.pretrain_update, batches, probe=False, updates_per_call=1))
    assert int(state.step) == 3 and asked == [0, 1, 2] and ckpt.latest_step() == 3
    ckpt.close()
