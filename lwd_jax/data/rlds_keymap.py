"""Key maps: how an RLDS dataset's keys become our episode fields, as plain data, plus the graph code
that applies one to a parsed episode and checks the result.

Why plain data (the octo habit, STYLE.md #10): a third-party dataset is described by a dict such as
    {"state": "observation/robot_state", "proprio": None, "language_instruction": "steps/instruction"}
plus `defaults` for what it lacks (e.g. {"task": "pick-cube"}), not by a new code path per dataset.

Rules of a key map (our field -> source path, or None = fill in):
  * per-step fields (state, state_mask, proprio, image, action, reward, is_terminal, intervention,
    subgoals) name a path inside the source's `steps` ("observation/robot_state"); vector fields (state,
    proprio, action) may name a list of paths, concatenated in order. Narrower vectors are zero-padded to
    our width (state_mask then marks the real part); wider ones are an error. Images of another size are
    resized; they must be uint8 with 3 channels.
  * per-episode fields (language_instruction, episode_id, task, robot_id, policy_version, source,
    success, num_subgoals) name a path from the episode root: "episode_metadata/task", or a path into the
    steps ("steps/language_instruction"), whose first step's value is taken.
  * None fills: state / proprio / reward / subgoals zeros, state_mask True on the mapped state's width,
    is_terminal / intervention False, no image; scalars from `defaults`, else: episode_id
    "<dataset>/<index>", robot_id the dataset name, policy_version 0, source "demo", success = ends
    terminal, num_subgoals 1, language_instruction = the task name; task has no fallback (give it).
  * A user key map overrides our own layout's map field by field; a field it does not name keeps our
    path if the source has it, else is filled in. `action` must map to a source key.
  * The last RLDS step (is_last) holds the final observation. Its reward is added to the final transition
    (RT-1 "fractal" puts the success reward there); its action is dropped (no observation follows it);
    `terminal` is its is_terminal.
Every resolution problem (unknown path, wrong kind, too wide) is raised before any record is read, as an
RLDSReadError naming the dataset and the field.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleet_api import schema
from fleet_api.embodiment import UR5E, Embodiment
from lwd_jax.data.rlds_errors import RLDSReadError

KeyMap = Mapping[str, "str | Sequence[str] | None"]

STEPS = "steps"
STEP_PREFIX = "steps/"
ACTION_TOLERANCE = 1e-5  # the same slack validate_episode allows on action bounds

# kind: "float" (float or int source, cast to float32), "bool" (bool or int, != 0), "int", "text", "image"
# field -> (kind, vector width or None for scalars); the widths are the simulated UR5e's, another embodiment's
# come from `_width` (the reader's embodiment decides them)
_STEP_FIELDS: dict[str, tuple[str, int | None]] = {
    "state": ("float", schema.STATE_DIM),
    "state_mask": ("bool", schema.STATE_DIM),
    "proprio": ("float", schema.PROPRIO_DIM),
    "image": ("image", None),
    "action": ("float", schema.ACTION_DIM),
    "reward": ("float", None),
    "is_terminal": ("bool", None),
    "intervention": ("bool", None),
    "subgoals": ("int", None),
}
_SCALAR_FIELDS: dict[str, str] = {
    "language_instruction": "text",
    "episode_id": "text",
    "task": "text",
    "robot_id": "text",
    "policy_version": "int",
    "source": "text",
    "success": "bool",
    "num_subgoals": "int",
}
VECTOR_FIELDS = ("state", "state_mask", "proprio", "action")
OBSERVATION_FIELDS = ("state", "state_mask", "proprio", "image")
REQUIRED_FIELDS = ("action",)
FINITE_FIELDS = ("state", "proprio", "action", "reward")

# Our own layout (rlds_format.episode_features): the map used when none is given.
DEFAULT_KEY_MAP: dict[str, str | None] = {
    "state": "observation/state",
    "state_mask": "observation/state_mask",
    "proprio": "observation/proprio",
    "image": "observation/image",
    "action": "action",
    "reward": "reward",
    "is_terminal": "is_terminal",
    "intervention": "intervention",
    "subgoals": "subgoals",
    "language_instruction": "steps/language_instruction",
    **{key: f"episode_metadata/{key}" for key in ("episode_id", "task", "robot_id", "policy_version", "source", "success", "num_subgoals")},
}
def _width(field: str, embodiment: Embodiment) -> int | None:
    """The vector width of a step field for `embodiment` (None: a scalar or an image)."""
    return {"state": embodiment.state_dim, "state_mask": embodiment.state_dim, "proprio": embodiment.proprio_dim,
            "action": embodiment.action_dim}.get(field)


FALLBACKS: dict[str, Any] = {"policy_version": 0, "source": schema.Source.DEMO.value, "num_subgoals": 1}


@dataclasses.dataclass(frozen=True)
class Source:
    """One resolved source key: where it lives, its per-step (or per-episode) shape and dtype."""

    path: str  # full path in the parsed example ("steps/observation/state", "episode_metadata/task")
    shape: tuple[int | None, ...]  # per step for step paths
    dtype: Any  # tf.DType
    feature: Any  # the TFDS FeatureConnector (kept to build a parser of only the mapped keys)


@dataclasses.dataclass(frozen=True)
class ResolvedMap:
    """A key map checked against one dataset's features: field -> list of sources ([] = fill in)."""

    dataset: str
    dataset_name: str
    sources: dict[str, list[Source]]
    defaults: dict[str, Any]
    embodiment: Embodiment = UR5E  # the widths episodes are padded to and the action bounds checked

    def mapped(self, field: str) -> bool:
        return bool(self.sources.get(field))

    def field_of(self, source_path: str) -> str | None:
        """Our field that reads `source_path` (for naming a field in parse errors)."""
        for field, sources in self.sources.items():
            if any(s.path == source_path for s in sources):
                return field
        return None


