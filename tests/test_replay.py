"""Replay buffer and offline/online mixer: FIFO, validation, task balance, mixing ratio."""

import numpy as np
import pytest

from lwd_jax.data.replay import TransitionBuffer, mixed_batch


def _block(task_ids, start=0):
    n = len(task_ids)
    return {"task_id": np.asarray(task_ids, np.int32), "x": np.arange(start, start + n, dtype=np.float32)[:, None]}


def test_fifo_and_cursor():
    buf = TransitionBuffer(capacity=5)
    buf.add(_block([0, 0, 0]))
    buf.add(_block([1, 1, 1], start=3))
    assert len(buf) == 5 and buf.total_added == 6
    # The oldest row (x=0) was overwritten by x=5.
    assert sorted(buf.gather(np.arange(5))["x"][:, 0].tolist()) == [1, 2, 3, 4, 5]


def test_bad_block_names_column_and_keeps_data():
    buf = TransitionBuffer(capacity=10)
    buf.add(_block([0, 1]))
    bad = _block([0])
    bad["x"] = bad["x"].astype(np.float64)
    with pytest.raises(ValueError, match="'x'"):
        buf.add(bad)
    with pytest.raises(KeyError, match="task_id"):
        buf.add({"x": np.zeros((1, 1), np.float32)})
    assert len(buf) == 2 and buf.total_added == 2


def test_task_balanced_sampling():
    buf = TransitionBuffer(capacity=1000)
    buf.add(_block([0] * 900 + [1] * 100))
    rng = np.random.default_rng(0)
    t = buf.sample(rng, 20000)["task_id"]
    assert abs((t == 1).mean() - 0.5) < 0.02  # balanced: rare task 1 gets half the batch
    t = buf.sample(rng, 20000, balanced=False)["task_id"]
    assert abs((t == 1).mean() - 0.1) < 0.02
    t = buf.sample(rng, 20000, task_weights={0: 3.0, 1: 1.0})["task_id"]
    assert abs((t == 1).mean() - 0.25) < 0.02


def test_mixed_batch_ratio():
    off, on = TransitionBuffer(100), TransitionBuffer(100)
    off.add(_block([0] * 10))
    rng = np.random.default_rng(0)
    assert len(mixed_batch(rng, off, on, 8, 0.5)["x"]) == 8  # empty online buffer: all offline
    on.add(_block([0] * 10, start=100))
    b = mixed_batch(rng, off, on, 8, 0.5)
    assert (b["x"][:, 0] >= 100).sum() == 4
    with pytest.raises(ValueError, match="online_fraction"):
        mixed_batch(rng, off, on, 8, 1.5)
