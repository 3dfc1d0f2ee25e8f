"""Per-robot bearer tokens for the learner's gRPC API.

Why tokens per robot: the learner trains on whatever the fleet uploads, so an unauthenticated upload is a
way to poison the policy; a per-robot token also lets the learner refuse a robot that claims another
robot's id, and lets one robot's token be revoked alone. Tokens ride in call metadata (`robot-id`,
`authorization: Bearer <token>`), so use TLS anywhere but loopback, or they can be sniffed.

Tokens file (JSON, one entry per robot; only hashes are stored, so the file is not itself a secret):

    {"robot-0": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", ...}

Make one with `python -m lwd_jax.learner.auth add --tokens tokens.json robot-0` (prints the new token once,
to give to that robot's bridge). Comparison of digests is constant-time (`hmac.compare_digest`), and an
unknown robot id is compared against a dummy digest so timing does not reveal which ids exist.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence

from fleet_api.wire import BEARER_PREFIX, METADATA_AUTHORIZATION, METADATA_ROBOT_ID

HASH_PREFIX = "sha256:"
TOKEN_BYTES = 32  # 256 bits of entropy from `secrets`
_DUMMY_DIGEST = hashlib.sha256(b"lwd-jax: no such robot").hexdigest()


class AuthError(Exception):
    """Missing or wrong credentials; the message says which part without echoing any secret."""


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


def add_robot(path: str | os.PathLike[str], robot_id: str, token: str | None = None) -> str:
    """Adds (or replaces) `robot_id` in the tokens file, written atomically; returns the plain token."""
    hashes = load_token_hashes(path) if os.path.exists(path) else {}
    token = token or generate_token()
    hashes[robot_id] = hash_token(token)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokens-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(hashes, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return token


class TokenAuth:
    """Checks call metadata against per-robot token hashes; returns the authenticated robot id."""

    def __init__(self, token_hashes: Mapping[str, str]):
        self._digests = {rid: h.removeprefix(HASH_PREFIX) for rid, h in token_hashes.items()}

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TokenAuth:
        return cls(load_token_hashes(path))

    @classmethod
    def from_plain_tokens(cls, tokens: Mapping[str, str]) -> TokenAuth:
        """For tests and tools that hold plain tokens in memory."""
        return cls({rid: hash_token(tok) for rid, tok in tokens.items()})

    def authenticate(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """Returns the robot id from `metadata` if its bearer token matches; raises AuthError otherwise."""
        md = {k.lower(): v for k, v in (metadata or ())}
        robot_id, auth = md.get(METADATA_ROBOT_ID), md.get(METADATA_AUTHORIZATION)
        if not isinstance(robot_id, str) or not robot_id:
            raise AuthError(f"missing '{METADATA_ROBOT_ID}' metadata")
        if not isinstance(auth, str) or not auth.startswith(BEARER_PREFIX):
            raise AuthError(f"missing '{METADATA_AUTHORIZATION}: {BEARER_PREFIX}<token>' metadata")
        presented = hashlib.sha256(auth[len(BEARER_PREFIX):].encode("utf-8")).hexdigest()
        expected = self._digests.get(robot_id)
        ok = hmac.compare_digest(presented, expected if expected is not None else _DUMMY_DIGEST)
        if not ok or expected is None:
            raise AuthError(f"invalid token for robot {robot_id!r}")
        return robot_id


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Manage the learner's per-robot token file.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="add or rotate a robot's token; prints the new token once")
    add.add_argument("--tokens", required=True, help="tokens JSON file (created if absent)")
    add.add_argument("robot_id")
    args = parser.parse_args(argv)
    if args.cmd == "add":
        print(add_robot(args.tokens, args.robot_id))


if __name__ == "__main__":
    main()
