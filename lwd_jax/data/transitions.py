"""Chunked n-step transitions: the DIVL "chunk TD target" pieces, cut from whole episodes.

Why two implementations of one definition: `chunk_transitions` (numpy) is the readable reference, used by
tests and for small in-memory buffers (e.g. one fleet episode at a time); `chunk_transitions_tf` is the
same math as TensorFlow graph ops on whole-episode tensors, so the RLDS reader can cut transitions inside
a `tf.data` graph without a per-step Python loop. A test checks that the two agree on random episodes.
The numpy version computes the Monte-Carlo return with a plain reverse loop and the TF version with a
log-depth doubling scan, so the agreement test compares two different algorithms, not one twice.

Definitions (ALGORITHMS.md, DIVL "chunk TD target"), for an episode of T actions and a start step t:
  - observation s_t; action chunk a_t .. a_{t+H-1} [H, A], padded past the end by repeating the last
    action, with `action_valid` [H] marking the real ones;
  - k = min(n H, T - t) steps actually taken; `reward` = sum_{i<k} gamma^i r_{t+i};
  - `next_observation` = s_{t+k};
  - `terminal` = the window reaches the end of an episode that ended in a true terminal state (success);
    `timeout` = it reaches the end of one that did not (a time-out is not termination: bootstrap through
    it from the final observation);
  - `discount` = gamma^k (1 - terminal), so that the target is y = reward + discount * V(next_observation);
  - `intervention` = any human-chosen action among the chunk's valid actions;
  - `mc_return` = sum_{i >= 0} gamma^i r_{t+i} to the episode end (diagnostics only, never bootstrapped);
  - `subgoal_frac` = sub-goals reached at t / the task's number of sub-goals.

Output: a flat `dict[str, array]` with a leading transition axis N (= ceil(T / stride)); observation
keys are flattened as `observation/<key>` and `next_observation/<key>`, so a replay buffer can store every
column as one contiguous array. Shapes: `action` [N, H, A], `action_valid` [N, H], scalars [N].
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fleet_api.schema import Episode, SchemaError

OBS_PREFIX = "observation/"
NEXT_OBS_PREFIX = "next_observation/"
TASK_ID_UNKNOWN = -1  # what a task -> id lookup returns for a task the mapping does not name

# Accumulate discounted sums in float64: with gamma close to 1 (paper: 0.9999) and windows of hundreds of
# steps, float32 powers and sums drift in the 7th digit, which a test of hand-computed targets would see.
_ACC_DTYPE = np.float64


def resolve_n_chunks(n_chunks: int | Mapping[str, int], task: str) -> int:
    """The number of chunks n for `task`: one int for every task, or a per-task mapping (config)."""
    if isinstance(n_chunks, Mapping):
        if task not in n_chunks:
            raise SchemaError(f"transitions: field 'task' {task!r} has no entry in n_chunks {dict(n_chunks)}")
        n = n_chunks[task]
    else:
        n = n_chunks
    if int(n) < 1:
        raise ValueError(f"transitions: n_chunks must be >= 1, got {n} for task {task!r}")
    return int(n)


def check_chunk_args(chunk_len: int, gamma: float, stride: int) -> None:
    """Rejects arguments that would make the targets meaningless (raised before any data is touched)."""
    if int(chunk_len) < 1:
        raise ValueError(f"transitions: chunk_len (H) must be >= 1, got {chunk_len}")
    if not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"transitions: gamma must be in [0, 1], got {gamma}")
    if int(stride) < 1:
        raise ValueError(f"transitions: stride must be >= 1, got {stride}")


def discounted_returns_np(reward: np.ndarray, gamma: float) -> np.ndarray:
    """mc[t] = sum_{i >= t} gamma^(i - t) r_i, by the textbook reverse recursion (the reference)."""
    out = np.zeros(len(reward), _ACC_DTYPE)
    acc = 0.0
    for t in range(len(reward) - 1, -1, -1):
        acc = float(reward[t]) + gamma * acc
        out[t] = acc
    return out


def chunk_transitions(
    ep: Episode,
    *,
    chunk_len: int,
    n_chunks: int | Mapping[str, int],
    gamma: float,
    task_ids: Mapping[str, int],
    stride: int = 1,
) -> dict[str, np.ndarray]:
    """All transitions of `ep` starting at t = 0, stride, 2 stride, ... < T (numpy reference).

    `task_ids` maps task names to the integer ids the learner's buffers and nets use; an unknown task is
    a SchemaError (a typo in a task name must not silently become a new task).
    """
    check_chunk_args(chunk_len, gamma, stride)
    if ep.task not in task_ids:
        raise SchemaError(f"transitions: episode {ep.episode_id}: field 'task' {ep.task!r} not in task_ids {sorted(task_ids)}")
    n = resolve_n_chunks(n_chunks, ep.task)
    horizon = chunk_len * n
    num_steps = ep.num_steps
    starts = np.arange(0, num_steps, stride)
    k_steps = np.minimum(horizon, num_steps - starts)
    ends = starts + k_steps

    powers = np.power(_ACC_DTYPE(gamma), np.arange(horizon, dtype=_ACC_DTYPE))
    padded_reward = np.concatenate([ep.reward.astype(_ACC_DTYPE), np.zeros(horizon, _ACC_DTYPE)])
    window = padded_reward[starts[:, None] + np.arange(horizon)[None, :]]  # zeros past the end
    reward = (window * powers[None, :]).sum(axis=1)

    reached_end = ends == num_steps
    terminal = reached_end & bool(ep.terminal)
    timeout = reached_end & (not bool(ep.terminal))
    discount = np.power(_ACC_DTYPE(gamma), k_steps) * (~terminal)

    chunk_idx = starts[:, None] + np.arange(chunk_len)[None, :]
    action_valid = chunk_idx < num_steps
    chunk_idx = np.minimum(chunk_idx, num_steps - 1)  # repeat the last action past the end

    out: dict[str, np.ndarray] = {}
    for key, value in ep.observation.items():
        out[OBS_PREFIX + key] = value[starts]
        out[NEXT_OBS_PREFIX + key] = value[ends]
    out.update(
        action=ep.action[chunk_idx],
        action_valid=action_valid,
        reward=reward.astype(np.float32),
        discount=discount.astype(np.float32),
        terminal=terminal,
        timeout=timeout,
        k_steps=k_steps.astype(np.int32),
        intervention=(ep.intervention[chunk_idx] & action_valid).any(axis=1),
        mc_return=discounted_returns_np(ep.reward, gamma)[starts].astype(np.float32),
        subgoal_frac=(ep.subgoals[starts] / max(int(ep.num_subgoals), 1)).astype(np.float32),
        step=starts.astype(np.int32),
        task_id=np.full(len(starts), int(task_ids[ep.task]), np.int32),
        task=np.array([ep.task] * len(starts), dtype=object),
        language_instruction=np.array([ep.language_instruction] * len(starts), dtype=object),
    )
    return out


# ----------------------------------------------------------------------------------------------------
# TensorFlow graph version (used by the RLDS reader inside tf.data.Dataset.map)
# ----------------------------------------------------------------------------------------------------


def discounted_returns_tf(reward: Any, gamma: float) -> Any:
    """mc[t] = sum_{i >= t} gamma^(i - t) r_i for a [T] tensor, by a log-depth doubling scan.

    After the pass with shift s, y[t] holds the discounted sum of the 2s rewards from t on; doubling s
    until it covers T gives the full tail sum in ceil(log2 T) vectorised passes. Every factor is a power
    of gamma <= 1, so nothing overflows (unlike the closed form gamma^-t * cumsum(gamma^i r_i)).
    """
    import tensorflow as tf

    y = tf.cast(reward, tf.float64)
    size = tf.shape(y)[0]

    def body(y, shift, factor):
        tail = tf.concat([y[shift:], tf.zeros([tf.minimum(shift, size)], tf.float64)], axis=0)[:size]
        return y + factor * tail, shift * 2, factor * factor

    y, _, _ = tf.while_loop(
        lambda y, shift, factor: shift < size,
        body,
        (y, tf.constant(1), tf.constant(float(gamma), tf.float64)),
        shape_invariants=(tf.TensorShape([None]), tf.TensorShape([]), tf.TensorShape([])),
    )
    return y


def chunk_transitions_tf(
    ep: Mapping[str, Any], *, chunk_len: int, n_chunks: Any, gamma: float, stride: int = 1
) -> dict[str, Any]:
    """The graph twin of `chunk_transitions` for one episode of tensors (see the module docstring).

    `ep` holds 'observation' (dict of [T+1, ...]), 'action' [T, A], 'reward' [T], 'intervention' [T],
    'subgoals' [T+1], and scalars 'terminal', 'num_subgoals', 'task', 'task_id', 'language_instruction'.
    `n_chunks` may be a Python int or a scalar int tensor (the reader looks it up per task).
    """
    import tensorflow as tf

    check_chunk_args(chunk_len, gamma, stride)
    action = ep["action"]
    num_steps = tf.shape(action)[0]
    horizon = tf.cast(n_chunks, tf.int32) * chunk_len
    starts = tf.range(0, num_steps, stride, dtype=tf.int32)
    count = tf.shape(starts)[0]
    k_steps = tf.minimum(horizon, num_steps - starts)
    ends = starts + k_steps

    gamma64 = tf.constant(float(gamma), tf.float64)
    powers = tf.pow(gamma64, tf.cast(tf.range(horizon), tf.float64))
    padded_reward = tf.concat([tf.cast(ep["reward"], tf.float64), tf.zeros([horizon], tf.float64)], axis=0)
    window = tf.gather(padded_reward, starts[:, None] + tf.range(horizon)[None, :])
    reward = tf.reduce_sum(window * powers[None, :], axis=1)

    episode_terminal = tf.cast(ep["terminal"], tf.bool)
    reached_end = tf.equal(ends, num_steps)
    terminal = tf.logical_and(reached_end, episode_terminal)
    timeout = tf.logical_and(reached_end, tf.logical_not(episode_terminal))
    discount = tf.pow(gamma64, tf.cast(k_steps, tf.float64)) * tf.cast(tf.logical_not(terminal), tf.float64)

    chunk_idx = starts[:, None] + tf.range(chunk_len)[None, :]
    action_valid = chunk_idx < num_steps
    chunk_idx = tf.minimum(chunk_idx, num_steps - 1)

    out: dict[str, Any] = {}
    for key, value in ep["observation"].items():
        out[OBS_PREFIX + key] = tf.gather(value, starts)
        out[NEXT_OBS_PREFIX + key] = tf.gather(value, ends)
    subgoals = tf.cast(tf.gather(ep["subgoals"], starts), tf.float32)
    num_subgoals = tf.cast(tf.maximum(tf.cast(ep["num_subgoals"], tf.int32), 1), tf.float32)
    out.update(
        action=tf.gather(action, chunk_idx),
        action_valid=action_valid,
        reward=tf.cast(reward, tf.float32),
        discount=tf.cast(discount, tf.float32),
        terminal=terminal,
        timeout=timeout,
        k_steps=k_steps,
        intervention=tf.reduce_any(tf.logical_and(tf.gather(ep["intervention"], chunk_idx), action_valid), axis=1),
        mc_return=tf.cast(tf.gather(discounted_returns_tf(ep["reward"], gamma), starts), tf.float32),
        subgoal_frac=subgoals / num_subgoals,
        step=starts,
        task_id=tf.fill([count], tf.cast(ep["task_id"], tf.int32)),
        task=tf.fill([count], ep["task"]),
        language_instruction=tf.fill([count], ep["language_instruction"]),
    )
    return out
