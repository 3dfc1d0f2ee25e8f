"""The on-disk RLDS layout of lwd-jax episodes: TFDS features, names, and Episode <-> record conversion.

Why a module of its own: the writer, the reader and the tests must agree byte for byte on one layout,
and a reader of our files must not need the writer's code path (nor the reverse).

Layout (one TFDS dataset, split `train`, one TFRecord example per episode, RLDS step convention of
schema.py: T actions are stored as T + 1 steps, the last one holding s_T, a zero action and zero reward):
  steps (tfds.features.Dataset):
    observation: state [S] f32, state_mask [S] bool, proprio [P] f32, image [H, W, 3] uint8 (PNG,
                 lossless; only in datasets created with images)
    action [A] f32, reward f32, discount f32, is_first, is_last, is_terminal, intervention (bool),
    subgoals int32, language_instruction (text)
  (S, P, A, H, W: the embodiment's widths, fleet_api/embodiment.py; the simulated UR5e has 64, 20, 5, 64, 64)
  episode_metadata: episode_id, task, robot_id, source (text), policy_version int64, success bool,
    num_subgoals int32
`discount` follows dm_env/RLDS: 0 on the result of the action that reached a true terminal state, 1
elsewhere (and mirrored on the padding step), so third-party RLDS tools read the episode correctly.

Serialisation: we build the `tf.train.Example` ourselves from whole-episode arrays (one `tolist()` per
field) instead of TFDS's per-step `encode_example`, which loops over steps in Python and is ~7x slower
per float; the bytes parse with TFDS's own parser (a test checks the result equals TFDS's encoding).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode, assemble_episode

DATASET_NAME = "lwd_episodes"
DATASET_VERSION = "1.0.0"
SPLIT = "train"
FILE_SUFFIX = "tfrecord"
# No "-of-NNNNN" in shard names (the SequentialWriter convention): appending a shard must not rename the
# existing ones. The template is stored in dataset_info.json, so TFDS readers find the files.
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_INDEX}"
# TFDS's minimum digits of a shard index (tensorflow_datasets naming._DEFAULT_NUM_DIGITS_FOR_SHARDS; a test
# checks they agree).
MIN_SHARD_DIGITS = 5


def shard_digits(num_shards: int) -> int:
    """The digits TFDS puts in every shard index of a split that lists `num_shards` shards.

    Why this is ours to know: TFDS derives each shard's file name from the split's shard *count*,
    max(5, len(str(count))), so the names it looks for change when a growing store reaches 100,000 shards
    (then 1,000,000). A writer that named shard i `...-00042` forever left a fleet store that neither stock
    TFDS nor our reader could open past 100,000 one-episode shards (found by a 60-minute soak, 383k episodes).
    """
    return max(MIN_SHARD_DIGITS, len(str(int(num_shards))))


def shard_filename(index: int, num_shards: int, split: str = SPLIT) -> str:
    """The file name TFDS reads for shard `index` of a `split` that lists `num_shards` shards."""
    return (SHARD_TEMPLATE.replace("{DATASET}", DATASET_NAME).replace("{SPLIT}", split)
            .replace("{FILEFORMAT}", FILE_SUFFIX).replace("{SHARD_INDEX}", f"{int(index):0{shard_digits(num_shards)}d}"))


def shard_index_pattern(split: str = SPLIT) -> re.Pattern[str]:
    """Matches a shard file name of any width, group 1 the index (crash recovery lists the directory)."""
    prefix = shard_filename(0, 0, split)[:-MIN_SHARD_DIGITS]
    return re.compile(re.escape(prefix) + r"(\d+)$")
IMAGE_FORMAT = "png"  # lossless, so a write -> read round trip is exact

STEP_OBS_KEYS = ("state", "state_mask", "proprio")
METADATA_KEYS = ("episode_id", "task", "robot_id", "policy_version", "source", "success", "num_subgoals")


def episode_features(with_image: bool, embodiment: Embodiment = UR5E) -> Any:
    """The `tfds.features.FeaturesDict` of our RLDS episodes (with or without the camera image), with the
    widths of `embodiment` (the simulated UR5e's: state 64, proprio 20, action 5)."""
    import tensorflow_datasets as tfds

    tensor = tfds.features.Tensor
    observation = {
        "state": tensor(shape=(embodiment.state_dim,), dtype=np.float32),
        "state_mask": tensor(shape=(embodiment.state_dim,), dtype=np.bool_),
        "proprio": tensor(shape=(embodiment.proprio_dim,), dtype=np.float32),
    }
    if with_image:
        observation["image"] = tfds.features.Image(shape=tuple(embodiment.image_shape), encoding_format=IMAGE_FORMAT)
    steps = {
        "observation": observation,
        "action": tensor(shape=(embodiment.action_dim,), dtype=np.float32),
        "reward": tensor(shape=(), dtype=np.float32),
        "discount": tensor(shape=(), dtype=np.float32),
        "is_first": tensor(shape=(), dtype=np.bool_),
        "is_last": tensor(shape=(), dtype=np.bool_),
        "is_terminal": tensor(shape=(), dtype=np.bool_),
        "language_instruction": tfds.features.Text(),
        "intervention": tensor(shape=(), dtype=np.bool_),
        "subgoals": tensor(shape=(), dtype=np.int32),
    }
    metadata = {
        "episode_id": tfds.features.Text(),
        "task": tfds.features.Text(),
        "robot_id": tfds.features.Text(),
        "policy_version": tensor(shape=(), dtype=np.int64),
        "source": tfds.features.Text(),
        "success": tensor(shape=(), dtype=np.bool_),
        "num_subgoals": tensor(shape=(), dtype=np.int32),
    }
    return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps), "episode_metadata": metadata})


