"""RLDS writer and reader on real TFDS files: exact round trips, appends and crash recovery, a plain
third-party TFDS builder read through a key map, transitions from disk equal to the numpy reference,
and every bad-input case named (dataset, episode, field) with the good episodes still read."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import uuid

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from fleet_api import schema
from fleet_api.schema import PROPRIO_DIM, SchemaError
from fleet_api.wire import episode_digest
from lwd_jax.data import rlds_format
from lwd_jax.data.rlds_errors import RLDSReadError
from lwd_jax.data.rlds_keymap import load_key_map_file
from lwd_jax.data.rlds_reader import RLDSReader, read_episodes
from lwd_jax.data.rlds_writer import ORPHAN_SUFFIX, RLDSWriter, write_episodes
from lwd_jax.data.transitions import chunk_transitions
from tests.rlds_fixtures import TASK_IDS, assert_episodes_equal, edit_record, make_episodes, shard_paths, truncate_shard

NUM_EPISODES = 6
EPISODES_PER_SHARD = 2
BAD_SHARD, BAD_RECORD = 1, 1
BAD_INDEX = BAD_SHARD * EPISODES_PER_SHARD + BAD_RECORD  # episode #3

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def episodes():
    return make_episodes(seed=0, count=NUM_EPISODES, max_steps=30)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, episodes):
    path = str(tmp_path_factory.mktemp("rlds") / "ours")
    write_episodes(path, episodes, episodes_per_shard=EPISODES_PER_SHARD, durable=False)
    return path


def _copy(dataset: str, tmp_path) -> str:
    out = str(tmp_path / "copy")
    shutil.copytree(dataset, out)
    return out


# ----------------------------------------------------------------------------------------------------
# Round trip, layout, appends
# ----------------------------------------------------------------------------------------------------


def test_round_trip_exact_without_image(dataset, episodes):
    got = read_episodes(dataset)
    assert len(got) == len(episodes)
    for want, have in zip(episodes, got, strict=True):
        assert_episodes_equal(want, have)


def test_round_trip_exact_with_image(tmp_path):
    eps = make_episodes(seed=1, count=3, max_steps=6, with_image=True)
    write_episodes(tmp_path / "img", eps, durable=False)
    got = read_episodes(tmp_path / "img")
    for want, have in zip(eps, got, strict=True):
        assert_episodes_equal(want, have)
        # the content digest a restarted learner recomputes from its store is the one the robot declared
        assert episode_digest(have) == episode_digest(want)


def test_content_digest_survives_the_round_trip_and_sees_every_field(dataset, episodes):
    got = read_episodes(dataset)
    assert [episode_digest(e) for e in got] == [episode_digest(e) for e in episodes]
    ep = episodes[0]
    changed = [dataclasses.replace(ep, reward=ep.reward * 2 + 1), dataclasses.replace(ep, success=not ep.success),
               dataclasses.replace(ep, language_instruction=ep.language_instruction + "!"),
               dataclasses.replace(ep, observation={**ep.observation, "proprio": ep.observation["proprio"] + 1})]
    assert len({episode_digest(e) for e in [ep, *changed]}) == 5


def test_files_are_a_standard_tfds_rlds_dataset(dataset, episodes):
    builder = tfds.builder_from_directory(dataset)
    assert builder.info.splits["train"].num_examples == NUM_EPISODES
    first = next(iter(builder.as_dataset(split="train")))
    steps = list(first["steps"])
    ep = episodes[0]
    assert len(steps) == ep.num_steps + 1  # T actions -> T + 1 steps
    assert bool(steps[0]["is_first"]) and bool(steps[-1]["is_last"]) and not bool(steps[-2]["is_last"])
    assert bool(steps[-1]["is_terminal"]) == ep.terminal
    np.testing.assert_array_equal(steps[-1]["action"].numpy(), np.zeros(5, np.float32))
    assert first["episode_metadata"]["task"].numpy().decode() == ep.task


def test_fast_serializer_matches_tfds_encoding(episodes):
    """Our hand-built tf.train.Example must parse to what TFDS's own encode path gives."""
    features = rlds_format.episode_features(with_image=False)
    ep = episodes[1]
    steps = rlds_format.episode_to_steps(ep)
    steps["language_instruction"] = list(steps["language_instruction"])
    tfds_bytes = features.serialize_example({"steps": steps, "episode_metadata": ep.metadata()})
    ours = features.deserialize_example(rlds_format.episode_to_example_bytes(ep))
    theirs = features.deserialize_example(tfds_bytes)
    tf.nest.map_structure(lambda a, b: np.testing.assert_array_equal(a.numpy(), b.numpy()), ours["episode_metadata"], theirs["episode_metadata"])
    for a, b in zip(ours["steps"], theirs["steps"], strict=True):
        tf.nest.map_structure(lambda x, y: np.testing.assert_array_equal(x.numpy(), y.numpy()), a, b)


