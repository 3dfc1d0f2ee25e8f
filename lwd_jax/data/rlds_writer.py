"""Write `Episode`s as a TFDS RLDS dataset on disk, appendable one durable shard at a time.

Which TFDS machinery, and why: the files are a standard TFDS dataset (TFRecord shards, `features.json`,
`dataset_info.json` written from a `tfds.core.DatasetInfo`), readable by `tfds.builder_from_directory` and
by any RLDS tool. We do not use a `DatasetBuilder` (it generates a whole dataset in one batch job, and
cannot append) nor `tfds.core.SequentialWriter`, which can append but (a) rewrites `dataset_info.json` in
place, so a crash mid-write leaves an unreadable dataset, (b) never fsyncs, so an "acknowledged" episode
can vanish on power loss, and (c) keeps a shard open across calls. The learner must persist each fleet
episode *before* acknowledging it, so this writer commits a shard the way a database commits a log:

  1. validate every episode of the group (a bad one raises SchemaError, nothing is written);
  2. write the group to a temporary file, flush and fsync it;
  3. rename it to its final shard name (atomic on POSIX) and fsync the directory;
  4. append one line to `shards.manifest` (index, records, bytes) and fsync it: the commit point;
  5. every `info_every` appends, at open and at close: rewrite `dataset_info.json` (the shard list stock
     TFDS reads) via temp file + fsync + rename + directory fsync.

Why a manifest: rewriting the whole shard list on every append made each append cost O(shards) (1.4 ms
at 1k shards, 7-10 ms at 12k, with native memory retained per rewrite), so a long-running fleet store got
slower with every episode; a manifest line is O(1). Our reader and a reopened writer take the shards the
manifest lists beyond `dataset_info.json` too; stock TFDS sees the list as of the last rewrite (at most
`info_every` shards behind while a writer runs, complete once it closed or reopened). A reader never sees
a half-written shard. A crash between 3 and 4 leaves a shard that no manifest line names: on the next
open it is renamed `*.orphan` (its episodes were never acknowledged, so the robot will resend them;
adopting them would duplicate them); a torn last manifest line is cut off the same way.
One shard per `append` call: per fleet episode online, or per group of `episodes_per_shard` offline.
A lock file keeps a second writer process out of the same directory.

Shard names follow the shard count (`rlds_format.shard_digits`): TFDS looks for shard i of a split of n shards
under an index of max(5, len(str(n))) digits, so the commit that takes the store to 100,000 (1,000,000) shards
first hard-links every committed shard under the wider name (fsync), then commits its own shard under it and
rewrites dataset_info.json at once. A reader that still holds the old list finds the old names, one that sees the
new count finds the new ones; the next open (after every commit is listed) removes the narrower names. A crash
anywhere in between is put right by that open: every committed shard gets its name for the committed count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode, SchemaError, validate_episode
from lwd_jax.data import rlds_format

log = logging.getLogger(__name__)

LOCK_NAME = ".lwd_rlds_writer.lock"
TMP_MARK = ".tmp-"  # temporary files are ".<final name>.tmp-<pid>"
ORPHAN_SUFFIX = ".orphan"
MANIFEST_NAME = "shards.manifest"
_SHARDS, _BYTES = "@@shard_lengths@@", "@@num_bytes@@"  # placeholders of the dataset_info.json template
DEFAULT_INFO_EVERY = 256  # appends between dataset_info.json rewrites (each costs O(shards))
DEFAULT_EPISODES_PER_SHARD = 32  # offline bulk writes: a few MB per shard, few files, cheap appends
DATASET_DESCRIPTION = "lwd-jax robot episodes (RLDS step convention of fleet_api/schema.py)"


@dataclasses.dataclass
class WriteStats:
    """Counters of what this writer has committed (for throughput reports and logs)."""

    episodes: int = 0
    steps: int = 0  # RLDS steps written (T + 1 per episode)
    shards: int = 0
    bytes: int = 0
    seconds: float = 0.0  # wall time inside append(), fsyncs included

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else float("nan")


def fsync_path(path: str, directory: bool = False) -> None:
    """fsync a file or directory by path (a rename is durable only once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_bytes(path: str, data: bytes, durable: bool) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_path(os.path.dirname(path), directory=True)


class RLDSWriter:
    """Appends episodes to an RLDS dataset in `data_dir`, creating it on first use.

    `with_image` fixes the layout of a new dataset (None: no image); when opening an existing one it must
    match (None takes whatever the dataset has). `known_tasks` / `max_steps` / `embodiment` are passed to
    `validate_episode`; the embodiment's widths fix the layout (an existing dataset must have them).
    `durable=False` skips the fsyncs (tests, scratch data); the commit order stays the same.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        *,
        with_image: bool | None = None,
        durable: bool = True,
        known_tasks: Mapping[str, Any] | None = None,
        max_steps: int | None = None,
        info_every: int = DEFAULT_INFO_EVERY,
        embodiment: Embodiment = UR5E,
    ):
        import tensorflow as tf  # noqa: F401  (imported here so append() timings exclude the first TF import)
        from tensorflow_datasets.core import dataset_info, naming

        self.data_dir = os.path.abspath(os.fspath(data_dir))
        self.durable = durable
        self.known_tasks = known_tasks
        self.max_steps = max_steps
        self.embodiment = embodiment
        self.stats = WriteStats()
        self.info_every = max(1, int(info_every))
        self._since_info = 0
        self._manifest: Any = None
        self._append_lock = threading.Lock()  # one commit at a time (e.g. several gRPC handler threads)
        os.makedirs(self.data_dir, exist_ok=True)
        self._lock_file = open(os.path.join(self.data_dir, LOCK_NAME), "a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"RLDS dataset '{self.data_dir}': another writer holds {LOCK_NAME}") from None
        try:
            info_path = os.path.join(self.data_dir, "dataset_info.json")
            exists = os.path.exists(info_path)
            if exists:
                self.with_image, self._shard_lengths, self._num_bytes = self._read_existing(with_image)
            else:
                self.with_image, self._shard_lengths, self._num_bytes = bool(with_image), [], 0
            self._features = rlds_format.episode_features(self.with_image, embodiment)
            self._info_template: str | None = None  # dataset_info.json as TFDS made it (see _write_info)
            self._lengths_json, self._lengths_listed = "", 0
            self._episodes, self._counted = 0, 0  # num_episodes's running count over _shard_lengths[:_counted]
            self._info = dataset_info.DatasetInfo(
                builder=dataset_info.DatasetIdentity(
                    name=rlds_format.DATASET_NAME, version=rlds_format.DATASET_VERSION, data_dir=self.data_dir, module_name=__name__
                ),
                description=DATASET_DESCRIPTION,
                features=self._features,
            )
            self._template = naming.ShardedFileTemplate(
                dataset_name=rlds_format.DATASET_NAME,
                data_dir=self.data_dir,
                split=rlds_format.SPLIT,
                filetype_suffix=rlds_format.FILE_SUFFIX,
                template=rlds_format.SHARD_TEMPLATE,
            )
            manifest_path = os.path.join(self.data_dir, MANIFEST_NAME)
            listed = len(self._shard_lengths)
            for _, records, nbytes in self._replay_manifest(manifest_path):
                self._shard_lengths.append(records)
                self._num_bytes += nbytes
            narrower = self._recover()
            if not exists:  # features.json first: dataset_info.json appearing marks the dataset as valid
                self._features.save_config(self.data_dir)
                self._write_info()
            elif len(self._shard_lengths) > listed:  # committed since the last rewrite: list them for stock TFDS
                self._write_info()
            for path in narrower:  # every commit is listed under the names its count gives: the old ones can go
                os.remove(path)
            if narrower and self.durable:
                fsync_path(self.data_dir, directory=True)
            self._manifest = open(manifest_path, "ab")
        except BaseException:
            self.close()
            raise

    # -- public API -------------------------------------------------------------------------------

    @property
    def num_episodes(self) -> int:
        # A running count, not sum(self._shard_lengths): every append names its episode's position, and an
        # O(shards) sum there, under the append lock, grew with the store (issue 16's soak).
        if self._counted < len(self._shard_lengths):
            self._episodes += sum(self._shard_lengths[self._counted:])
            self._counted = len(self._shard_lengths)
        return self._episodes

    @property
    def num_shards(self) -> int:
        return len(self._shard_lengths)

    def append(self, episodes: Sequence[Episode] | Episode) -> str:
        """Validates `episodes` and commits them as one new shard; returns its path once durable.

        The fleet path: `writer.append(episode)` returns, then the learner acknowledges the episode.
        Thread-safe: concurrent callers commit one after another.

        Raises SchemaError (naming the dataset, the episode's position in this call and the field)
        before anything is written if any episode is bad; the dataset on disk is left as it was.
        """
        episodes = [episodes] if isinstance(episodes, Episode) else list(episodes)
        if not episodes:
            raise ValueError(f"RLDS dataset '{self.data_dir}': append() needs at least one episode")
        with self._append_lock:
            start = time.perf_counter()
            records = [self._serialize(i, ep) for i, ep in enumerate(episodes)]
            path = self._commit_shard(records)
            self.stats.seconds += time.perf_counter() - start
        self.stats.episodes += len(episodes)
        self.stats.steps += sum(ep.num_steps + 1 for ep in episodes)
        self.stats.shards += 1
        self.stats.bytes += sum(len(r) for r in records)
        return path

    def write(self, episodes: Iterable[Episode], episodes_per_shard: int = DEFAULT_EPISODES_PER_SHARD) -> WriteStats:
        """Appends a stream of episodes in shards of `episodes_per_shard` (offline bulk writing)."""
        if episodes_per_shard < 1:
            raise ValueError(f"RLDS writer: episodes_per_shard must be >= 1, got {episodes_per_shard}")
        group: list[Episode] = []
        for ep in episodes:
            group.append(ep)
            if len(group) == episodes_per_shard:
                self.append(group)
                group = []
        if group:
            self.append(group)
        return self.stats

    def close(self) -> None:
        """Lists every committed shard in dataset_info.json, then releases the directory lock (every committed
        shard was already durable: this only brings stock TFDS up to date)."""
        try:
            if self._manifest is not None and not self._manifest.closed:
                if self._since_info:
                    with self._append_lock:
                        self._write_info()
                        self._since_info = 0
                self._manifest.close()
        finally:
            if not self._lock_file.closed:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()

    def __enter__(self) -> RLDSWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------

    def _read_existing(self, with_image: bool | None) -> tuple[bool, list[int], int]:
        """(has image, shard lengths, bytes) of the dataset already in data_dir, refusing foreign layouts."""
        import tensorflow_datasets as tfds

        existing = tfds.builder_from_directory(self.data_dir).info
        found = existing.features.to_json()
        layouts = [img for img in (False, True)
                   if rlds_format.episode_features(img, self.embodiment).to_json() == found]
        if existing.name != rlds_format.DATASET_NAME or not layouts:
            raise SchemaError(
                f"RLDS dataset '{self.data_dir}': field 'features' of the existing dataset '{existing.name}' is not "
                f"this schema's layout for embodiment {self.embodiment.describe()} (rlds_format.episode_features); "
                f"append only to datasets this writer created, for the same embodiment"
            )
        if with_image is not None and bool(with_image) != layouts[0]:
            raise SchemaError(
                f"RLDS dataset '{self.data_dir}': field 'observation/image' expected "
                f"{'present' if layouts[0] else 'absent'} (as in the existing dataset), writer asked with_image={with_image}"
            )
        split = existing.splits[rlds_format.SPLIT]
        return layouts[0], list(split.shard_lengths), int(split.num_bytes)

    def _serialize(self, index: int, ep: Episode) -> bytes:
        where = f"RLDS dataset '{self.data_dir}': new episode #{self.num_episodes + index}"
        validate_episode(ep, known_tasks=self.known_tasks, max_steps=self.max_steps, embodiment=self.embodiment,
                         where=where)
        if ("image" in ep.observation) != self.with_image:
            raise SchemaError(
                f"{where} {ep.episode_id} (task {ep.task!r}): field 'observation/image' expected "
                f"{'present' if self.with_image else 'absent'} in this dataset, got {'present' if 'image' in ep.observation else 'absent'}"
            )
        return rlds_format.episode_to_example_bytes(ep)

    def _shard_path(self, index: int, num_shards: int | None = None) -> str:
        """Shard `index`'s file when the dataset lists `num_shards` (default: the committed count)."""
        n = len(self._shard_lengths) if num_shards is None else num_shards
        return os.path.join(self.data_dir, rlds_format.shard_filename(index, n))

    def _find_shard(self, index: int) -> str | None:
        """Shard `index`'s file under whichever width it has (opening a store, before its count is settled)."""
        low = rlds_format.shard_digits(index)
        for digits in range(low, low + 2):
            path = self._shard_path(index, 10 ** (digits - 1))
            if os.path.exists(path):
                return path
        return None

    def _widen_names(self, count: int, num_shards: int) -> None:
        """Hard-links the `count` committed shards under the names a split of `num_shards` gives them (the
        commit that crosses a power of ten), durable before that commit's manifest line."""
        for i in range(count):
            new = self._shard_path(i, num_shards)
            if not os.path.exists(new):
                os.link(self._shard_path(i, count), new)
        if self.durable:
            fsync_path(self.data_dir, directory=True)
        log.info("RLDS dataset '%s': %d shards linked under %d-digit names (TFDS's names for %d shards)",
                 self.data_dir, count, rlds_format.shard_digits(num_shards), num_shards)

    def _commit_shard(self, records: list[bytes]) -> str:
        import tensorflow as tf

        index = len(self._shard_lengths)
        widened = rlds_format.shard_digits(index + 1) != rlds_format.shard_digits(index)
        if widened:
            self._widen_names(index, index + 1)
        path = self._shard_path(index, index + 1)
        tmp = os.path.join(self.data_dir, f".{os.path.basename(path)}{TMP_MARK}{os.getpid()}")
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for record in records:
                    writer.write(record)
            if self.durable:
                fsync_path(tmp)
            os.replace(tmp, path)
            if self.durable:
                fsync_path(self.data_dir, directory=True)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        nbytes = sum(len(r) for r in records)
        before = self._manifest.tell()
        try:
            self._manifest.write(f"{index} {len(records)} {nbytes}\n".encode())
            self._manifest.flush()
            if self.durable:
                os.fsync(self._manifest.fileno())
        except BaseException:  # roll back: no manifest line, so the shard never existed
            with contextlib.suppress(OSError):
                self._manifest.truncate(before)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            raise
        self._shard_lengths.append(len(records))
        self._num_bytes += nbytes
        self._since_info += 1
        if widened or self._since_info >= self.info_every:  # stock TFDS must look for the new names at once
            try:
                self._write_info()
                self._since_info = 0
            except OSError as e:  # the manifest already holds the commit; the next rewrite catches up
                log.error("RLDS dataset '%s': dataset_info.json rewrite failed (%s); the manifest has the shard", self.data_dir, e)
        return path

    def _replay_manifest(self, manifest_path: str) -> list[tuple[int, int, int]]:
        """(index, records, bytes) of the shards the manifest commits beyond dataset_info.json's list; a torn
        last line (a crash mid-append) is cut off, so its shard is set aside as an orphan."""
        entries, good_end = manifest_entries(manifest_path)
        if os.path.exists(manifest_path) and os.path.getsize(manifest_path) != good_end:
            log.warning("RLDS dataset '%s': torn last line in %s (crash mid-commit); cut off", self.data_dir, MANIFEST_NAME)
            with open(manifest_path, "r+b") as f:
                f.truncate(good_end)
                if self.durable:
                    os.fsync(f.fileno())
        extra = []
        for index, records, nbytes in entries:
            if index < len(self._shard_lengths) + len(extra):
                continue
            if index != len(self._shard_lengths) + len(extra) or self._find_shard(index) is None:
                raise RuntimeError(f"RLDS dataset '{self.data_dir}': {MANIFEST_NAME} commits shard {index} but "
                                   f"{os.path.basename(self._shard_path(index, index + 1))} is missing (the dataset "
                                   "was edited by hand or a disk lost data); refusing to append")
            extra.append((index, records, nbytes))
        return extra

    def _write_info(self) -> None:
        """Rewrites dataset_info.json with the current shard list.

        Why TFDS builds it only once per writer: rebuilding DatasetInfo/SplitDict with every shard at each
        rewrite grew the learner's RSS by 0.25 KB per fleet episode (measured, issue 16; 0.01 KB without the
        rewrites), so the JSON TFDS produced the first time is a template that later rewrites fill with the
        shard lengths and byte count. tests/test_rlds.py checks the filled text against TFDS's own."""
        if self._info_template is None:
            info = json.loads(self._tfds_info_json())
            if len(info.get("splits", ())) != 1:
                raise RuntimeError(f"RLDS dataset '{self.data_dir}': TFDS wrote {len(info.get('splits', ()))} splits, expected 1")
            info["splits"][0]["shardLengths"], info["splits"][0]["numBytes"] = _SHARDS, _BYTES
            self._info_template = json.dumps(info, separators=(",", ":"))
        # The shard list as JSON, grown by the shards committed since the last rewrite only: no O(shards)
        # transient per rewrite beyond the text itself (proto3 JSON writes int64 as strings).
        fresh = ",".join(f'"{n}"' for n in self._shard_lengths[self._lengths_listed:])
        self._lengths_json += ("," if self._lengths_json and fresh else "") + fresh
        self._lengths_listed = len(self._shard_lengths)
        text = self._info_template.replace(f'"{_SHARDS}"', f"[{self._lengths_json}]", 1).replace(
            f'"{_BYTES}"', f'"{self._num_bytes}"', 1)
        _atomic_write_bytes(os.path.join(self.data_dir, "dataset_info.json"), text.encode("utf-8"), self.durable)

    def _tfds_info_json(self) -> str:
        """dataset_info.json as TFDS writes it for the current shards."""
        from tensorflow_datasets.core import dataset_info, file_adapters, splits

        split = splits.SplitInfo(
            name=rlds_format.SPLIT,
            shard_lengths=list(self._shard_lengths),
            num_bytes=self._num_bytes,
            filename_template=self._template,
        )
        self._info.set_splits(splits.SplitDict([split]))
        self._info.set_file_format(file_adapters.FileFormat.TFRECORD, override=True)
        return dataset_info.get_dataset_info_json(self._info.as_proto)

    def _recover(self) -> list[str]:
        """Removes temp files of a crashed writer, sets aside shards that no metadata lists, and gives every
        committed shard the name its count gives it (a link from the other width: a crash around a widening).
        Returns the committed shards' files under other names, to remove once dataset_info.json lists them."""
        n = len(self._shard_lengths)
        shard_re = rlds_format.shard_index_pattern()
        names = sorted(os.listdir(self.data_dir))
        present = set(names)
        other: dict[int, list[str]] = {}  # index -> its files under names other than its current one
        for name in names:
            path = os.path.join(self.data_dir, name)
            if name.startswith(".") and TMP_MARK in name:
                os.remove(path)
                continue
            match = shard_re.match(name)
            if not match:
                continue
            index = int(match.group(1))
            if index >= n:
                log.warning("RLDS dataset '%s': shard %s is not in dataset_info.json (crash before commit); renamed %s", self.data_dir, name, ORPHAN_SUFFIX)
                os.replace(path, path + ORPHAN_SUFFIX)
            elif name != rlds_format.shard_filename(index, n):
                other.setdefault(index, []).append(path)
        linked = 0
        for index, paths in other.items():
            if rlds_format.shard_filename(index, n) not in present:
                os.link(paths[0], self._shard_path(index, n))
                linked += 1
        if linked and self.durable:
            fsync_path(self.data_dir, directory=True)
        if linked:
            log.warning("RLDS dataset '%s': %d shards relinked under TFDS's names for %d shards (a crash around a "
                        "widening)", self.data_dir, linked, n)
        return [path for paths in other.values() for path in paths]


def manifest_entries(manifest_path: str) -> tuple[list[tuple[int, int, int]], int]:
    """The manifest's complete lines as (shard index, records, bytes), and the byte offset where they end."""
    if not os.path.exists(manifest_path):
        return [], 0
    with open(manifest_path, "rb") as f:
        data = f.read()
    entries, end = [], 0
    for line in data.split(b"\n")[:-1]:  # the piece after the last newline is torn (or empty)
        parts = line.split()
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            break
        entries.append((int(parts[0]), int(parts[1]), int(parts[2])))
        end += len(line) + 1
    return entries, end


def write_episodes(
    data_dir: str | os.PathLike,
    episodes: Iterable[Episode],
    *,
    episodes_per_shard: int = DEFAULT_EPISODES_PER_SHARD,
    with_image: bool | None = None,
    durable: bool = True,
) -> WriteStats:
    """Writes (or appends) `episodes` to the dataset in `data_dir`; returns the write statistics.

    `with_image=None` follows the dataset if it exists, else the first episode.
    """
    episodes = iter(episodes)
    first = next(episodes, None)
    if first is None:
        raise ValueError(f"RLDS dataset '{data_dir}': write_episodes() got no episodes")
    if with_image is None and not os.path.exists(os.path.join(os.fspath(data_dir), "dataset_info.json")):
        with_image = "image" in first.observation
    with RLDSWriter(data_dir, with_image=with_image, durable=durable) as writer:
        return writer.write(_chain(first, episodes), episodes_per_shard=episodes_per_shard)


def _chain(first: Episode, rest: Iterator[Episode]) -> Iterator[Episode]:
    yield first
    yield from rest