def episode_to_steps(ep: Episode) -> dict[str, Any]:
    """The RLDS steps of `ep` as whole-episode arrays with T + 1 rows (images still raw uint8)."""
    t = ep.num_steps
    last = np.arange(t + 1) == t
    first = np.arange(t + 1) == 0
    discount = np.ones(t + 1, np.float32)
    if ep.terminal:  # the action that reached the terminal state, and the padding step after it
        discount[t - 1 :] = 0.0
    return {
        "observation": dict(ep.observation),
        "action": np.concatenate([ep.action, np.zeros((1, ep.action.shape[1]), np.float32)]),
        "reward": np.concatenate([ep.reward, np.zeros(1, np.float32)]),
        "discount": discount,
        "is_first": first,
        "is_last": last,
        "is_terminal": last & bool(ep.terminal),
        "language_instruction": np.array([ep.language_instruction] * (t + 1), dtype=object),
        "intervention": np.concatenate([ep.intervention, np.zeros(1, np.bool_)]),
        "subgoals": ep.subgoals,
    }


@functools.cache
def _png_encoder() -> Any:
    """A compiled graph that PNG-encodes a [N, H, W, C] uint8 stack (one call per episode, not per image)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8)])  # any embodiment's camera
    def encode(images):
        return tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string, parallel_iterations=16)

    return encode


def _feature(value: np.ndarray) -> Any:
    """One `tf.train.Feature` from an array, with TFDS's type rules (bool/int -> int64, str -> bytes)."""
    from tensorflow.core.example import feature_pb2

    value = np.asarray(value)
    if value.dtype.kind == "f":
        return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=value.astype(np.float32).ravel().tolist()))
    if value.dtype.kind in "biu":
        return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=value.astype(np.int64).ravel().tolist()))
    if value.dtype.kind in "OUS":
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.ravel().tolist()]
        return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=items))
    raise TypeError(f"rlds_format: cannot serialise dtype {value.dtype}")


def _flatten(prefix: str, tree: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    for key, value in tree.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}{key}/", value, out)
        else:
            out[prefix + key] = value
    return out