def test_wire_serializer_parses_to_the_protobuf_built_example(episodes):
    """episode_to_example_bytes writes the wire format by hand: every episode (an image one, a terminal one,
    a demo with policy_version -1) parses to exactly the message protobuf's own classes build, and packed
    int64s of any value (negatives, > 2^56) match protobuf's varints."""
    from tensorflow.core.example import example_pb2, feature_pb2

    with_image = dataclasses.replace(episodes[1], observation={
        **episodes[1].observation,
        "image": np.random.default_rng(0).integers(0, 255, (episodes[1].num_steps + 1, *schema.IMAGE_SHAPE), np.uint8)})
    for ep in [*episodes, with_image, dataclasses.replace(episodes[0], policy_version=-1, terminal=True)]:
        fast = example_pb2.Example.FromString(rlds_format.episode_to_example_bytes(ep))
        assert fast == example_pb2.Example.FromString(rlds_format.episode_to_example_proto_bytes(ep))
    values = np.array([0, 1, 127, 128, 300, -1, -(2**63), 2**63 - 1, 2**56 + 3, -129], np.int64)
    want = feature_pb2.Int64List(value=values.tolist()).SerializeToString()
    assert rlds_format._field(1, rlds_format._varints(values)) == want


def test_append_over_time_and_crash_recovery(tmp_path, episodes):
    path = str(tmp_path / "fleet")
    with RLDSWriter(path, durable=True) as writer:
        shard = writer.append(episodes[0])
        assert os.path.exists(shard) and writer.num_episodes == 1
        with pytest.raises(RuntimeError, match="another writer"):
            RLDSWriter(path)
    # a crash after a shard was renamed but before dataset_info.json listed it, plus a stray temp file
    shutil.copy(shard, shard.replace("00000", "00001"))
    open(os.path.join(path, f".{os.path.basename(shard)}.tmp-999"), "wb").close()
    with RLDSWriter(path) as writer:
        assert os.path.exists(shard.replace("00000", "00001") + ORPHAN_SUFFIX)
        assert not any(".tmp-" in name for name in os.listdir(path))
        writer.append(episodes[1:3])
        assert writer.num_shards == 2 and writer.stats.steps == sum(e.num_steps + 1 for e in episodes[1:3])
    got = read_episodes(path)
    assert [e.episode_id for e in got] == [e.episode_id for e in episodes[:3]]


def test_manifest_commits_between_info_rewrites_and_survives_a_kill(tmp_path, episodes):
    """Appends cost O(1): a manifest line commits each shard, dataset_info.json is rewritten every
    `info_every` appends. After a kill between rewrites, our reader and a reopened writer see every committed
    shard, stock TFDS sees them once a writer reopened; a torn manifest line is cut off and its shard orphaned."""
    import subprocess
    import sys

    path = str(tmp_path / "fleet")
    script = (
        "import os, sys\n"
        "from lwd_jax.data.rlds_writer import RLDSWriter\n"
        "from tests.rlds_fixtures import make_episodes\n"
        "w = RLDSWriter(sys.argv[1], info_every=4)\n"
        "for ep in make_episodes(seed=0, count=6, max_steps=30): w.append(ep)\n"
        "os._exit(0)  # like kill -9: no close(), so dataset_info.json lists only the first 4 shards\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", script, path], cwd=root, check=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": root})
    assert tfds.builder_from_directory(path).info.splits["train"].num_examples == 4  # stale, as documented
    assert [e.num_steps for e in read_episodes(path)] == [e.num_steps for e in episodes]  # all 6 committed
    damaged = str(tmp_path / "damaged")
    shutil.copytree(path, damaged)
    os.remove(os.path.join(damaged, "lwd_episodes-train.tfrecord-00005"))  # committed by the manifest only
    with pytest.raises(RuntimeError, match="commits shard 5"):
        RLDSWriter(damaged)
    shard6 = os.path.join(path, "lwd_episodes-train.tfrecord-00006")
    shutil.copy(os.path.join(path, "lwd_episodes-train.tfrecord-00005"), shard6)
    with open(os.path.join(path, "shards.manifest"), "ab") as f:
        f.write(b"6 1")  # a crash mid-line: shard 6 was never committed
    with RLDSWriter(path, info_every=4) as writer:
        assert writer.num_episodes == 6 and os.path.exists(shard6 + ORPHAN_SUFFIX)
        assert writer._shard_path(5).endswith("lwd_episodes-train.tfrecord-00005")  # the reader's naming
        assert tfds.builder_from_directory(path).info.splits["train"].num_examples == 6  # listed on reopen
        writer.append(episodes[0])
    assert len(read_episodes(path)) == 7
    assert tfds.builder_from_directory(path).info.splits["train"].num_examples == 7  # and on close


