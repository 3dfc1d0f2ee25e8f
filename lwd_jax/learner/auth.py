"""Per-robot bearer tokens for the learner's gRPC API.

Why tokens per robot: the learner trains on whatever the fleet uploads, so an unauthenticated upload is a
way to poison the policy; a per-robot token also lets the learner refuse a robot that claims another
robot's id, and lets one robot's token be revoked alone. Tokens ride in call metadata (`robot-id`,
`authorization: Bearer <token>`), so use TLS anywhere but loopback, or they can be sniffed.

Tokens file (JSON, one entry per robot; only hashes are stored, so the file is not itself a secret):

    {"robot-0": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", ...}

Make one with `python -m lwd_jax.learner.auth add --tokens tokens.json robot-0` (prints the new token once,
to give to that robot's bridge); `remove` revokes, `list` shows the ids. A learner started with
`online.tokens_file` re-reads the file when it changes (`TokenAuth.watching`), so adding, rotating or
revoking a robot takes effect on its next call without a restart. Comparison of digests is constant-time
(`hmac.compare_digest`), and an unknown robot id is compared against a dummy digest so timing does not
reveal which ids exist.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence

from fleet_api.wire import BEARER_PREFIX, ID_PATTERN, METADATA_AUTHORIZATION, METADATA_ROBOT_ID

HASH_PREFIX = "sha256:"
TOKEN_BYTES = 32  # 256 bits of entropy from `secrets`
_DUMMY_DIGEST = hashlib.sha256(b"lwd-jax: no such robot").hexdigest()

log = logging.getLogger(__name__)


class AuthError(Exception):
    """Missing or wrong credentials; the message says which part without echoing any secret."""


class CredentialsError(RuntimeError):
    """The learner's own credentials (tokens file, TLS certificate or key) are missing or unreadable: the
    entry points exit 3 on it, which a supervisor must not answer by restarting."""


def hash_token(token: str) -> str:
    """The stored form of a token: "sha256:<hex digest of its UTF-8 bytes>"."""
    return HASH_PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> str:
    """A fresh random URL-safe token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def load_token_hashes(path: str | os.PathLike[str]) -> dict[str, str]:
    """Reads a tokens file; raises ValueError naming the robot whose entry is malformed."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"tokens file {path}: expected a JSON object {{robot_id: 'sha256:<hex>'}}")
    for robot_id, digest in data.items():
        if not isinstance(digest, str) or not digest.startswith(HASH_PREFIX) or len(digest) != len(HASH_PREFIX) + 64:
            raise ValueError(f"tokens file {path}: entry for robot {robot_id!r} must be 'sha256:<64 hex chars>'")
    return dict(data)


def _write_hashes(path: str | os.PathLike[str], hashes: Mapping[str, str]) -> None:
    """Atomic replace: a learner re-reading the file sees the old table or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokens-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(dict(hashes), fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def add_robot(path: str | os.PathLike[str], robot_id: str, token: str | None = None) -> str:
    """Adds (or replaces) `robot_id` in the tokens file, written atomically; returns the plain token."""
    if not ID_PATTERN.fullmatch(robot_id):
        raise ValueError(f"robot id {robot_id!r}: expected {ID_PATTERN.pattern}")
    hashes = load_token_hashes(path) if os.path.exists(path) else {}
    token = token or generate_token()
    hashes[robot_id] = hash_token(token)
    _write_hashes(path, hashes)
    return token


def remove_robot(path: str | os.PathLike[str], robot_id: str) -> None:
    """Revokes `robot_id`: its entry leaves the tokens file (a watching learner refuses it from then on)."""
    hashes = load_token_hashes(path)
    if robot_id not in hashes:
        raise KeyError(f"tokens file {path}: no robot {robot_id!r} (known: {sorted(hashes)})")
    del hashes[robot_id]
    _write_hashes(path, hashes)


class TokenAuth:
    """Checks call metadata against per-robot token hashes; returns the authenticated robot id."""

    def __init__(self, token_hashes: Mapping[str, str], *, path: str | os.PathLike[str] | None = None,
                 extra: Mapping[str, str] | None = None):
        self._extra = {rid: h.removeprefix(HASH_PREFIX) for rid, h in (extra or {}).items()}
        self._digests = {**{rid: h.removeprefix(HASH_PREFIX) for rid, h in token_hashes.items()}, **self._extra}
        self._path = os.fspath(path) if path is not None else None
        self._stamp = _file_stamp(self._path) if self._path else None
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TokenAuth:
        """The file's table, read once (tests and tools)."""
        return cls(load_token_hashes(path))

    @classmethod
    def watching(cls, path: str | os.PathLike[str], extra_plain_tokens: Mapping[str, str] | None = None) -> TokenAuth:
        """The file's table, re-read whenever the file changes (mtime, size or inode), plus `extra_plain_tokens`
        held in memory only (the embedded simulated robots' tokens never touch the operator's file).

        A change that does not parse keeps the previous table and logs why: a typo in the file must not lock
        the whole fleet out, nor let anyone in."""
        return cls(load_token_hashes(path), path=path,
                   extra={rid: hash_token(t) for rid, t in (extra_plain_tokens or {}).items()})

    def robot_ids(self) -> list[str]:
        self._maybe_reload()
        return sorted(self._digests)

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        stamp = _file_stamp(self._path)
        if stamp == self._stamp:
            return
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp
            try:
                table = load_token_hashes(self._path)
            except (OSError, ValueError) as e:
                log.error("tokens file changed but could not be read (%s); keeping the previous %d robots", e,
                          len(self._digests))
                return
            before = set(self._digests)
            self._digests = {**{rid: h.removeprefix(HASH_PREFIX) for rid, h in table.items()}, **self._extra}
            log.warning("tokens file %s reloaded: %d robots (added %s, removed %s)", self._path, len(self._digests),
                        sorted(set(self._digests) - before), sorted(before - set(self._digests)))

    @classmethod
    def from_plain_tokens(cls, tokens: Mapping[str, str]) -> TokenAuth:
        """For tests and tools that hold plain tokens in memory."""
        return cls({rid: hash_token(tok) for rid, tok in tokens.items()})

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """Returns the robot id from `metadata` if its bearer token matches; raises AuthError otherwise."""
        self._maybe_reload()
        md = {k.lower(): v for k, v in (metadata or ())}
        robot_id, auth = md.get(METADATA_ROBOT_ID), md.get(METADATA_AUTHORIZATION)
        if not isinstance(robot_id, str) or not robot_id:
            raise AuthError(f"missing '{METADATA_ROBOT_ID}' metadata")
        if not isinstance(auth, str) or not auth.startswith(BEARER_PREFIX):
            raise AuthError(f"missing '{METADATA_AUTHORIZATION}: {BEARER_PREFIX}<token>' metadata")
        presented = hashlib.sha256(auth[len(BEARER_PREFIX):].encode("utf-8")).hexdigest()
        expected = self._digests.get(robot_id)  # one dict read: a concurrent reload swaps the whole table
        ok = hmac.compare_digest(presented, expected if expected is not None else _DUMMY_DIGEST)
        if not ok or expected is None:
            raise AuthError(f"invalid token for robot {robot_id!r}")
        return robot_id


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def main(argv: Sequence[str] | None = None) -> int:
    """`add` (prints the new token once), `remove` (revoke), `list`. Exit 2 on a bad file or unknown robot."""
    parser = argparse.ArgumentParser(prog="python -m lwd_jax.learner.auth",
                                     description="Manage the learner's per-robot token file (hashes only).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="add or rotate a robot's token; prints the new token once")
    add.add_argument("--tokens", required=True, help="tokens JSON file (created if absent)")
    add.add_argument("--out", help="also write the token to this file (mode 0600), for the robot's token_file")
    add.add_argument("robot_id")
    rm = sub.add_parser("remove", help="revoke a robot (a running learner refuses it on its next call)")
    rm.add_argument("--tokens", required=True)
    rm.add_argument("robot_id")
    ls = sub.add_parser("list", help="the robot ids in the file")
    ls.add_argument("--tokens", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "add":
            token = add_robot(args.tokens, args.robot_id)
            if args.out:
                fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(token + "\n")
                print(f"robot {args.robot_id}: token written to {args.out} (give that file to the robot)")
            else:
                print(token)
        elif args.cmd == "remove":
            remove_robot(args.tokens, args.robot_id)
            print(f"robot {args.robot_id}: revoked in {args.tokens}")
        else:
            print("\n".join(sorted(load_token_hashes(args.tokens))))
    except (OSError, ValueError, KeyError) as e:
        print(f"lwd_jax.learner.auth: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
