"""Bad-record forensics of the RLDS reader: find every bad episode record and say what is wrong with it.

Why apart from the pipeline (rlds_reader.py): the fast path reads whole episodes in graph mode and names
nothing; when a record fails (TFRecord corruption, a parse failure, a failed content check) these
methods locate it (dataset, episode index and id, shard, record, field) by a tolerant scan and by
re-reading single records. `RLDSReader` mixes them in; they use its shards, offsets, key map and decoder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lwd_jax.data.rlds_errors import RLDSReadError
from lwd_jax.data.rlds_keymap import episode_field

log = logging.getLogger("lwd_jax.data.rlds_reader")  # the reader's logger: users filter on one name

# TF parse errors name the bad key as "Key: steps/a/b.", "feature with key steps/a/b:" or "Feature: a/b ("
_KEY_IN_TF_ERROR = re.compile(r"(?:Key:|key|Feature:)\s+([\w./-]+?)[.:\s(]")
_TF_BANNERS = ("Graph execution error", "Detected at node", "File \"", "[[")
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$")


@dataclasses.dataclass
class ScanReport:
    """The outcome of checking every record: which episodes are good, and an error for each bad one."""

    num_episodes: int
    good: np.ndarray  # [num_episodes] bool
    readable: list[int]  # per shard: records readable before any byte-level damage
    errors: list[RLDSReadError]

    @property
    def ok(self) -> bool:
        return not self.errors


class RecordForensics:
    """The reader's scan and localisation methods (mixed into `RLDSReader`)."""

    def _guarded(self, iterator: Iterator[Any], indices_of: Callable[[Any], Any], lookups: Any) -> Iterator[Any]:
        """Yields from a tf.data iterator, turning TF errors into a named RLDSReadError (strict mode)
        and checking at the end that no episode went missing silently (a shard cut at a record edge)."""
        import tensorflow as tf

        seen = np.zeros(self.num_episodes, np.bool_)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                raise self._first_error(e, lookups) from e
            seen[np.asarray(indices_of(item))] = True
            yield item
        expected = self.check(task_ids=lookups.task_ids, n_chunks=lookups.n_chunks).good if self.on_error == "skip" else np.ones_like(seen)
        if np.any(expected & ~seen):
            raise self._first_error(None, lookups)

    def _first_error(self, original: Exception | None, lookups: Any) -> RLDSReadError:
        report = self.check(task_ids=lookups.task_ids, n_chunks=lookups.n_chunks)
        if report.errors:
            return report.errors[0]
        detail = f"{type(original).__name__}: {first_line(str(original))}" if original else "episodes went missing"
        return RLDSReadError(self.data_dir, f"reading failed but a scan found no bad record ({detail})")

    def _episode_error(self, index: int, episode_id: str | None, message: str) -> RLDSReadError:
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        match = re.search(r"field '([^']+)' (.*)", message)
        field, problem = (match.group(1), match.group(2)) if match else (None, message)
        return RLDSReadError(
            self.data_dir, problem, field=field, episode_index=index, episode_id=episode_id,
            shard=os.path.basename(self.shards[shard]), record=index - self.offsets[shard],
        )  # fmt: skip

    def _record(self, error: RLDSReadError) -> None:
        """Keeps (once) and logs a bad episode; in strict mode the caller raises the first one."""
        if all(str(error) != str(known) for known in self.errors):
            self.errors.append(error)
            log.warning("%s: %s", "skipping bad episode" if self.on_error == "skip" else "bad episode", error)

    def _scan(self, lookups: Any) -> ScanReport:
        """One tolerant pass: decode and check every record; localise the records that did not decode."""
        import tensorflow as tf

        decoder, labels = self._decoder(lookups)

        def checks(index, raw):
            episode, oks = decoder(raw, index)
            return index, oks, episode["episode_id"]

        # A quick byte pass first: with every shard intact and complete, the fast path's record positions
        # are global indices, and only parse/content errors (dropped by ignore_errors) remain to be found.
        intact = self._bytes_intact()
        records = self._records() if intact else self._records(tolerant=True, ordered=False)
        dataset = records.map(plain_graph_fn(checks), num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).ignore_errors()
        decoded = np.zeros(self.num_episodes, np.bool_)
        good = np.zeros(self.num_episodes, np.bool_)
        errors: dict[int, RLDSReadError] = {}
        for index, oks, episode_id in dataset.as_numpy_iterator():
            decoded[index] = True
            good[index] = bool(oks.all())
            if not good[index]:
                errors[int(index)] = self._check_error(int(index), episode_id.decode("utf-8"), oks, labels)
        readable = list(self.shard_lengths)
        for shard, (offset, length) in enumerate(zip(self.offsets, self.shard_lengths, strict=True)):
            for record in range(length):
                index = offset + record
                if decoded[index]:
                    continue
                if record >= readable[shard]:
                    errors[index] = self._lost_error(shard, record, readable[shard])
                    continue
                error, unreadable = self._localise(shard, record, decoder)
                errors[index] = error
                if unreadable:
                    readable[shard] = record
        report = ScanReport(self.num_episodes, good, readable, [errors[i] for i in sorted(errors)])
        for error in report.errors:
            self._record(error)
        return report

    def _bytes_intact(self) -> bool:
        """True if every shard reads to the end without a TFRecord error and holds the listed count."""
        import tensorflow as tf

        try:
            count = tf.data.TFRecordDataset(tf.constant(self.shards, tf.string)).reduce(tf.constant(0, tf.int64), plain_graph_fn(lambda n, _: n + 1))
        except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError):
            return False
        return int(count) == self.num_episodes

    def _check_error(self, index: int, episode_id: str, oks: np.ndarray, labels: list[tuple[str, str]]) -> RLDSReadError:
        failed = [labels[i] for i in np.flatnonzero(~oks)]
        field, problem = failed[0]
        if len(failed) > 1:
            problem += "; also " + "; ".join(f"field '{f}' {p}" for f, p in failed[1:])
        return self._episode_error(index, episode_id, f"field '{field}' {problem}")

    def _lost_error(self, shard: int, record: int, first_bad: int) -> RLDSReadError:
        return RLDSReadError(
            self.data_dir, f"unreadable: the shard's bytes are truncated or corrupt from record {first_bad} on",
            episode_index=self.offsets[shard] + record, shard=os.path.basename(self.shards[shard]), record=record,
        )  # fmt: skip

    def _localise(self, shard: int, record: int, decoder: Any) -> tuple[RLDSReadError, bool]:
        """Re-reads one record alone to say what is wrong with it; returns (error, bytes unreadable)."""
        import tensorflow as tf

        index = self.offsets[shard] + record
        name = os.path.basename(self.shards[shard])
        try:
            raws = list(tf.data.TFRecordDataset(self.shards[shard]).skip(record).take(1).as_numpy_iterator())
        except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.OutOfRangeError) as e:
            problem = f"unreadable: the shard's bytes are truncated or corrupt ({type(e).__name__}: {first_line(e.message)})"
            return RLDSReadError(self.data_dir, problem, episode_index=index, shard=name, record=record), True
        if not raws:
            problem = f"missing: the shard holds fewer records than dataset_info.json lists ({self.shard_lengths[shard]})"
            return RLDSReadError(self.data_dir, problem, episode_index=index, shard=name, record=record), True
        raw = raws[0]
        episode_id = self._peek_episode_id(raw)
        try:
            decoder(tf.constant(raw), tf.constant(index, tf.int64))
        except tf.errors.OpError as e:
            message = first_line(e.message)
            match = _KEY_IN_TF_ERROR.search(message)
            key = match.group(1) if match else None
            field = self.key_map.field_of(key) if key else None
            field = episode_field(field) if field else None
            problem = f"cannot be parsed: {message}" if key is None else f"(source key '{key}') cannot be parsed: {message}"
            return RLDSReadError(self.data_dir, problem, field=field or key, episode_index=index, episode_id=episode_id, shard=name, record=record), False
        # decoded alone but not in the scan: report it rather than lose it silently
        return RLDSReadError(self.data_dir, "failed to decode in the batch pipeline", episode_index=index, episode_id=episode_id, shard=name, record=record), False

    def _peek_episode_id(self, raw: bytes) -> str | None:
        """The record's episode id if just that key parses (for naming a record that fails to decode)."""
        import tensorflow as tf

        sources = self.key_map.sources["episode_id"]
        if not sources or sources[0].path.startswith("steps/"):
            return None
        try:
            parsed = tf.io.parse_single_example(raw, {sources[0].path: tf.io.FixedLenFeature([], tf.string, default_value="")})
            return parsed[sources[0].path].numpy().decode("utf-8") or None
        except (tf.errors.OpError, UnicodeDecodeError):
            return None


def plain_graph_fn(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Marks a tf.data function as plain graph code: our functions have no Python control flow on
    tensors, and skipping AutoGraph's source conversion cuts pipeline construction time by seconds."""
    import tensorflow as tf

    return tf.autograph.experimental.do_not_convert(fn)


def first_line(text: str) -> str:
    """The informative line of a TF error message: not the "Graph execution error" banner, the Python
    traceback of where the op was defined, nor the node/op tags."""
    for line in str(text).splitlines():
        line = _TF_NOISE.sub("", line).strip()
        if line and not line.startswith(_TF_BANNERS):
            return line
    return str(text).strip()