def _stock_tfds_ids(path: str) -> list[str]:
    """Episode ids in shard order as stock TFDS reads the dataset (its own file names, its own shard list)."""
    ds = tfds.builder_from_directory(path).as_dataset(split="train", shuffle_files=False)
    return [ex["episode_metadata"]["episode_id"].numpy().decode() for ex in ds]


def _shard_names(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if rlds_format.shard_index_pattern().match(n))


def test_store_past_a_power_of_ten_of_shards_stays_readable_by_stock_tfds_and_ours(tmp_path, monkeypatch):
    """TFDS names shard i of a split of n shards with max(5, len(str(n))) digits, so at 100,000 one-episode
    fleet shards every name it looks for changes: the 60-minute soak's store (383k episodes) could be read by
    neither stock TFDS nor our reader. Shrunk here by setting TFDS's minimum to 1 digit: the names widen at 10
    and 100 shards. Checked: a writer killed after the widening (stock TFDS reads the list it was given, ours
    every commit), a kill between the widened commit and its dataset_info.json rewrite, a kill between the
    links and the commit (an orphan), reopening (only the current names are left), and 101 shards."""
    import subprocess
    import sys

    from tensorflow_datasets.core import naming

    assert naming._DEFAULT_NUM_DIGITS_FOR_SHARDS == rlds_format.MIN_SHARD_DIGITS  # the rule we mirror
    patch = ("from tensorflow_datasets.core import naming\nfrom lwd_jax.data import rlds_format\n"
             "naming._DEFAULT_NUM_DIGITS_FOR_SHARDS = rlds_format.MIN_SHARD_DIGITS = 1\n")
    monkeypatch.setattr(naming, "_DEFAULT_NUM_DIGITS_FOR_SHARDS", 1)
    monkeypatch.setattr(rlds_format, "MIN_SHARD_DIGITS", 1)
    relabel = "[dataclasses.replace(e, episode_id=uuid.UUID(int=i + 1, version=4).hex) for i, e in enumerate(eps)]"
    eps = make_episodes(seed=3, count=101, max_steps=5)
    eps = eval(relabel, {"dataclasses": dataclasses, "uuid": uuid, "eps": eps})  # the ids the subprocess gives them
    ids = [e.episode_id for e in eps]
    path, nine = str(tmp_path / "fleet"), str(tmp_path / "nine")
    script = (patch + "import dataclasses, os, sys, uuid\nfrom lwd_jax.data.rlds_writer import RLDSWriter\n"
              "from tests.rlds_fixtures import make_episodes\n"
              f"eps = make_episodes(seed=3, count=101, max_steps=5)\neps = {relabel}\n"
              "w = RLDSWriter(sys.argv[1], info_every=100)\n"
              "for ep in eps[:int(sys.argv[2])]: w.append(ep)\n"
              "w.close() if sys.argv[3] == 'close' else os._exit(0)  # os._exit: like kill -9\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for where, n, end in ((path, 12, "kill"), (nine, 9, "close")):
        subprocess.run([sys.executable, "-c", script, where, str(n), end], cwd=root, check=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": root})
    # killed with 12 committed: the 10th commit widened the names and listed its 10 shards at once
    assert _stock_tfds_ids(path) == ids[:10]
    assert [e.episode_id for e in read_episodes(path)] == ids[:12]
    # a kill between the widened commit and its dataset_info.json rewrite: TFDS's list says 9 (old names)
    torn = str(tmp_path / "torn")
    shutil.copytree(path, torn)
    shutil.copy(os.path.join(nine, "dataset_info.json"), os.path.join(torn, "dataset_info.json"))
    assert _stock_tfds_ids(torn) == ids[:9] and [e.episode_id for e in read_episodes(torn)] == ids[:12]
    with RLDSWriter(torn):  # reopening lists every commit under its current name and drops the old names
        assert _shard_names(torn) == [f"lwd_episodes-train.tfrecord-{i:02d}" for i in range(12)]
    assert _stock_tfds_ids(torn) == ids[:12]
    # a kill between the links and the commit: the 2-digit names and shard 09 exist, no manifest line
    for i in range(9):
        os.link(os.path.join(nine, f"lwd_episodes-train.tfrecord-{i}"), os.path.join(nine, f"lwd_episodes-train.tfrecord-{i:02d}"))
    shutil.copy(os.path.join(path, "lwd_episodes-train.tfrecord-09"), os.path.join(nine, "lwd_episodes-train.tfrecord-09"))
    with RLDSWriter(nine, durable=False) as writer:
        assert writer.num_shards == 9 and os.path.exists(os.path.join(nine, "lwd_episodes-train.tfrecord-09" + ORPHAN_SUFFIX))
        assert _shard_names(nine) == [f"lwd_episodes-train.tfrecord-{i}" for i in range(9)]
        for ep in eps[9:]:  # on to 101 shards: widened at 10 and at 100
            writer.append(ep)
        assert _stock_tfds_ids(nine) == ids[:100]  # listed by the widening at 100
    assert _stock_tfds_ids(nine) == ids and [e.episode_id for e in read_episodes(nine)] == ids
    with RLDSWriter(nine, durable=False):
        assert _shard_names(nine) == [f"lwd_episodes-train.tfrecord-{i:03d}" for i in range(101)]


def test_patched_dataset_info_is_what_tfds_writes(tmp_path, episodes):
    """Issue 16: later dataset_info.json rewrites patch the shard list into the JSON TFDS made once (TFDS's
    rebuilds retained native memory); the patched file must equal TFDS's own, and stock TFDS must read it."""
    import json

    path = str(tmp_path / "fleet")
    with RLDSWriter(path, info_every=2) as writer:
        for ep in episodes[:5]:
            writer.append(ep)
            writer._write_info()
            with open(os.path.join(path, "dataset_info.json")) as f:
                assert json.load(f) == json.loads(writer._tfds_info_json())
    assert tfds.builder_from_directory(path).info.splits["train"].num_examples == 5
    assert tfds.builder_from_directory(path).info.splits["train"].num_bytes == writer._num_bytes


def test_bad_episode_is_rejected_and_leaves_the_dataset_intact(dataset, episodes, tmp_path):
    path = _copy(dataset, tmp_path)
    before = {name: open(os.path.join(path, name), "rb").read() for name in os.listdir(path) if not name.startswith(".")}
    bad = make_episodes(seed=5, count=1)[0]
    bad.observation["state"][2, 0] = np.nan
    with RLDSWriter(path) as writer:
        with pytest.raises(SchemaError, match=r"observation/state.*non-finite"):
            writer.append([episodes[0], bad])  # the good one in the same group is not written either
        with pytest.raises(SchemaError, match="observation/image"):
            writer.append(make_episodes(seed=6, count=1, max_steps=4, with_image=True))
    after = {name: open(os.path.join(path, name), "rb").read() for name in os.listdir(path) if not name.startswith(".")}
    assert after == before
    assert len(read_episodes(path)) == NUM_EPISODES


# ----------------------------------------------------------------------------------------------------
# Transitions from disk
# ----------------------------------------------------------------------------------------------------


def _reference(episodes, **kw):
    parts = [chunk_transitions(ep, **kw) for ep in episodes]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assert_columns_equal(want, have):
    for key, value in want.items():
        if value.dtype == object:
            assert list(have[key]) == list(value), key
        elif value.dtype.kind == "f":
            np.testing.assert_allclose(have[key], value, rtol=1e-6, atol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(have[key], value, err_msg=key)


def test_reader_transitions_equal_numpy_reference(dataset, episodes):
    kw = dict(chunk_len=3, n_chunks={"cube-single": 2, "scene-task1": 1, "puzzle-3x3": 3}, gamma=0.9, task_ids=TASK_IDS, stride=2)
    reader = RLDSReader(dataset)
    batches = list(reader.iter_transitions(batch_size=7, **kw))
    assert {len(b["step"]) for b in batches[:-1]} == {7}  # episodes re-cut into full batches
    got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    order = np.lexsort((got["step"], got["episode_index"]))  # interleaved shards: restore episode order
    _assert_columns_equal(_reference(episodes, **kw), {k: v[order] for k, v in got.items()})

    shuffled = reader.load_transitions(batch_size=5, shuffle_buffer=16, seed=0, **kw)
    assert not np.array_equal(shuffled["episode_index"], got["episode_index"])  # the order did change
    order = np.lexsort((shuffled["step"], shuffled["episode_index"]))
    _assert_columns_equal(_reference(episodes, **kw), {k: v[order] for k, v in shuffled.items()})


# ----------------------------------------------------------------------------------------------------
# A third-party dataset written by a plain TFDS builder, read through a key map
# ----------------------------------------------------------------------------------------------------

THIRD_PARTY_EPISODES = 4
THIRD_PARTY_STATE = 7
THIRD_PARTY_IMAGE = (32, 32, 3)


class ThirdPartyRlds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An Open-X-like layout: robot_state, a camera, the instruction inside the observation, a file path."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS would look for a checksums file next to this module via `importlib_resources`, which this
    # environment lacks; a builder without downloads has no checksums anyway.
    url_infos = None

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "steps": tfds.features.Dataset(
                        {
                            "observation": {
                                "robot_state": tfds.features.Tensor(shape=(THIRD_PARTY_STATE,), dtype=np.float64),
                                "camera": tfds.features.Image(shape=THIRD_PARTY_IMAGE),
                                "natural_language_instruction": tfds.features.Text(),
                            },
                            "action": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "reward": tfds.features.Scalar(dtype=np.float32),
                            "is_first": np.bool_,
                            "is_last": np.bool_,
                            "is_terminal": np.bool_,
                        }
                    ),
                    "episode_metadata": {"file_path": tfds.features.Text()},
                }
            )
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(THIRD_PARTY_EPISODES):
            rows = 3 + i
            rng = np.random.default_rng(i)
            terminal = i % 2 == 0
            yield f"ep{i}", {
                "steps": {
                    "observation": {
                        "robot_state": rng.normal(size=(rows, THIRD_PARTY_STATE)),
                        "camera": np.full((rows, *THIRD_PARTY_IMAGE), 10 * i, np.uint8),
                        "natural_language_instruction": [f"pick cube {i}"] * rows,
                    },
                    "action": rng.uniform(-1, 1, size=(rows, 4)).astype(np.float32),
                    "reward": np.eye(rows, dtype=np.float32)[-2] * terminal,
                    "is_first": np.arange(rows) == 0,
                    "is_last": np.arange(rows) == rows - 1,
                    "is_terminal": (np.arange(rows) == rows - 1) & terminal,
                },
                "episode_metadata": {"file_path": f"/data/ep{i}.h5"},
            }


THIRD_PARTY_MAP = {
    "state": "observation/robot_state",
    "proprio": None,
    "image": "observation/camera",
    "language_instruction": "steps/observation/natural_language_instruction",
    "episode_id": "episode_metadata/file_path",
}


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    root = tmp_path_factory.mktemp("third_party")
    builder = ThirdPartyRlds(data_dir=str(root))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    return builder.data_dir


def test_third_party_dataset_through_a_key_map(third_party):
    reader = RLDSReader(third_party, key_map=THIRD_PARTY_MAP, defaults={"task": "cube-single"})
    got = {ep.episode_id: ep for ep in reader.episodes()}
    assert sorted(got) == [f"/data/ep{i}.h5" for i in range(THIRD_PARTY_EPISODES)]
    for i in range(THIRD_PARTY_EPISODES):
        ep = got[f"/data/ep{i}.h5"]
        rows = 3 + i
        assert ep.num_steps == rows - 1 and ep.task == "cube-single" and ep.language_instruction == f"pick cube {i}"
        assert ep.terminal == ep.success == (i % 2 == 0)
        assert ep.observation["state_mask"][:, :THIRD_PARTY_STATE].all() and not ep.observation["state_mask"][:, THIRD_PARTY_STATE:].any()
        np.testing.assert_array_equal(ep.observation["state"][:, THIRD_PARTY_STATE:], 0)
        np.testing.assert_array_equal(ep.observation["proprio"], 0)
        np.testing.assert_array_equal(ep.action[:, 4:], 0)  # 4-D actions padded to our 5
        assert ep.observation["image"].shape == (rows, 64, 64, 3) and (ep.observation["image"] == 10 * i).all()
        assert not ep.intervention.any() and ep.robot_id == "third_party_rlds"
    with pytest.raises(SchemaError, match="features"):  # the writer appends only to our own layout
        RLDSWriter(third_party)
    tr = reader.load_transitions(chunk_len=2, n_chunks=1, gamma=0.5, task_ids={"cube-single": 0})
    assert len(tr["step"]) == sum(2 + i for i in range(THIRD_PARTY_EPISODES))
    assert tr["observation/image"].shape[1:] == (64, 64, 3) and set(tr["task_id"]) == {0}


class FractalStyleRlds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """An RT-1 "fractal"-style layout: nested action dict, the instruction inside the observation, no
    `discount`, and the success reward on the *last* step (is_last and is_terminal), whose action is real."""

    VERSION = tfds.core.Version("0.1.0")
    url_infos = None  # no downloads, no checksums file (see ThirdPartyRlds)

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "steps": tfds.features.Dataset({
                "observation": {
                    "base_pose_tool_reached": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                    "natural_language_instruction": tfds.features.Text(),
                },
                "action": {
                    "world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                    "gripper_closedness_action": tfds.features.Tensor(shape=(1,), dtype=np.float32),
                },
                "reward": tfds.features.Scalar(dtype=np.float32),
                "is_first": np.bool_,
                "is_last": np.bool_,
                "is_terminal": np.bool_,
            }),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(3):
            rows, success = 4 + i, i != 1
            rng = np.random.default_rng(10 + i)
            last = np.arange(rows) == rows - 1
            yield f"ep{i}", {"steps": {
                "observation": {"base_pose_tool_reached": rng.normal(size=(rows, 7)).astype(np.float32),
                                "natural_language_instruction": ["pick coke can"] * rows},
                "action": {"world_vector": rng.uniform(-1, 1, (rows, 3)).astype(np.float32),
                           "gripper_closedness_action": rng.uniform(-1, 1, (rows, 1)).astype(np.float32)},
                "reward": (last * success).astype(np.float32), "is_first": np.arange(rows) == 0,
                "is_last": last, "is_terminal": last & success,
            }}


def test_fractal_style_success_reward_on_the_last_step_is_kept(tmp_path):
    """Regression: the reader treated the last RLDS step as padding and every reward of this layout came out 0."""
    builder = FractalStyleRlds(data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    key_map = {"state": "observation/base_pose_tool_reached", "proprio": None,
               "action": ["action/world_vector", "action/gripper_closedness_action"],
               "language_instruction": "steps/observation/natural_language_instruction"}
    reader = RLDSReader(builder.data_dir, key_map=key_map, defaults={"task": "pick-coke"})
    eps = sorted(reader.episodes(), key=lambda e: e.num_steps)
    assert [e.num_steps for e in eps] == [3, 4, 5]  # rows - 1 transitions: the last step's action is dropped
    for i, ep in enumerate(eps):
        success = i != 1
        assert ep.terminal == ep.success == success
        want = np.zeros(ep.num_steps, np.float32)
        want[-1] = float(success)  # the last step's reward lands on the final transition
        np.testing.assert_array_equal(ep.reward, want)
        assert ep.language_instruction == "pick coke can"
    tr = reader.load_transitions(chunk_len=2, n_chunks=1, gamma=1.0, task_ids={"pick-coke": 0})
    assert tr["reward"].max() == pytest.approx(1.0)  # the success reward reaches the chunk transitions (was 0)


def test_key_map_concatenates_vector_sources(third_party):
    key_map = {**THIRD_PARTY_MAP, "proprio": ["observation/robot_state", "observation/robot_state"]}
    for ep in RLDSReader(third_party, key_map=key_map, defaults={"task": "cube-single"}).episodes():
        state = ep.observation["state"][:, :THIRD_PARTY_STATE]
        np.testing.assert_array_equal(ep.observation["proprio"][:, : 2 * THIRD_PARTY_STATE], np.concatenate([state, state], axis=1))
        np.testing.assert_array_equal(ep.observation["proprio"][:, 2 * THIRD_PARTY_STATE :], 0)
    repeats = PROPRIO_DIM // THIRD_PARTY_STATE + 1  # one copy too many for our proprio width
    with pytest.raises(RLDSReadError, match=rf"field 'proprio' expected at most {PROPRIO_DIM} values per step, got {repeats * THIRD_PARTY_STATE}"):
        RLDSReader(third_party, key_map={**THIRD_PARTY_MAP, "proprio": ["observation/robot_state"] * repeats}, defaults={"task": "x"})


def test_key_map_errors_name_dataset_and_field(third_party):
    with pytest.raises(RLDSReadError, match=r"third_party_rlds.*field 'state'.*observation/robot_state"):
        RLDSReader(third_party, key_map={**THIRD_PARTY_MAP, "state": "observation/missing"}, defaults={"task": "x"})
    with pytest.raises(RLDSReadError, match=r"field 'task'.*defaults"):
        RLDSReader(third_party, key_map=THIRD_PARTY_MAP)
    with pytest.raises(RLDSReadError, match=r"field 'action'.*float"):
        RLDSReader(third_party, key_map={**THIRD_PARTY_MAP, "action": "is_first"}, defaults={"task": "x"})


# ----------------------------------------------------------------------------------------------------
# Bad input: each case names dataset / episode / field; good episodes still read
# ----------------------------------------------------------------------------------------------------


def _set_nan(example):
    example.features.feature["steps/observation/state"].float_list.value[3] = math.nan


def _to_int64(example):
    feature = example.features.feature["steps/observation/proprio"]
    values = [int(v) for v in feature.float_list.value]
    feature.ClearField("float_list")
    feature.int64_list.value.extend(values)


def _drop_one_value(example):
    del example.features.feature["steps/observation/state"].float_list.value[-1]


BAD_CASES = {
    # name: (damage(dataset dir), the field the error must name; None for byte-level damage)
    "truncated_shard": (lambda path: truncate_shard(path, BAD_SHARD, keep_records=BAD_RECORD), None),
    "missing_step_key": (lambda path: edit_record(path, BAD_SHARD, BAD_RECORD, lambda e: e.features.feature.pop("steps/reward")), "reward"),
    "missing_metadata_key": (lambda path: edit_record(path, BAD_SHARD, BAD_RECORD, lambda e: e.features.feature.pop("episode_metadata/task")), "task"),
    "wrong_dtype": (lambda path: edit_record(path, BAD_SHARD, BAD_RECORD, _to_int64), "observation/proprio"),
    "wrong_shape": (lambda path: edit_record(path, BAD_SHARD, BAD_RECORD, _drop_one_value), "observation/state"),
    "nan": (lambda path: edit_record(path, BAD_SHARD, BAD_RECORD, _set_nan), "observation/state"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_named_and_good_episodes_still_read(case, dataset, episodes, tmp_path):
    path = _copy(dataset, tmp_path)
    damage, field = BAD_CASES[case]
    damage(path)
    bad_shard = os.path.basename(shard_paths(path)[BAD_SHARD])

    # strict: the episodes before the bad one arrive intact, then a named error
    got = []
    with pytest.raises(RLDSReadError) as info:
        for ep in RLDSReader(path).episodes():
            got.append(ep)
    message = str(info.value)
    assert path in message and f"episode #{BAD_INDEX}" in message, message
    assert info.value.episode_index == BAD_INDEX and info.value.shard == bad_shard
    if field is None:
        assert bad_shard in message and "truncated or corrupt" in message, message
    else:
        assert f"field '{field}'" in message and episodes[BAD_INDEX].episode_id in message, message
    for want, have in zip(episodes, got, strict=False):
        assert_episodes_equal(want, have)
    assert len(got) == BAD_INDEX

    # skip: every other episode is read, the bad one is reported
    reader = RLDSReader(path, on_error="skip")
    good = list(reader.episodes())
    assert [e.episode_id for e in good] == [e.episode_id for i, e in enumerate(episodes) if i != BAD_INDEX]
    assert [e.episode_index for e in reader.errors] == [BAD_INDEX] and reader.errors[0].field == field


def test_bad_input_in_the_transition_path(dataset, tmp_path):
    path = _copy(dataset, tmp_path)
    edit_record(path, BAD_SHARD, BAD_RECORD, _set_nan)
    kw = dict(chunk_len=2, n_chunks=1, gamma=0.9, task_ids=TASK_IDS)
    with pytest.raises(RLDSReadError, match=rf"episode #{BAD_INDEX} .*field 'observation/state' holds a non-finite"):
        RLDSReader(path).load_transitions(**kw)
    tr = RLDSReader(path, on_error="skip").load_transitions(**kw)
    assert set(tr["episode_index"].tolist()) == set(range(NUM_EPISODES)) - {BAD_INDEX}


def test_unknown_task_and_missing_dataset_are_named(dataset, tmp_path):
    with pytest.raises(RLDSReadError, match=r"episode #0 .*field 'task' is not in task_ids"):
        RLDSReader(dataset).load_transitions(chunk_len=2, n_chunks=1, gamma=0.9, task_ids={"other": 0})
    with pytest.raises(RLDSReadError, match="dataset_info.json"):
        RLDSReader(tmp_path / "nothing_here")
    info = json.load(open(os.path.join(dataset, "dataset_info.json")))
    assert info["splits"][0]["shardLengths"] == [str(EPISODES_PER_SHARD)] * (NUM_EPISODES // EPISODES_PER_SHARD)


def test_shipped_rt1_key_map_file_reads_the_fractal_layout_exactly(tmp_path):
    """experiments/keymaps/rt1_fractal.toml (what `data.key_map_file` names) on the fractal-style dataset:
    every value where the map says, padding where our widths are larger, the file's defaults filled in."""
    builder = FractalStyleRlds(data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(compute_stats=tfds.download.ComputeStatsMode.SKIP))
    key_map, defaults = load_key_map_file(os.path.join(REPO_ROOT, "experiments", "keymaps", "rt1_fractal.toml"))
    eps = sorted(RLDSReader(builder.data_dir, key_map=key_map, defaults=defaults).episodes(), key=lambda e: e.num_steps)
    source = {i: next(iter(x for x in FractalStyleRlds._generate_examples(builder) if x[0] == f"ep{i}"))[1]["steps"]
              for i in range(3)}
    for i, ep in enumerate(eps):
        steps = source[i]
        np.testing.assert_array_equal(ep.observation["state"][:, :7], steps["observation"]["base_pose_tool_reached"])
        np.testing.assert_array_equal(ep.observation["state"][:, 7:], 0)
        assert ep.observation["state_mask"][:, :7].all() and not ep.observation["state_mask"][:, 7:].any()
        np.testing.assert_array_equal(ep.observation["proprio"], 0)
        want = np.concatenate([steps["action"]["world_vector"], steps["action"]["gripper_closedness_action"]], axis=1)
        np.testing.assert_array_equal(ep.action[:, :4], want[:-1])  # the last step's action has no next observation
        np.testing.assert_array_equal(ep.action[:, 4:], 0)
        assert (ep.task, ep.robot_id, ep.language_instruction) == ("pick-coke", "rt1-fractal", "pick coke can")


@pytest.mark.parametrize("text, match", [
    ("[map]\nstate = 3\n", r"\[map\] 'state' expected a path"),
    ("[map]\nstat = 'x'\n", r"\[map\] 'stat' is not one of our fields"),
    ("[map]\nreward = ['a', 'b']\n", r"'reward' takes one path"),
    ("[map]\naction = ''\n", "action must name"),
    ("[defaults]\nstate = 'x'\n", r"\[defaults\] \['state'\]"),
    ("[mapping]\n", "unknown table"),
    ("[map\n", "not valid TOML"),
])
def test_key_map_file_errors_name_the_file_and_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        load_key_map_file(str(path))
    assert "bad.toml" in str(e.value)
