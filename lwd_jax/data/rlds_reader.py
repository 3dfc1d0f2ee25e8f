"""Read an RLDS dataset (ours, or a third-party one through a key map) as `Episode`s or as batches of
chunked n-step transitions, with bad records named and either raised or skipped.

Why tf.data in graph mode on whole episodes: reading RLDS step by step in eager mode runs at ~1.8k
steps/s here (DESIGN.md), far below what the learner consumes. We parse each episode record into
whole-episode tensors ([T+1, ...], `tfds.features.Sequence` rather than the nested `Dataset` feature),
map it to our fields (rlds_keymap.py), check it, and cut all its transitions at once with
`transitions.chunk_transitions_tf` inside `Dataset.map`; batches come out as numpy. No per-step Python.

Bad input (the forensics are lwd_jax/data/rlds_forensics.py). Each record is checked in the graph (step counts agree, floats finite, actions in bounds,
source/terminal/success consistent, task known); TFRecord corruption and parse failures (wrong dtype,
wrong shape, missing key) surface as TF errors that carry no episode coordinates. So:
  * on_error="raise" (strict): the fast pipeline runs unguarded; on the first error, a scan of the
    dataset locates the first bad record and raises an RLDSReadError naming the dataset, the episode
    (index, id, shard, record) and the field. Episodes before it were delivered normally.
  * on_error="skip": one scan first (one extra decode pass, no transition cutting) finds every bad
    record; the pipeline then reads only the good ones, and `reader.errors` lists the bad ones, each an
    RLDSReadError (also logged as warnings). Records of a corrupt shard before the damage are kept.
Episode indices count records in shard order (= write order for our writer), from 0.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode, SchemaError, validate_episode
from lwd_jax.data import rlds_format
from lwd_jax.data.rlds_errors import RLDSReadError
from lwd_jax.data.rlds_forensics import RecordForensics, ScanReport, plain_graph_fn
from lwd_jax.data.rlds_keymap import (
    KeyMap,
    canonical_episode,
    episode_checks,
    parse_features,
    resolve_key_map,
)
from lwd_jax.data.rlds_writer import MANIFEST_NAME, manifest_entries
from lwd_jax.data.transitions import TASK_ID_UNKNOWN, check_chunk_args, chunk_transitions_tf

log = logging.getLogger(__name__)

ON_ERROR_MODES = ("raise", "skip")
DEFAULT_BATCH_SIZE = 1024
SHUFFLE_EPISODES = 32  # raw episode records shuffled before decoding when a shuffle is asked for
READ_CYCLE_LENGTH = 4  # shards read at once on the per-shard path (only used around damaged shards)
TEXT_COLUMNS = ("task", "language_instruction")
RAW_SPEC = ([], "string")  # a decoder's inputs: one serialized record ...
INDEX_SPEC = ([], "int64")  # ... and its global episode index
class RLDSReader(RecordForensics):
    """One split of an RLDS dataset directory, read through a key map (None = our own layout).

    `defaults` fills per-episode fields the dataset lacks (e.g. {"task": "pick-cube"}); `standardize`
    is an optional graph function on the mapped episode dict (e.g. rescale a dataset's actions to
    [-1, 1]), applied before the checks. `embodiment` (default: the simulated UR5e) gives the widths episodes
    are padded to and the action bounds they are checked against. See rlds_keymap.py for the key map rules.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        key_map: KeyMap | None = None,
        defaults: Mapping[str, Any] | None = None,
        standardize: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: str = "raise",
        split: str = rlds_format.SPLIT,
        embodiment: Embodiment = UR5E,
        shards: Sequence[int] | None = None,
    ):
        """`shards`: read only these shard indices (in this order), as if the dataset held just them (episode
        numbers in errors count within them): a restarted fleet store reads the newest episodes alone."""
        import tensorflow_datasets as tfds

        if on_error not in ON_ERROR_MODES:
            raise ValueError(f"RLDSReader: on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.on_error = on_error
        try:
            info = tfds.builder_from_directory(self.data_dir).info
        except Exception as e:  # noqa: BLE001  (any failure here means: not a readable dataset)
            raise RLDSReadError(self.data_dir, f"is not a readable TFDS dataset directory ({type(e).__name__}: {e})", field="dataset_info.json") from e
        if split not in info.splits:
            raise RLDSReadError(self.data_dir, f"split {split!r} not found; splits: {list(info.splits)}", field="split")
        split_info = info.splits[split]
        self.shards = [os.fspath(p) for p in split_info.filepaths]
        self.shard_lengths = [int(n) for n in split_info.shard_lengths]
        # Shards our writer committed since its last dataset_info.json rewrite (a running or killed learner).
        # Their names, and the listed ones' too, are those of the whole committed count: past a power of ten
        # (100,000 shards) the writer has linked every shard under the wider name before committing more.
        entries, _ = manifest_entries(os.path.join(self.data_dir, MANIFEST_NAME))
        listed = len(self.shards)
        extra: list[int] = []  # records of shards listed, listed + 1, ... (a run, as our writer commits them)
        for index, records, _ in entries:
            if index == listed + len(extra):
                extra.append(records)
        total = listed + len(extra)
        if extra and rlds_format.shard_digits(total) != rlds_format.shard_digits(listed):
            self.shards = [os.path.join(self.data_dir, rlds_format.shard_filename(i, total, split)) for i in range(listed)]
        for index, records in enumerate(extra, start=listed):
            path = os.path.join(self.data_dir, rlds_format.shard_filename(index, total, split))
            if not os.path.exists(path):
                break
            self.shards.append(path)
            self.shard_lengths.append(records)
        if shards is not None:
            bad = [i for i in shards if not 0 <= i < len(self.shards)]
            if bad:
                raise RLDSReadError(self.data_dir, f"shard indices {bad[:5]} not in [0, {len(self.shards)})", field="shards")
            self.shards = [self.shards[i] for i in shards]
            self.shard_lengths = [self.shard_lengths[i] for i in shards]
        self.offsets = [int(x) for x in np.concatenate([[0], np.cumsum(self.shard_lengths)])[:-1]]
        self.num_episodes = int(sum(self.shard_lengths))
        self.embodiment = embodiment  # the widths episodes are padded to, the action bounds they are checked against
        self.key_map = resolve_key_map(info.features, self.data_dir, info.name, key_map, defaults, embodiment)
        self.has_image = self.key_map.mapped("image")
        self._features = parse_features(info.features, self.key_map)
        self._standardize = standardize
        # Decoders are traced once per layout and reused by every pipeline, scan and single-record check
        # (tracing costs ~0.5-1 s); without a `standardize` function, readers of one layout share them.
        self._layout_key = None if standardize is not None else _layout_key(self._features, self.key_map)
        self._decoders: dict[Any, tuple[Any, list[tuple[str, str]]]] = {}
        self._scan_reports: dict[Any, ScanReport] = {}
        self.errors: list[RLDSReadError] = []

    # -- public API -------------------------------------------------------------------------------

    def check(self, *, task_ids: Mapping[str, int] | None = None, n_chunks: int | Mapping[str, int] | None = None) -> ScanReport:
        """Decodes and checks every record once (cached); never raises for bad records, reports them.

        With `task_ids` / `n_chunks`, episodes whose task they do not cover count as bad too.
        """
        lookups = _Lookups(task_ids, n_chunks)
        if lookups.key not in self._scan_reports:
            self._scan_reports[lookups.key] = self._scan(lookups)
        return self._scan_reports[lookups.key]

    def episodes(self) -> Iterator[Episode]:
        """Every (good) episode as an `Episode`, in shard order, each also passed to `validate_episode`."""
        dataset = self.episode_dataset(ordered=True)
        for arrays in self._guarded(dataset.as_numpy_iterator(), lambda a: a["episode_index"], _Lookups(None, None)):
            ep = rlds_format.episode_from_arrays(arrays)
            index = int(arrays["episode_index"])
            try:
                validate_episode(ep, embodiment=self.embodiment, where=f"RLDS dataset '{self.data_dir}': episode #{index}")
            except SchemaError as e:
                error = self._episode_error(index, ep.episode_id, str(e))
                if self.on_error == "raise":
                    raise error from e
                self._record(error)
                continue
            yield ep

    def episode_sources(self) -> dict[int, str]:
        """Global episode index -> `episode_metadata/source` ("demo", "rollout", ...), for every good episode.

        Why by index: transition columns carry `episode_index`, so a caller selects, e.g., the demos' transitions
        without decoding their steps twice.
        """
        import tensorflow as tf

        dataset = self.episode_dataset(ordered=True).map(
            lambda e: {"episode_index": e["episode_index"], "source": e["source"]}, num_parallel_calls=tf.data.AUTOTUNE
        )
        out = {}
        for a in self._guarded(dataset.as_numpy_iterator(), lambda a: a["episode_index"], _Lookups(None, None)):
            out[int(a["episode_index"])] = a["source"].decode("utf-8")
        return out

    def episode_dataset(
        self,
        *,
        task_ids: Mapping[str, int] | None = None,
        n_chunks: int | Mapping[str, int] | None = None,
        ordered: bool = False,
        shuffle_episodes: int = 0,
        seed: int | None = None,
    ) -> Any:
        """A tf.data.Dataset of mapped, checked episode dicts (plus episode_index, task_id, n_chunks).

        Episodes come in shard order, except around damaged shards in skip mode without `ordered`
        (then a few shards are read at once: deterministic, but interleaved), or when `shuffle_episodes`
        > 0 shuffles the serialized records with a buffer of that many episodes.
        """
        import tensorflow as tf

        lookups = _Lookups(task_ids, n_chunks)
        if self.on_error == "skip":
            report = self.check(task_ids=task_ids, n_chunks=n_chunks)
            counts, good = report.readable, tf.constant(report.good)
        else:
            counts, good = self.shard_lengths, None
        records = self._records(counts, ordered=ordered)
        if good is not None:
            records = records.filter(plain_graph_fn(lambda index, raw: tf.gather(good, index)))
        if shuffle_episodes:
            records = records.shuffle(shuffle_episodes, seed=seed)
        decoder, labels = self._decoder(lookups)

        def decode(index, raw):
            episode, oks = decoder(raw, index)
            message = tf.strings.join(
                ["RLDS episode #", tf.strings.as_string(index), ": ", tf.strings.reduce_join(tf.boolean_mask(_label_strings(labels), tf.logical_not(oks)), separator="; ")]
            )
            with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(oks), [message])]):
                return tf.nest.map_structure(tf.identity, episode)

        return records.map(plain_graph_fn(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def transitions_dataset(
        self,
        *,
        chunk_len: int,
        n_chunks: int | Mapping[str, int],
        gamma: float,
        task_ids: Mapping[str, int],
        stride: int = 1,
        batch_size: int = DEFAULT_BATCH_SIZE,
        shuffle_buffer: int = 0,
        seed: int | None = None,
        drop_remainder: bool = False,
    ) -> Any:
        """tf.data.Dataset of transition batches (see transitions.py for the columns) + `episode_index`.

        Whole-episode blocks of transitions are re-cut into batches by `rebatch` (no per-transition
        work). With `shuffle_buffer` > 0 the order is randomised without per-transition work either:
        episode records are shuffled (SHUFFLE_EPISODES at a time, before decoding, so the buffer holds
        bytes), then each block of `shuffle_buffer` consecutive transitions is permuted by one gather.
        For uniform sampling, load everything into a replay buffer instead (`load_transitions`).
        """
        import tensorflow as tf

        check_chunk_args(chunk_len, gamma, stride)
        if batch_size < 1:
            raise ValueError(f"RLDSReader: batch_size must be >= 1, got {batch_size}")
        shuffle_seed = None if not shuffle_buffer else (seed if seed is not None else int(np.random.SeedSequence().generate_state(1)[0]))
        episodes = self.episode_dataset(task_ids=task_ids, n_chunks=n_chunks, shuffle_episodes=SHUFFLE_EPISODES if shuffle_buffer else 0, seed=shuffle_seed)
        cut = _cutter(chunk_len, gamma, stride)
        transitions = episodes.map(plain_graph_fn(cut), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if shuffle_buffer:
            seeds = tf.data.Dataset.random(seed=shuffle_seed)  # one permutation seed per block, reproducible

            def permute(block, block_seed):
                order = tf.argsort(tf.random.stateless_uniform(tf.shape(block["step"]), seed=tf.stack([block_seed, block_seed // 2])))
                return tf.nest.map_structure(lambda column: tf.gather(column, order), block)

            blocks = tf.data.Dataset.zip((transitions.rebatch(shuffle_buffer), seeds))
            transitions = blocks.map(plain_graph_fn(permute), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        transitions = transitions.rebatch(batch_size, drop_remainder=drop_remainder)
        return transitions.prefetch(tf.data.AUTOTUNE)

    def iter_transitions(self, **kwargs: Any) -> Iterator[dict[str, np.ndarray]]:
        """Numpy batches of `transitions_dataset(**kwargs)`; text columns as object arrays of str."""
        dataset = self.transitions_dataset(**kwargs)
        lookups = _Lookups(kwargs.get("task_ids"), kwargs.get("n_chunks"))
        for batch in self._guarded(dataset.as_numpy_iterator(), lambda b: b["episode_index"], lookups):
            for key in TEXT_COLUMNS:
                batch[key] = np.array([v.decode("utf-8") for v in batch[key].tolist()], dtype=object)
            yield batch

    def load_transitions(self, **kwargs: Any) -> dict[str, np.ndarray]:
        """Every transition in one dict of columns (e.g. for `TransitionBuffer.add`)."""
        batches = list(self.iter_transitions(**kwargs))
        if not batches:
            return {}
        return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

    # -- graph pieces -----------------------------------------------------------------------------

    def _decoder(self, lookups: _Lookups) -> tuple[Any, list[tuple[str, str]]]:
        """(tf.function(raw, index) -> (episode, oks), the static labels of oks), traced once."""
        import tensorflow as tf

        cache = _DECODERS if self._layout_key is not None else self._decoders
        key = (self._layout_key, lookups.key)
        if key not in cache:
            # locals, not `self`: a shared decoder must not keep this reader (or its directory) alive
            features, key_map, standardize, tables = self._features, self.key_map, self._standardize, lookups.tables()
            labels_box: list[list[tuple[str, str]]] = []

            @tf.function(input_signature=[tf.TensorSpec(*RAW_SPEC), tf.TensorSpec(*INDEX_SPEC)], autograph=False)
            def decode(raw, index):
                parsed = features.deserialize_example(raw)
                episode, counts = canonical_episode(parsed, key_map, index)
                if standardize is not None:
                    episode = standardize(episode)
                oks, labels = episode_checks(episode, counts, key_map)
                extra_oks, extra_labels = lookups.apply(episode, tables)
                episode["episode_index"] = index
                labels_box.append(labels + extra_labels)
                return episode, tf.concat([oks, extra_oks], axis=0)

            decode.get_concrete_function()  # trace now: the labels are known from here on
            cache[key] = (decode, labels_box[0])
        return cache[key]

    def _records(self, counts: list[int] | None = None, *, tolerant: bool = False, ordered: bool = True) -> Any:
        """(global episode index, serialized record) pairs, reading at most counts[i] records of shard i.

        Fast path (every shard read whole, no byte damage expected): one TFRecordDataset over all shards
        in order, so a record's position is its global index. Opening a sub-pipeline per shard costs
        ~5 ms per file, which dominates with one-episode fleet shards; the per-shard path is kept for
        reading around damaged shards (`take` stops before the damage; `tolerant` drops read errors).
        """
        import tensorflow as tf

        if not tolerant and (counts is None or list(counts) == self.shard_lengths):
            return tf.data.TFRecordDataset(tf.constant(self.shards, tf.string)).enumerate()
        counts = self.shard_lengths if counts is None else counts
        cycle_length = 1 if ordered else READ_CYCLE_LENGTH
        files = tf.data.Dataset.from_tensor_slices(
            (tf.constant(self.shards, tf.string), tf.constant(self.offsets, tf.int64), tf.constant(counts, tf.int64))
        )

        def read(path, offset, count):
            records = tf.data.TFRecordDataset(path).take(count).enumerate().map(plain_graph_fn(lambda j, raw: (offset + j, raw)))
            return records.ignore_errors() if tolerant else records

        if cycle_length == 1:
            return files.interleave(plain_graph_fn(read), cycle_length=1)
        return files.interleave(plain_graph_fn(read), cycle_length=cycle_length, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    # -- error handling ---------------------------------------------------------------------------



_DECODERS: dict[Any, tuple[Any, list[tuple[str, str]]]] = {}  # shared by readers of one layout
_CUTTERS: dict[tuple[int, float, int], Any] = {}


def _layout_key(features: Any, key_map: Any) -> str:
    """Everything a decoder depends on, as a string: the parsed features and the resolved key map."""
    sources = {field: [s.path for s in srcs] for field, srcs in key_map.sources.items()}
    return json.dumps([features.to_json(), sources, key_map.defaults, key_map.dataset_name], sort_keys=True, default=str)


def _cutter(chunk_len: int, gamma: float, stride: int) -> Any:
    """tf.function(episode) -> transitions + episode_index, traced once per argument set and layout."""
    import tensorflow as tf

    key = (int(chunk_len), float(gamma), int(stride))
    if key not in _CUTTERS:

        @tf.function(autograph=False)
        def cut(episode):
            out = chunk_transitions_tf(episode, chunk_len=chunk_len, n_chunks=episode["n_chunks"], gamma=gamma, stride=stride)
            out["episode_index"] = tf.fill(tf.shape(out["step"]), episode["episode_index"])
            return out

        _CUTTERS[key] = cut
    return _CUTTERS[key]


@dataclasses.dataclass(frozen=True)
class _Lookups:
    """Per-task lookups done in the graph: task -> task_id, task -> n_chunks (when given per task)."""

    task_ids: Mapping[str, int] | None
    n_chunks: int | Mapping[str, int] | None

    @property
    def key(self) -> Any:
        def freeze(x: Any) -> Any:
            return tuple(sorted((str(k), int(v)) for k, v in x.items())) if isinstance(x, Mapping) else x

        return (freeze(self.task_ids), freeze(self.n_chunks))

    def tables(self) -> dict[str, Any]:
        """The hash tables, created once per decoder (they live as long as the traced function)."""
        import tensorflow as tf

        def table(mapping: Mapping[str, int]) -> Any:
            keys = tf.constant([str(k) for k in mapping], tf.string)
            values = tf.constant([int(v) for v in mapping.values()], tf.int32)
            return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), default_value=TASK_ID_UNKNOWN)

        out = {}
        if self.task_ids:
            out["task"] = table(self.task_ids)
        if isinstance(self.n_chunks, Mapping):
            out["n_chunks"] = table(self.n_chunks)
        return out

    def apply(self, episode: dict[str, Any], tables: Mapping[str, Any]) -> tuple[Any, list[tuple[str, str]]]:
        import tensorflow as tf

        oks, labels = [], []
        task = episode["task"]
        if self.task_ids is not None:
            task_id = tables["task"].lookup(task) if "task" in tables else tf.constant(TASK_ID_UNKNOWN)
            oks.append(task_id >= 0)
            labels.append(("task", f"is not in task_ids {sorted(self.task_ids)}"))
        else:
            task_id = tf.constant(TASK_ID_UNKNOWN)
        if "n_chunks" in tables:
            n = tables["n_chunks"].lookup(task)
            oks.append(n >= 1)
            labels.append(("task", f"has no n_chunks entry (n_chunks given per task: {dict(self.n_chunks)})"))
        else:
            n = tf.constant(int(self.n_chunks) if self.n_chunks is not None else 1, tf.int32)
        episode["task_id"] = task_id
        episode["n_chunks"] = n
        return (tf.stack(oks) if oks else tf.zeros([0], tf.bool)), labels


def _label_strings(labels: list[tuple[str, str]]) -> Any:
    import tensorflow as tf

    return tf.constant([f"field '{field}' {problem}" for field, problem in labels])


def read_episodes(data_dir: str | os.PathLike, **reader_kwargs: Any) -> list[Episode]:
    """All episodes of a dataset (see RLDSReader for key_map / defaults / on_error)."""
    return list(RLDSReader(data_dir, **reader_kwargs).episodes())


def load_transitions(data_dir: str | os.PathLike, *, reader_kwargs: Mapping[str, Any] | None = None, **transition_kwargs: Any) -> dict[str, np.ndarray]:
    """All chunked transitions of a dataset as columns (see RLDSReader.transitions_dataset for kwargs)."""
    return RLDSReader(data_dir, **(reader_kwargs or {})).load_transitions(**transition_kwargs)
