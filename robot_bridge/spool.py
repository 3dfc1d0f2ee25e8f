"""The robot's durable episode spool: every episode is on disk before it is uploaded, until the learner acks it.

Why: a robot's experience is the scarce thing in this system. Network outages, learner restarts and
daemon crashes must not lose an episode, and must not upload one twice (the learner dedupes by episode id,
so re-uploading after a crash between "ack" and "delete" is harmless).

Layout under `root/`:
  pending/<created_ns:020d>-<episode_id>.npz   one episode per file, oldest first by name
  tmp/                                          in-progress writes (never read)
  quarantine/                                   unreadable files moved aside, with a .reason.txt beside
  rejected/                                     episodes the learner refused for good (dead letters), with reason

A file is an uncompressed .npz holding the flat arrays of `wire.episode_arrays` plus the JSON metadata as a
uint8 array under "__meta__"; it is read with `allow_pickle=False`, so no pickle is ever involved.
Writes are atomic: write to tmp/, flush + fsync, rename into pending/, fsync the directory. A file in
pending/ is therefore complete or absent after a kill; a corrupt one (disk error, manual meddling) is moved
to quarantine/ with a logged error and never crashes the daemon or touches the good ones.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.schema import Episode, validate_episode
from fleet_api.wire import ID_PATTERN, episode_arrays, episode_from_parts, episode_metadata

log = logging.getLogger(__name__)

SPOOL_FORMAT_VERSION = 1
META_KEY = "__meta__"
PENDING, TMP, QUARANTINE, REJECTED = "pending", "tmp", "quarantine", "rejected"
SUFFIX = ".npz"
PARTIAL_SUFFIX = ".partial"
REASON_SUFFIX = ".reason.txt"
_ENTRY_NAME = re.compile(r"(?P<ns>\d{20})-(?P<id>[A-Za-z0-9_-]{1,128})\.npz")
_TMP_NAME = re.compile(r".+\.(?P<pid>\d+)\.\d+\.npz\.partial")
# Errors that mean "this file is not a readable episode" (as opposed to a programming error).
_CORRUPT_ERRORS = (zipfile.BadZipFile, ValueError, KeyError, EOFError, TypeError, OSError)


@dataclasses.dataclass(frozen=True, order=True)
class SpoolEntry:
    """One pending episode file; entries sort oldest first."""

    created_ns: int
    episode_id: str
    path: Path


def _fsync_dir(path: Path) -> None:
    """Makes a rename/unlink in `path` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def encode_episode(ep: Episode) -> bytes:
    """The .npz bytes of one episode (pure; used by `Spool.put`)."""
    meta = {"spool_format": SPOOL_FORMAT_VERSION, **episode_metadata(ep)}
    arrays = dict(episode_arrays(ep))
    if META_KEY in arrays:
        raise ValueError(f"field '{META_KEY}' is reserved by the spool")
    arrays[META_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_episode(data: bytes | Path) -> Episode:
    """Inverse of `encode_episode`; raises (ValueError, KeyError, BadZipFile, ...) on a corrupt file."""
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(src, allow_pickle=False) as z:
        meta = json.loads(bytes(z[META_KEY]).decode("utf-8"))
        if meta.get("spool_format") != SPOOL_FORMAT_VERSION:
            raise ValueError(f"field 'spool_format' expected {SPOOL_FORMAT_VERSION}, got {meta.get('spool_format')!r}")
        arrays = {k: z[k] for k in z.files if k != META_KEY}
    return episode_from_parts(meta, arrays)


class Spool:
    """A directory of episodes waiting for the learner's ack. Safe to share between threads of one daemon.

    `validate` checks each episode against the schema for the robot's `embodiment` on `put` (catches a recorder
    bug on the robot, where it can be fixed, instead of at the learner) and on `load`.
    """

    def __init__(self, root: str | os.PathLike[str], *, validate: bool = True, fsync: bool = True,
                 embodiment: Embodiment = UR5E):
        self.root = Path(root)
        self.embodiment = embodiment
        self._validate = validate
        self._fsync = fsync
        self._lock = threading.Lock()
        self._last_ns = 0
        for sub in (PENDING, TMP, QUARANTINE, REJECTED):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._recover_tmp()

    # ------------------------------------------------------------------ writing

    def put(self, ep: Episode) -> SpoolEntry:
        """Durably stores `ep`; returns its entry. Storing an id that is already pending returns that entry."""
        if not isinstance(ep.episode_id, str) or not ID_PATTERN.fullmatch(ep.episode_id):
            raise ValueError(f"field 'episode_id' expected {ID_PATTERN.pattern}, got {ep.episode_id!r}")
        if self._validate:
            validate_episode(ep, embodiment=self.embodiment, where="spool put")
        existing = self._find(ep.episode_id)
        if existing is not None:
            return existing
        data = encode_episode(ep)
        with self._lock:
            ns = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = ns
        name = f"{ns:020d}-{ep.episode_id}{SUFFIX}"
        tmp = self.root / TMP / f"{ep.episode_id}.{os.getpid()}.{ns}{SUFFIX}{PARTIAL_SUFFIX}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if self._fsync:
                os.fsync(fh.fileno())
        final = self.root / PENDING / name
        os.replace(tmp, final)
        if self._fsync:
            _fsync_dir(final.parent)
        return SpoolEntry(ns, ep.episode_id, final)

    def ack(self, entry: SpoolEntry) -> None:
        """Deletes an episode the learner acknowledged (a missing file is fine: acked twice)."""
        try:
            entry.path.unlink()
        except FileNotFoundError:
            return
        if self._fsync:
            _fsync_dir(entry.path.parent)

    def reject(self, entry: SpoolEntry, reason: str) -> Path | None:
        """Moves an episode the learner refused to rejected/ (kept for debugging, never re-sent)."""
        return self._move_aside(entry.path, REJECTED, reason)

    # ------------------------------------------------------------------ reading

    def pending(self) -> list[SpoolEntry]:
        """Pending entries, oldest first. Files with unexpected names are quarantined, not listed."""
        entries = []
        for path in (self.root / PENDING).iterdir():
            m = _ENTRY_NAME.fullmatch(path.name)
            if m is None:
                self._move_aside(path, QUARANTINE, "unexpected file name in pending/")
                continue
            entries.append(SpoolEntry(int(m["ns"]), m["id"], path))
        return sorted(entries)

    def __len__(self) -> int:
        return sum(1 for p in (self.root / PENDING).iterdir() if _ENTRY_NAME.fullmatch(p.name))

    def load(self, entry: SpoolEntry) -> Episode | None:
        """The episode of `entry`, or None if it is gone (acked meanwhile) or corrupt (then quarantined)."""
        try:
            ep = decode_episode(entry.path)
            if ep.episode_id != entry.episode_id:
                raise ValueError(f"field 'episode_id' is {ep.episode_id!r} but the file name says {entry.episode_id!r}")
            if self._validate:
                validate_episode(ep, embodiment=self.embodiment, where="spool load")
        except FileNotFoundError:
            return None
        except _CORRUPT_ERRORS as e:
            self._move_aside(entry.path, QUARANTINE, f"{type(e).__name__}: {e}")
            return None
        return ep

    def iter_pending(self) -> Iterator[tuple[SpoolEntry, Episode]]:
        """(entry, episode) oldest first, skipping (and quarantining) unreadable files."""
        for entry in self.pending():
            ep = self.load(entry)
            if ep is not None:
                yield entry, ep

    # ------------------------------------------------------------------ internals

    def _find(self, episode_id: str) -> SpoolEntry | None:
        for entry in self.pending():
            if entry.episode_id == episode_id:
                return entry
        return None

    def _move_aside(self, path: Path, sub: str, reason: str) -> Path | None:
        """Moves `path` into `sub`/ with a reason file beside it; logs an error; never raises."""
        dest = self.root / sub / path.name
        n = 0
        while dest.exists():
            n += 1
            dest = self.root / sub / f"{path.name}.{n}"
        try:
            os.replace(path, dest)
            dest.with_name(dest.name + REASON_SUFFIX).write_text(reason + "\n", encoding="utf-8")
            if self._fsync:
                _fsync_dir(dest.parent)
                _fsync_dir(path.parent)
        except FileNotFoundError:
            return None
        except OSError:
            log.exception("spool: could not move %s to %s/", path, sub)
            return None
        log.error("spool: moved %s to %s/: %s", path.name, sub, reason)
        return dest

    def _recover_tmp(self) -> None:
        """Partial writes of dead processes are quarantined (kept, not deleted: they may still be readable)."""
        for path in (self.root / TMP).iterdir():
            m = _TMP_NAME.fullmatch(path.name)
            if m is not None and (int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"]))):
                continue  # a live writer (this or another process) owns it
            self._move_aside(path, QUARANTINE, "partial write left by a process that died before renaming it")
