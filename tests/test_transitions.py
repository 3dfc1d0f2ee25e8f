"""Chunked n-step transition math: hand-computed episodes (episode end, time-out bootstrap, terminal
truncation, chunk crossing the end, n > 1, stride), and the numpy reference against the TF graph twin."""

from __future__ import annotations

import numpy as np
import pytest

from fleet_api.schema import SchemaError
from lwd_jax.data.transitions import (
    chunk_transitions,
    chunk_transitions_tf,
    discounted_returns_np,
    discounted_returns_tf,
)
from tests.rlds_fixtures import TASK_IDS, TASKS, make_episode, make_episodes

TASK = TASKS[0]


def _episode(rewards, terminal, intervention=None, seed=0):
    rewards = np.asarray(rewards, np.float32)
    return make_episode(
        np.random.default_rng(seed), len(rewards), task=TASK, terminal=terminal, reward=rewards,
        intervention=np.zeros(len(rewards), bool) if intervention is None else np.asarray(intervention, bool),
    )  # fmt: skip


def _cut(ep, **kw):
    kw = {"chunk_len": 2, "n_chunks": 1, "gamma": 0.5, "task_ids": TASK_IDS, **kw}
    return chunk_transitions(ep, **kw)


def test_terminal_episode_end_and_chunk_crossing_the_end():
    ep = _episode([0, 0, 0, 0, 1], terminal=True)  # T = 5, success on the last action
    tr = _cut(ep)
    np.testing.assert_array_equal(tr["k_steps"], [2, 2, 2, 2, 1])
    np.testing.assert_allclose(tr["reward"], [0, 0, 0, 0.5, 1.0])
    np.testing.assert_allclose(tr["discount"], [0.25, 0.25, 0.25, 0.0, 0.0])
    np.testing.assert_array_equal(tr["terminal"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(tr["timeout"], [0, 0, 0, 0, 0])
    # next observation s_{t+k}; the last window ends on the final observation s_T
    np.testing.assert_array_equal(tr["next_observation/state"], ep.observation["state"][[2, 3, 4, 5, 5]])
    np.testing.assert_array_equal(tr["observation/state"], ep.observation["state"][:5])
    # the chunk starting at t = 4 runs past the end: last action repeated, marked invalid
    np.testing.assert_array_equal(tr["action"][4], ep.action[[4, 4]])
    np.testing.assert_array_equal(tr["action_valid"], [[1, 1]] * 4 + [[1, 0]])
    np.testing.assert_allclose(tr["mc_return"], [0.0625, 0.125, 0.25, 0.5, 1.0])


def test_time_out_bootstraps_from_the_final_observation():
    ep = _episode([0, 0, 0, 0, 0], terminal=False)
    tr = _cut(ep)
    np.testing.assert_array_equal(tr["timeout"], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(tr["terminal"], [0, 0, 0, 0, 0])
    np.testing.assert_allclose(tr["discount"], [0.25, 0.25, 0.25, 0.25, 0.5])  # gamma^k, never zeroed
    np.testing.assert_array_equal(tr["next_observation/proprio"][3:], ep.observation["proprio"][[5, 5]])


def test_n_chunks_greater_than_one():
    ep = _episode([1, 2, 3, 4, 5, 6, 7], terminal=False)  # T = 7, H = 2, n = 2: windows of 4 steps
    tr = _cut(ep, n_chunks=2)
    np.testing.assert_array_equal(tr["k_steps"], [4, 4, 4, 4, 3, 2, 1])
    # t = 0: 1 + .5*2 + .25*3 + .125*4; t = 4: 5 + .5*6 + .25*7 (truncated by the end)
    np.testing.assert_allclose(tr["reward"][[0, 2, 4, 6]], [3.25, 7.0, 9.75, 7.0])
    np.testing.assert_allclose(tr["discount"][[0, 4, 6]], [0.0625, 0.125, 0.5])
    np.testing.assert_array_equal(tr["next_observation/state"], ep.observation["state"][[4, 5, 6, 7, 7, 7, 7]])
    assert tr["action"].shape == (7, 2, 5)  # the chunk is H actions, not n H


def test_terminal_truncates_the_n_chunk_window():
    ep = _episode([0, 0, 0, 0, 1], terminal=True)
    tr = _cut(ep, n_chunks=2)  # window 4 steps
    np.testing.assert_array_equal(tr["k_steps"], [4, 4, 3, 2, 1])
    np.testing.assert_array_equal(tr["terminal"], [0, 1, 1, 1, 1])
    np.testing.assert_allclose(tr["reward"], [0, 0.125, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(tr["discount"], [0.0625, 0, 0, 0, 0])


def test_stride_intervention_subgoals_and_task():
    ep = _episode([0, 0, 0, 0, 0], terminal=False, intervention=[0, 0, 0, 1, 0])
    tr = _cut(ep, stride=2)
    np.testing.assert_array_equal(tr["step"], [0, 2, 4])
    np.testing.assert_array_equal(tr["intervention"], [0, 1, 0])  # chunk {2, 3} holds the takeover
    np.testing.assert_allclose(tr["subgoal_frac"], ep.subgoals[[0, 2, 4]] / ep.num_subgoals)
    np.testing.assert_array_equal(tr["task_id"], [TASK_IDS[TASK]] * 3)
    assert list(tr["task"]) == [TASK] * 3 and list(tr["language_instruction"]) == [ep.language_instruction] * 3


def test_per_task_n_and_unknown_task():
    ep = _episode([0, 0, 0, 0, 0], terminal=False)
    tr = _cut(ep, n_chunks={TASK: 2, TASKS[1]: 1})
    assert tr["k_steps"][0] == 4
    with pytest.raises(SchemaError, match="task"):
        _cut(ep, task_ids={"other": 0})
    with pytest.raises(SchemaError, match="n_chunks"):
        _cut(ep, n_chunks={"other": 1})
    with pytest.raises(ValueError, match="chunk_len"):
        _cut(ep, chunk_len=0)


def test_discounted_returns_tf_matches_reverse_loop():
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, 7, 8, 9, 64, 257):
        reward = rng.normal(size=size).astype(np.float32)
        for gamma in (0.0, 0.5, 0.9999, 1.0):
            np.testing.assert_allclose(discounted_returns_tf(reward, gamma).numpy(), discounted_returns_np(reward, gamma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("chunk_len", "n_chunks", "gamma", "stride"), [(1, 1, 0.99, 1), (3, 2, 0.9, 1), (5, 10, 0.9999, 3), (4, 1, 1.0, 2)])
def test_numpy_and_tf_versions_agree(chunk_len, n_chunks, gamma, stride):
    for ep in make_episodes(seed=chunk_len, count=4, min_steps=1, max_steps=30):
        ep.reward = np.random.default_rng(0).normal(size=ep.num_steps).astype(np.float32)  # dense, to test the sums
        ref = chunk_transitions(ep, chunk_len=chunk_len, n_chunks=n_chunks, gamma=gamma, task_ids=TASK_IDS, stride=stride)
        tensors = {
            "observation": ep.observation, "action": ep.action, "reward": ep.reward, "intervention": ep.intervention,
            "subgoals": ep.subgoals, "terminal": ep.terminal, "num_subgoals": ep.num_subgoals, "task": ep.task,
            "task_id": TASK_IDS[ep.task], "language_instruction": ep.language_instruction,
        }  # fmt: skip
        got = chunk_transitions_tf(tensors, chunk_len=chunk_len, n_chunks=n_chunks, gamma=gamma, stride=stride)
        assert set(got) == set(ref)
        for key, want in ref.items():
            value = got[key].numpy()
            if want.dtype == object:
                assert [v.decode() for v in value] == list(want), key
            elif want.dtype.kind == "f":
                np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6, err_msg=key)
            else:
                assert value.dtype == want.dtype, (key, value.dtype, want.dtype)
                np.testing.assert_array_equal(value, want, err_msg=key)
