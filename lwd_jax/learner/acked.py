"""The servicer's dedupe table: episode id -> content digest of every acknowledged episode, in bounded RAM.

Why: exactly-once ingest needs to answer "was this id acknowledged, and with which content?" for every id the
fleet ever sent (a robot whose ack was lost retries, possibly after a learner restart; the same id with other
content is ALREADY_EXISTS naming both hashes). A dict of every id grew the learner by ~190 B per episode for
ever (the soak: ~10 MB per 54k episodes; a fleet uploading for a year: GBs). Here only the newest `window` ids
live in RAM — the retries that matter arrive seconds after their upload — and the rest in an SQLite file beside
the dataset, whose page cache is bounded.

Why SQLite needs no fsync: the index is derived data. The dataset and its fleet log are the record of what was
acknowledged; `FleetStore.rebuild` compares the index with them at every start and refills it when they
disagree (a crash may lose the index's last inserts, never the episodes), so the index is written with
`synchronous=OFF` and costs microseconds per episode beside the append's fsyncs.

Without a path (tests, ingest replicas) it is RAM only: with `window=None` every id is kept (a small run's
table), with a window the oldest are forgotten — correct where `persist` itself knows every committed id
(the replicas' commit records answer StoredElsewhere), since then a forgotten id costs a payload read, not a
second copy.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping

DEFAULT_WINDOW = 50_000  # ids kept in RAM (~200 B each: ~10 MB) in front of the on-disk index
_SCHEMA = "CREATE TABLE IF NOT EXISTS acked (id TEXT PRIMARY KEY, n INTEGER NOT NULL, digest BLOB) WITHOUT ROWID"


def _pack(digest: str | None) -> bytes | None:
    """sha256 hex -> its 32 raw bytes (80 B less per entry than the text)."""
    return None if digest is None else bytes.fromhex(digest)


def _unpack(packed: bytes | None) -> str | None:
    return None if packed is None else bytes(packed).hex()


class AckedIndex(Mapping[str, "str | None"]):
    """episode id -> content digest (None: stored before digests existed), oldest first when iterated.

    Thread-safe (one lock; lookups of the RAM window never touch the file). A Mapping, so a test can compare
    it with a dict; `__iter__` and `items` read the whole index (for tests and tools, not the hot path).
    """

    def __init__(self, path: str | None = None, window: int | None = DEFAULT_WINDOW):
        if window is not None and window < 1:
            raise ValueError(f"AckedIndex.window: expected >= 1 ids kept in RAM (or None: all), got {window}")
        self.path = path
        self.window = None if path is None and window is None else window
        self._recent: collections.OrderedDict[str, bytes | None] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._n = 0  # the next row's acknowledgement order (the file's `n` column; iteration sorts by it)
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")  # derived data: refilled from the fleet log when it lags
            self._db.execute(_SCHEMA)
            self._n = self._db.execute("SELECT coalesce(max(n) + 1, 0) FROM acked").fetchone()[0]

    # ---------------------------------------------------------------- writes

    def add(self, episode_id: str, digest: str | None) -> None:
        """Marks `episode_id` acknowledged with `digest` (the same id again replaces its digest)."""
        self.update([(episode_id, digest)])

    def update(self, items: Iterable[tuple[str, str | None]] | Mapping[str, str | None]) -> None:
        """Adds many (id, digest) pairs in one transaction (a restart's refill)."""
        pairs = items.items() if isinstance(items, Mapping) else items
        with self._lock:
            rows = []
            for eid, digest in pairs:
                packed = _pack(digest)
                rows.append((eid, self._n, packed))  # (an id already there keeps its order; only its digest changes)
                self._n += 1
                self._remember(eid, packed)
            if rows and self._db is not None:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT INTO acked (id, n, digest) VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE "
                                     "SET digest = excluded.digest", rows)
                self._db.execute("COMMIT")

    def clear(self) -> None:
        """Forgets every id (the index disagreed with the store: it is refilled from the store's record)."""
        with self._lock:
            self._recent.clear()
            self._n = 0
            if self._db is not None:
                self._db.execute("DELETE FROM acked")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # ---------------------------------------------------------------- reads

    def lookup(self, episode_id: str) -> tuple[bool, str | None]:
        """(acknowledged?, its digest): the RAM window first, then the file."""
        with self._lock:
            if episode_id in self._recent:
                return True, _unpack(self._recent[episode_id])
            found = self._lookup_file(episode_id)
        return (False, None) if found is None else (True, _unpack(found[0]))

    def __contains__(self, episode_id: object) -> bool:
        return isinstance(episode_id, str) and self.lookup(episode_id)[0]

    def __getitem__(self, episode_id: str) -> str | None:
        found, digest = self.lookup(episode_id)
        if not found:
            raise KeyError(episode_id)
        return digest

    def __len__(self) -> int:
        """Ids indexed: the file's row count (a scan: at a start, not per upload), or the RAM table's."""
        with self._lock:
            if self._db is None:
                return len(self._recent)
            return self._db.execute("SELECT count(*) FROM acked").fetchone()[0]

    def __iter__(self) -> Iterator[str]:
        return (eid for eid, _ in self.items())

    def items(self) -> Iterator[tuple[str, str | None]]:  # type: ignore[override]
        """Every (id, digest) in acknowledgement order (the file's, or the RAM window's)."""
        with self._lock:
            if self._db is None:
                rows = [(k, _unpack(v)) for k, v in self._recent.items()]
            else:
                rows = [(k, _unpack(v)) for k, v in self._db.execute("SELECT id, digest FROM acked ORDER BY n")]
        return iter(rows)

    def ram_entries(self) -> int:
        """Ids held in RAM now (bounded by `window`): what the memory test checks."""
        with self._lock:
            return len(self._recent)

    # ---------------------------------------------------------------- internals (under the lock)

    def _lookup_file(self, episode_id: str) -> tuple[bytes | None] | None:
        if self._db is None:
            return None
        return self._db.execute("SELECT digest FROM acked WHERE id = ?", (episode_id,)).fetchone()

    def _remember(self, episode_id: str, packed: bytes | None) -> None:
        self._recent[episode_id] = packed
        self._recent.move_to_end(episode_id)
        if self.window is not None and len(self._recent) > self.window:
            self._recent.popitem(last=False)