def _flat_episode(ep: Episode) -> dict[str, np.ndarray]:
    """Feature key -> array of one episode in the layout of `episode_features` (images PNG-encoded)."""
    steps = episode_to_steps(ep)
    obs = dict(steps["observation"])
    if "image" in obs:
        obs["image"] = np.array(list(_png_encoder()(obs["image"]).numpy()), dtype=object)
    steps["observation"] = obs
    flat = _flatten("steps/", steps, {})
    meta = ep.metadata()
    for key in METADATA_KEYS:
        flat[f"episode_metadata/{key}"] = np.array([meta[key]], dtype=object if isinstance(meta[key], str) else None)
    return flat


def episode_to_example_proto_bytes(ep: Episode) -> bytes:
    """The reference serialisation: the same `tf.train.Example` built with the protobuf classes (what
    `episode_to_example_bytes` is tested against; ~10x slower, the lists go through Python objects)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    features = feature_pb2.Features(feature={key: _feature(value) for key, value in _flat_episode(ep).items()})
    return example_pb2.Example(features=features).SerializeToString()


# ---- protobuf wire format of tf.train.Example, written directly (numbers straight from numpy buffers)
_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE[n]
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varints(values: np.ndarray) -> bytes:
    """Packed int64 varints of a 1-d int64 array, vectorised (negatives as 10-byte two's complement)."""
    v = values.astype(np.int64).view(np.uint64)
    if not len(v):
        return b""
    if int(v.max()) < 0x80:  # bools, sub-goal counts, small ids: one byte each
        return v.astype(np.uint8).tobytes()
    nbytes = np.ones(len(v), np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    width = int(nbytes.max())
    groups = np.stack([(v >> np.uint64(7 * k)) & np.uint64(0x7F) for k in range(width)], axis=1).astype(np.uint8)
    more = np.arange(width)[None, :] < (nbytes[:, None] - 1)
    groups |= (more * 0x80).astype(np.uint8)
    keep = np.arange(width)[None, :] < nbytes[:, None]
    return groups[keep].tobytes()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _feature_wire(value: np.ndarray) -> bytes:
    """One `tf.train.Feature` message (bytes_list = 1, float_list = 2, int64_list = 3; packed numbers)."""
    value = np.asarray(value)
    if value.dtype.kind == "f":
        return _field(2, _field(1, value.astype("<f4").ravel().tobytes()))
    if value.dtype.kind in "biu":
        return _field(3, _field(1, _varints(value.astype(np.int64).ravel())))
    if value.dtype.kind in "OUS":
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value.ravel().tolist()]
        encoded: dict[bytes, bytes] = {}  # the instruction repeats on every step: encode each text once
        return _field(1, b"".join([encoded.get(item) or encoded.setdefault(item, _field(1, item)) for item in items]))
    raise TypeError(f"rlds_format: cannot serialise dtype {value.dtype}")


def episode_to_example_bytes(ep: Episode) -> bytes:
    """`ep` as one serialised `tf.train.Example` in the layout of `episode_features` (validate it first).

    Why by hand: building the message through protobuf's Python classes turned every number into a Python
    object and cost 2.5 ms of a 200-step episode's 5.8 ms durable append (the fleet store's whole budget
    per episode, issue 17); the wire format of packed floats is the array's own little-endian bytes. The
    result parses to the same message as `episode_to_example_proto_bytes` (tested), and stock TFDS reads it.
    """
    entries = (_field(1, _field(1, key.encode()) + _field(2, _feature_wire(value)))
               for key, value in _flat_episode(ep).items())
    return _field(1, b"".join(entries))


def episode_from_arrays(arrays: dict[str, Any]) -> Episode:
    """An `Episode` from the reader's canonical numpy dict (T actions, T + 1 observations, scalars)."""

    steps = {
        "action": np.asarray(arrays["action"], np.float32),
        "reward": np.asarray(arrays["reward"], np.float32),
        "intervention": np.asarray(arrays["intervention"], np.bool_),
        "subgoals": np.asarray(arrays["subgoals"], np.int32),
    }
    return assemble_episode({k: np.asarray(v) for k, v in arrays["observation"].items()}, steps, arrays)
