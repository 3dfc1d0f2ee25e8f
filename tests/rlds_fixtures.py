"""Synthetic episodes and small RLDS datasets for the RLDS and transition tests (and the benchmark).

Why synthetic: the tests check exact round trips and hand-computed targets, so every value must be
known; random but seeded episodes cover varied lengths, terminal and time-out endings, interventions.
"""

from __future__ import annotations

import numpy as np

from fleet_api import schema
from fleet_api.schema import Episode

TASKS = ("cube-single", "scene-task1", "puzzle-3x3")
TASK_IDS = {name: i for i, name in enumerate(TASKS)}
REAL_STATE_DIMS = {"cube-single": 28, "scene-task1": 40, "puzzle-3x3": 64}


def make_episode(
    rng: np.random.Generator,
    num_steps: int,
    *,
    task: str = TASKS[0],
    terminal: bool = False,
    with_image: bool = False,
    reward: np.ndarray | None = None,
    intervention: np.ndarray | None = None,
    num_subgoals: int = 3,
) -> Episode:
    """A schema-valid episode of `num_steps` actions with random contents (sparse success reward)."""
    t = num_steps
    real = REAL_STATE_DIMS.get(task, schema.STATE_DIM)
    state = np.zeros((t + 1, schema.STATE_DIM), np.float32)
    state[:, :real] = rng.normal(size=(t + 1, real)).astype(np.float32)
    mask = np.zeros((t + 1, schema.STATE_DIM), np.bool_)
    mask[:, :real] = True
    obs = {"state": state, "state_mask": mask, "proprio": rng.normal(size=(t + 1, schema.PROPRIO_DIM)).astype(np.float32)}
    if with_image:
        obs["image"] = rng.integers(0, 256, size=(t + 1, *schema.IMAGE_SHAPE), dtype=np.uint8)
    if reward is None:
        reward = np.zeros(t, np.float32)
        if terminal:
            reward[-1] = 1.0
    if intervention is None:
        intervention = rng.random(t) < 0.2
    subgoals = np.minimum(np.arange(t + 1) * num_subgoals // max(t, 1), num_subgoals).astype(np.int32)
    return Episode(
        observation=obs,
        action=rng.uniform(-1, 1, size=(t, schema.ACTION_DIM)).astype(np.float32),
        reward=np.asarray(reward, np.float32),
        intervention=np.asarray(intervention, np.bool_),
        subgoals=subgoals,
        terminal=terminal,
        language_instruction=f"do {task} please",
        task=task,
        robot_id=f"sim-{int(rng.integers(0, 16))}",
        policy_version=int(rng.integers(0, 100)),
        source=schema.Source.ROLLOUT.value if not terminal else schema.Source.DEMO.value,
        success=terminal,
        num_subgoals=num_subgoals,
    )


def make_episodes(seed: int, count: int, min_steps: int = 3, max_steps: int = 40, with_image: bool = False) -> list[Episode]:
    """`count` varied episodes: lengths in [min_steps, max_steps], tasks cycling, half of them terminal."""
    rng = np.random.default_rng(seed)
    return [
        make_episode(
            rng,
            int(rng.integers(min_steps, max_steps + 1)),
            task=TASKS[i % len(TASKS)],
            terminal=bool(i % 2),
            with_image=with_image,
        )
        for i in range(count)
    ]


def assert_episodes_equal(a: Episode, b: Episode) -> None:
    """Exact equality of every field (arrays bit for bit, dtypes included)."""
    assert set(a.observation) == set(b.observation), (sorted(a.observation), sorted(b.observation))
    for key in a.observation:
        assert a.observation[key].dtype == b.observation[key].dtype, key
        np.testing.assert_array_equal(a.observation[key], b.observation[key], err_msg=key)
    for name in ("action", "reward", "intervention", "subgoals"):
        va, vb = getattr(a, name), getattr(b, name)
        assert va.dtype == vb.dtype, (name, va.dtype, vb.dtype)
        np.testing.assert_array_equal(va, vb, err_msg=name)
    for name in ("terminal", "language_instruction", "task", "robot_id", "policy_version", "source", "success", "num_subgoals", "episode_id"):
        assert getattr(a, name) == getattr(b, name), (name, getattr(a, name), getattr(b, name))


# ----------------------------------------------------------------------------------------------------
# Damaging datasets on disk (bad-input tests)
# ----------------------------------------------------------------------------------------------------


def shard_paths(data_dir: str) -> list[str]:
    """The dataset's shard files in shard order (as its dataset_info.json lists them)."""
    import tensorflow_datasets as tfds

    return [str(p) for p in tfds.builder_from_directory(data_dir).info.splits["train"].filepaths]


def edit_record(data_dir: str, shard: int, record: int, edit) -> None:
    """Rewrites one record of one shard after `edit(example)` mutates its `tf.train.Example` proto."""
    import tensorflow as tf

    path = shard_paths(data_dir)[shard]
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    example = tf.train.Example.FromString(records[record])
    edit(example)
    records[record] = example.SerializeToString()
    with tf.io.TFRecordWriter(path) as writer:
        for r in records:
            writer.write(r)


def truncate_shard(data_dir: str, shard: int, keep_records: int, extra_bytes: int = 100) -> None:
    """Cuts a shard `extra_bytes` into the record after the first `keep_records` (a torn write)."""
    import tensorflow as tf

    path = shard_paths(data_dir)[shard]
    kept = sum(len(r.numpy()) + 16 for r in tf.data.TFRecordDataset(path).take(keep_records))  # 16 B framing
    with open(path, "r+b") as f:
        f.truncate(kept + extra_bytes)