def load_key_map_file(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A key map as a TOML file -> (key_map, defaults) for `RLDSReader`. Why a file: pointing the learner at
    another lab's dataset is then a config value (`data.key_map_file`), not code. Layout:

        [map]                  # our field = "source/path" | ["a", "b"] (concatenated) | "" (fill in)
        state = "observation/base_pose_tool_reached"
        action = ["action/world_vector", "action/gripper_closedness_action"]
        language_instruction = "steps/observation/natural_language_instruction"
        proprio = ""
        [defaults]             # per-episode values the dataset lacks
        task = "pick-coke"

    Errors name the file and the key: an unknown table or field, a value that is neither a path nor a list
    of paths, a default for a field that is not per-episode. Paths are checked against the dataset later,
    by `resolve_key_map` (before any record is read)."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ValueError(f"key map file {path!r}: cannot read it: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"key map file {path!r}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"map", "defaults"})
    if unknown:
        raise ValueError(f"key map file {path!r}: unknown table(s) {unknown}; expected [map] and [defaults]")
    key_map: dict[str, Any] = {}
    for field, value in doc.get("map", {}).items():
        if field not in _STEP_FIELDS and field not in _SCALAR_FIELDS:
            raise ValueError(f"key map file {path!r}: [map] {field!r} is not one of our fields "
                             f"{sorted({*_STEP_FIELDS, *_SCALAR_FIELDS})}")
        if isinstance(value, str):
            key_map[field] = value or None
        elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            if field not in VECTOR_FIELDS:
                raise ValueError(f"key map file {path!r}: [map] {field!r} takes one path, not a list "
                                 f"(only {list(VECTOR_FIELDS)} concatenate)")
            key_map[field] = list(value)
        else:
            raise ValueError(f"key map file {path!r}: [map] {field!r} expected a path, a list of paths or \"\" "
                             f"(fill in), got {value!r}")
    defaults = dict(doc.get("defaults", {}))
    bad = sorted(set(defaults) - set(_SCALAR_FIELDS))
    if bad:
        raise ValueError(f"key map file {path!r}: [defaults] {bad} are not per-episode fields {sorted(_SCALAR_FIELDS)}")
    if "action" in key_map and key_map["action"] is None:
        raise ValueError(f"key map file {path!r}: [map] action must name the source's action (it cannot be filled in)")
    return key_map, defaults


def episode_field(field: str) -> str:
    """The `Episode` field a key-map field fills, as error messages name it ("state" -> "observation/state")."""
    return f"observation/{field}" if field in OBSERVATION_FIELDS else field


def _leaves(tensor_info: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tensor_info, Mapping):
        out: dict[str, Any] = {}
        for key, value in tensor_info.items():
            out.update(_leaves(value, f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: tensor_info}


def _connector(features: Any, path: str) -> Any:
    node = features
    for part in path.split("/"):
        node = node[part]
    return node


def _kind_ok(kind: str, dtype: Any) -> bool:
    if kind == "float":
        return dtype.is_floating or dtype.is_integer
    if kind == "bool":
        return dtype.is_bool or dtype.is_integer
    if kind == "int":
        return dtype.is_integer
    if kind == "text":
        return dtype.name == "string"
    if kind == "image":
        return dtype.name == "uint8"
    raise ValueError(kind)


def resolve_key_map(
    features: Any, dataset: str, dataset_name: str, key_map: KeyMap | None = None, defaults: Mapping[str, Any] | None = None,
    embodiment: Embodiment = UR5E,
) -> ResolvedMap:
    """Checks `key_map` against a dataset's TFDS `features` for episodes of `embodiment` (its widths); raises
    RLDSReadError naming the field."""

    def fail(field: str, problem: str) -> RLDSReadError:
        return RLDSReadError(dataset, problem, field=field)

    unknown = set(key_map or {}) - set(_STEP_FIELDS) - set(_SCALAR_FIELDS)
    if unknown:
        raise fail(sorted(unknown)[0], f"is not a field of our episodes; known fields: {sorted(DEFAULT_KEY_MAP)}")
    allowed = set(_SCALAR_FIELDS) - {"episode_id"}  # ids are per episode: "<dataset>/<index>" when absent
    unknown = set(defaults or {}) - allowed
    if unknown:
        raise fail(sorted(unknown)[0], f"cannot take a default; fields with defaults: {sorted(allowed)}")
    if STEPS not in features:
        raise fail(STEPS, "is missing: not an RLDS dataset (no 'steps' feature)")
    step_infos = _leaves(features[STEPS].feature.get_tensor_info())
    top_infos = {p: i for p, i in _leaves(features.get_tensor_info()).items() if not p.startswith(STEP_PREFIX) and p != STEPS}

    sources: dict[str, list[Source]] = {}
    for field in list(_STEP_FIELDS) + list(_SCALAR_FIELDS):
        explicit = key_map is not None and field in key_map
        paths = key_map[field] if explicit else DEFAULT_KEY_MAP[field]
        if paths is None:
            sources[field] = []
            continue
        paths = [paths] if isinstance(paths, str) else list(paths)
        if len(paths) > 1 and field not in VECTOR_FIELDS:
            raise fail(field, f"maps to several source keys {paths}; only {list(VECTOR_FIELDS)} may concatenate keys")
        resolved = []
        for path in paths:
            source = _resolve_path(field, path, features, step_infos, top_infos)
            if source is None:
                if explicit:
                    known = sorted(step_infos) if field in _STEP_FIELDS else sorted(top_infos) + [STEP_PREFIX + p for p in sorted(step_infos)]
                    raise fail(field, f"maps to source key '{path}', which the dataset does not have; it has {known}")
                break  # our default path is absent in this source: fill in
            resolved.append(source)
        else:
            _check_source_shape(field, resolved, fail, embodiment)
            sources[field] = resolved
            continue
        sources[field] = []
    for field in REQUIRED_FIELDS:
        if not sources[field]:
            raise fail(field, "must map to a source key (it cannot be filled in)")
    defaults = dict(defaults or {})
    if not sources["task"] and "task" not in defaults:
        raise fail("task", "is not in the dataset: map it to a source key or give defaults={'task': ...}")
    return ResolvedMap(dataset=dataset, dataset_name=dataset_name, sources=sources, defaults=defaults, embodiment=embodiment)


def _resolve_path(field: str, path: str, features: Any, step_infos: dict, top_infos: dict) -> Source | None:
    if field in _STEP_FIELDS:
        info = step_infos.get(path)
        if info is None:
            return None
        return Source(STEP_PREFIX + path, tuple(info.shape), info.dtype, _connector(features[STEPS].feature, path))
    if path.startswith(STEP_PREFIX):
        info = step_infos.get(path[len(STEP_PREFIX) :])
        feature = _connector(features[STEPS].feature, path[len(STEP_PREFIX) :]) if info is not None else None
    else:
        info = top_infos.get(path)
        feature = _connector(features, path) if info is not None else None
    if info is None:
        return None
    return Source(path, tuple(info.shape), info.dtype, feature)


def _check_source_shape(field: str, sources: list[Source], fail: Callable[[str, str], RLDSReadError],
                        embodiment: Embodiment = UR5E) -> None:
    kind = _STEP_FIELDS[field][0] if field in _STEP_FIELDS else _SCALAR_FIELDS.get(field)
    width = _width(field, embodiment)
    for source in sources:
        if not _kind_ok(kind, source.dtype):
            raise fail(field, f"expected a {kind} source, got '{source.path}' of dtype {source.dtype.name}")
    if kind == "image":
        shape = sources[0].shape
        if len(shape) != 3 or shape[-1] != embodiment.image_shape[-1]:
            raise fail(field, f"expected an [H, W, {embodiment.image_shape[-1]}] image per step, got '{sources[0].path}' of shape {shape}")
        return
    if width is None:
        for source in sources:
            if source.shape != ():
                raise fail(field, f"expected a scalar per {'step' if field in _STEP_FIELDS else 'episode'}, got '{source.path}' of shape {source.shape}")
        return
    total = 0
    for source in sources:
        if len(source.shape) != 1 or source.shape[0] is None:
            raise fail(field, f"expected a vector of known width per step, got '{source.path}' of shape {source.shape}")
        total += source.shape[0]
    if total > width:
        raise fail(field, f"expected at most {width} values per step, got {total} from {[s.path for s in sources]} "
                          f"(embodiment {embodiment.describe()})")


def parse_features(features: Any, resolved: ResolvedMap) -> Any:
    """A TFDS FeaturesDict of only the mapped keys, with `steps` as a Sequence (whole-episode tensors).

    Why: parsing only what we use skips unused cameras of third-party datasets, and a Sequence (unlike
    the Dataset feature) decodes the steps as [T+1, ...] tensors rather than a nested tf.data.Dataset.
    """
    import tensorflow_datasets as tfds

    steps: dict[str, Any] = {}
    top: dict[str, Any] = {}
    for sources in resolved.sources.values():
        for source in sources:
            root, rel = (steps, source.path[len(STEP_PREFIX) :]) if source.path.startswith(STEP_PREFIX) else (top, source.path)
            *parents, leaf = rel.split("/")
            for part in parents:
                root = root.setdefault(part, {})
            root[leaf] = source.feature
    return tfds.features.FeaturesDict({STEPS: tfds.features.Sequence(steps), **top})


# ----------------------------------------------------------------------------------------------------
# Graph code: parsed example -> canonical episode tensors, and the checks that name bad fields
# ----------------------------------------------------------------------------------------------------


def _get(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _fit_rows(x: Any, rows: Any) -> Any:
    """x[:rows], zero-padded to `rows`: keeps decoding total when a source has the wrong step count (the
    count check then names the field) instead of failing in an op whose error names no field."""
    import tensorflow as tf

    x = x[:rows]
    pad = [[0, rows - tf.shape(x)[0]]] + [[0, 0]] * (len(x.shape) - 1)
    return tf.pad(x, pad)


def _to_kind(x: Any, kind: str) -> Any:
    import tensorflow as tf

    if kind == "float":
        return tf.cast(x, tf.float32)
    if kind == "bool":
        return x if x.dtype == tf.bool else tf.not_equal(x, 0)
    if kind == "int":
        return tf.cast(x, tf.int32)
    return x


def _step_field(steps: Mapping[str, Any], sources: list[Source], field: str, rows: Any,
                embodiment: Embodiment = UR5E) -> Any:
    import tensorflow as tf

    kind, width = _STEP_FIELDS[field][0], _width(field, embodiment)
    parts = [_to_kind(_get(steps, s.path[len(STEP_PREFIX) :]), kind) for s in sources]
    # One source needs no row fitting: a wrong step count is caught by the count check before any op
    # that depends on it runs. Several sources must agree in rows before they can be concatenated.
    x = parts[0] if len(parts) == 1 else tf.concat([_fit_rows(p, rows) for p in parts], axis=-1)
    if width is not None and x.shape[-1] != width:
        x = tf.pad(x, [[0, 0], [0, width - x.shape[-1]]])
    image_shape = tuple(embodiment.image_shape)
    if kind == "image" and tuple(x.shape[1:]) != image_shape:
        resized = tf.image.resize(x, image_shape[:2])
        x = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
        x = tf.ensure_shape(x, [None, *image_shape])
    return x


def _scalar_field(parsed: Mapping[str, Any], sources: list[Source], field: str, fallback: Any) -> Any:
    import tensorflow as tf

    kind = _SCALAR_FIELDS[field]
    if not sources:
        return fallback
    path = sources[0].path
    if path.startswith(STEP_PREFIX):
        values = _get(parsed[STEPS], path[len(STEP_PREFIX) :])
        x = _fit_rows(values, 1)[0]  # the first step's value ("" / 0 if there are no steps)
    else:
        x = _get(parsed, path)
    x = _to_kind(x, kind)
    return tf.cast(x, tf.int64) if field == "policy_version" else x


def canonical_episode(parsed: Mapping[str, Any], resolved: ResolvedMap, index: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Maps one parsed example to our episode tensors; returns (episode, per-source step counts).

    Episode keys: observation {state, state_mask, proprio[, image]} [T+1, ...], action [T, A],
    reward [T], intervention [T], subgoals [T+1], terminal, and the scalar metadata fields.
    """
    import tensorflow as tf

    steps = parsed[STEPS]
    counts = {s.path: tf.shape(_get(steps, s.path[len(STEP_PREFIX) :]))[0] for f in _STEP_FIELDS for s in resolved.sources[f]}
    rows = tf.reduce_max(tf.stack(list(counts.values())))
    num_steps = tf.maximum(rows - 1, 0)
    src = resolved.sources

    emb = resolved.embodiment

    def step(field: str, fill: Callable[[], Any]) -> Any:
        return _step_field(steps, src[field], field, rows, emb) if src[field] else fill()

    state = step("state", lambda: tf.zeros([rows, emb.state_dim], tf.float32))
    state_width = sum(s.shape[0] for s in src["state"])
    real = tf.range(emb.state_dim) < state_width
    observation = {
        "state": state,
        "state_mask": step("state_mask", lambda: tf.tile(real[None, :], [rows, 1])),
        "proprio": step("proprio", lambda: tf.zeros([rows, emb.proprio_dim], tf.float32)),
    }
    if src["image"]:
        observation["image"] = step("image", lambda: None)
    is_terminal = step("is_terminal", lambda: tf.zeros([rows], tf.bool))
    terminal = tf.reduce_any(is_terminal[-1:])
    subgoals = step("subgoals", lambda: tf.zeros([rows], tf.int32))

    task = _scalar_field(parsed, src["task"], "task", tf.constant(str(resolved.defaults.get("task", ""))))
    defaults = {**FALLBACKS, "robot_id": resolved.dataset_name, **resolved.defaults}
    episode_id = tf.strings.join([resolved.dataset_name, "/", tf.strings.as_string(index)])
    language = tf.constant(str(defaults["language_instruction"])) if "language_instruction" in defaults else task
    success = tf.constant(bool(defaults["success"])) if "success" in defaults else terminal
    # RLDS puts a step's reward with its own step; on the last step (is_last) there is no next observation,
    # so our T = rows - 1 transitions cannot hold it as a transition of its own. Rule: the last step's reward
    # is added to the final transition (the one that reaches the last observation), so no reward is lost
    # (RT-1 "fractal" puts the success reward there; our own layout stores 0 there, a no-op), and the last
    # step's action is dropped (nothing follows it: a terminal step's action is never executed).
    all_rewards = step("reward", lambda: tf.zeros([rows], tf.float32))
    last_reward = tf.reduce_sum(all_rewards[-1:])  # 0 for an empty episode (refused by the checks anyway)
    reward = all_rewards[:num_steps]
    kept = tf.shape(reward)[0]  # < num_steps only for a malformed source, which the checks then name
    reward = reward + tf.one_hot(kept - 1, kept, dtype=tf.float32) * last_reward
    episode = {
        "observation": observation,
        "action": step("action", lambda: None)[:num_steps],
        "reward": reward,
        "intervention": step("intervention", lambda: tf.zeros([rows], tf.bool))[:num_steps],
        "subgoals": subgoals,
        "terminal": terminal,
        "language_instruction": _scalar_field(parsed, src["language_instruction"], "language_instruction", language),
        "episode_id": _scalar_field(parsed, src["episode_id"], "episode_id", episode_id),
        "task": task,
        "robot_id": _scalar_field(parsed, src["robot_id"], "robot_id", tf.constant(str(defaults["robot_id"]))),
        "policy_version": _scalar_field(parsed, src["policy_version"], "policy_version", tf.constant(int(defaults["policy_version"]), tf.int64)),
        "source": _scalar_field(parsed, src["source"], "source", tf.constant(str(defaults["source"]))),
        "success": _scalar_field(parsed, src["success"], "success", success),
        "num_subgoals": _scalar_field(parsed, src["num_subgoals"], "num_subgoals", tf.constant(int(defaults["num_subgoals"]), tf.int32)),
    }
    return episode, counts


def episode_checks(episode: Mapping[str, Any], counts: Mapping[str, Any], resolved: ResolvedMap) -> tuple[Any, list[tuple[str, str]]]:
    """The per-episode checks as a [K] bool tensor (True = ok) and K static (field, problem) labels.

    Static labels + a tensor of outcomes let the same checks drive a graph assertion (strict mode), a
    filter (skip mode) and a Python report, without string formatting inside the graph.
    """
    import tensorflow as tf

    rows = tf.reduce_max(tf.stack(list(counts.values())))
    labels: list[tuple[str, str]] = [("steps", "has fewer than 2 steps (an episode needs at least one action)")]
    oks = [rows >= 2]
    for field in _STEP_FIELDS:
        for source in resolved.sources[field]:
            labels.append((episode_field(field), f"source key '{source.path}' has a different step count than the other step fields (a missing key or a wrong shape)"))
            oks.append(tf.equal(counts[source.path], rows))
    for field in FINITE_FIELDS:
        if resolved.mapped(field):
            value = episode["observation"][field] if field in episode["observation"] else episode[field]
            labels.append((episode_field(field), "holds a non-finite value (NaN or inf)"))
            oks.append(tf.reduce_all(tf.math.is_finite(value)))
    emb = resolved.embodiment
    low, high = list(emb.action_low), list(emb.action_high)
    bounds = f"[{low[0]}, {high[0]}]" if len(set(low)) == len(set(high)) == 1 else f"low {low}, high {high}"
    labels.append(("action", f"has values outside {bounds}, the embodiment {emb.name!r}'s bounds (standardize the "
                             "dataset's actions)"))
    a = episode["action"]
    oks.append(tf.reduce_all(tf.logical_and(a >= tf.constant(low, tf.float32) - ACTION_TOLERANCE,
                                            a <= tf.constant(high, tf.float32) + ACTION_TOLERANCE)))
    labels.append(("success", "is False but the episode ends in a terminal step (only success terminates)"))
    oks.append(tf.logical_or(tf.logical_not(episode["terminal"]), episode["success"]))
    sources = [s.value for s in schema.Source]
    labels.append(("source", f"is not one of {sources}"))
    oks.append(tf.reduce_any(tf.equal(episode["source"], tf.constant(sources))))
    for field in ("language_instruction", "task"):
        labels.append((field, "is empty"))
        oks.append(tf.strings.length(tf.strings.strip(episode[field])) > 0)
    return tf.stack(oks), labels
