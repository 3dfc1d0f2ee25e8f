"""Episode <-> protobuf stream and params <-> protobuf stream: the pure conversion half of the fleet API.

Why a separate module of small pure functions: the same conversions run on the robot (encode), on the
learner (decode + check) and in the spool (flat arrays + JSON metadata), and they are easiest to trust when
they can be tested without a server. Nothing here does I/O or touches gRPC channels.

Wire layout (see `protos/lwd_fleet.proto`): an upload is one `EpisodeHeader` (metadata + the dtype, row
shape and length of every field) followed by `StepChunk`s covering the T + 1 RLDS steps in order, each
holding packed little-endian rows of every field. The decoder (`EpisodeAssembler`) checks the header
before any payload (bounded size, known fields, allowed dtypes), each chunk against the header (sequence,
offsets, dtypes, shapes, byte counts), and the totals at the end; every failure is a `WireError` naming
the field. Schema-level checks (value ranges, finiteness, task registry) stay in `schema.validate_episode`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.protos import fleet_pb2
from fleet_api.schema import EPISODE_ID_PATTERN, Episode, SchemaError, assemble_episode

# Version of the episode layout carried in `EpisodeHeader.schema_version`; bump on breaking changes.
WIRE_SCHEMA_VERSION = 1
# ~100 steps per message is where Python gRPC stops being message-bound (DESIGN.md: ~100k vs ~4k steps/s).
DEFAULT_STEPS_PER_CHUNK = 100
# ... but never let one chunk grow past this (image episodes): keeps messages far below the size limit.
DEFAULT_TARGET_CHUNK_BYTES = 1 << 20
DEFAULT_PARAMS_CHUNK_BYTES = 1 << 20
PARAMS_FORMAT_MSGPACK = "flax.serialization.msgpack"

OBS_PREFIX = "observation/"
# Field names on the wire. These mirror `schema.Episode` (kept here because the schema module exports
# its observation keys only inside `validate_episode`); a name outside this set is rejected in the header.
TOP_LEVEL_FIELDS = ("action", "reward", "intervention", "subgoals")
OBS_KEYS = ("state", "state_mask", "proprio", "image")
OPTIONAL_FIELDS = frozenset({OBS_PREFIX + "image"})
KNOWN_FIELDS = tuple(TOP_LEVEL_FIELDS) + tuple(OBS_PREFIX + k for k in OBS_KEYS)
REQUIRED_FIELDS = tuple(f for f in KNOWN_FIELDS if f not in OPTIONAL_FIELDS)

# Plain numeric dtypes only (no object, string or void dtypes: those would be a way to smuggle pickles).
WIRE_DTYPES = frozenset(
    np.dtype(d).newbyteorder("<").str
    for d in (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
              np.float16, np.float32, np.float64)
)
MAX_ROW_RANK = 4  # rows are at most images [H, W, C] plus one spare axis
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")  # episode and robot ids also become file names
# Addresses that never leave the machine: the only ones where plaintext (tokens in the clear) is acceptable.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_TASK_CHARS = 256
MAX_INSTRUCTION_CHARS = 4096
_FIELD_IN_MESSAGE = re.compile(r"field '([^']+)'")

# Call metadata of the contract (gRPC metadata keys are lower case).
METADATA_ROBOT_ID = "robot-id"
METADATA_AUTHORIZATION = "authorization"
BEARER_PREFIX = "Bearer "
# Trailing metadata key in which the learner names the rejected field of an INVALID_ARGUMENT.
METADATA_ERROR_FIELD = "lwd-error-field"


class WireError(SchemaError):
    """A stream does not follow the wire contract; `field` names the offending field (header or array)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field '{field}' {message}")
        self.field = field


class ParamsIntegrityError(ValueError):
    """A params stream is malformed, truncated or fails its sha256 check; never load such bytes."""


def field_of(message: str) -> str | None:
    """Extracts the field name from a `SchemaError`/`WireError` message ("... field 'x' ...")."""
    m = _FIELD_IN_MESSAGE.search(message)
    return m.group(1) if m else None


def is_loopback(host: str) -> bool:
    """True for a loopback host name or address ("[::1]" as written in host:port counts)."""
    return host.strip("[]") in LOOPBACK_HOSTS


def learner_hosts(learner: str) -> list[str]:
    """The host part of each address of a `learner` setting: "host:port", or a comma-separated list of
    them (ingest replicas), or a gRPC target with a scheme ("dns:///name:port", "ipv4:a:p,b:p")."""
    rest = learner.split(":", 1)[1].lstrip("/") if learner.startswith(("dns:", "ipv4:", "ipv6:")) else learner
    return [a.strip().rsplit(":", 1)[0] for a in rest.split(",") if a.strip()]


def channel_target(learner: str) -> tuple[str, list[tuple[str, str]]]:
    """(gRPC target, extra channel options) for a `learner` setting.

    One "host:port": as given. A comma-separated list (one entry per ingest replica, learner/replicas.py):
    gRPC's own address list, "ipv4:a:p,b:p" (or ipv6:), balanced round-robin over the replicas that are up, so
    a killed replica's robots go on with the others; gRPC lists only take IP addresses, so a host name there
    is an error naming it (one DNS name that resolves to every replica, "dns:///name:port", does the same).
    A target with a scheme is passed through, round-robin too.
    """
    import ipaddress

    rr = [("grpc.lb_policy_name", "round_robin")]
    if learner.startswith(("dns:", "ipv4:", "ipv6:", "unix:")):
        return learner, rr
    addrs = [a.strip() for a in learner.split(",") if a.strip()]
    if len(addrs) == 1:
        return addrs[0], []
    families = set()
    for a in addrs:
        host = a.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise ValueError(f"field 'learner': an address list takes IP addresses (gRPC ipv4:/ipv6: lists), got "
                             f"host {host!r} in {learner!r}; use one DNS name that resolves to every replica "
                             "(dns:///name:port) instead") from None
    if len(families) > 1:
        raise ValueError(f"field 'learner': an address list mixes IPv4 and IPv6 addresses: {learner!r}")
    return f"ipv{families.pop()}:{','.join(addrs)}", rr


def client_metadata(robot_id: str, token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a bridge sends on every call (no authorization entry when `token` is None)."""
    md = [(METADATA_ROBOT_ID, robot_id)]
    if token is not None:
        md.append((METADATA_AUTHORIZATION, BEARER_PREFIX + token))
    return tuple(md)


# ------------------------------------------------------------------------------------ flat arrays <-> Episode


def episode_arrays(ep: Episode) -> dict[str, np.ndarray]:
    """Flat `{wire field name: array}` view of an episode (observation keys get the `observation/` prefix)."""
    out = {name: getattr(ep, name) for name in TOP_LEVEL_FIELDS}
    out.update({OBS_PREFIX + k: v for k, v in ep.observation.items()})
    return out


def episode_metadata(ep: Episode) -> dict[str, Any]:
    """The non-array part of an episode as JSON-able plain data (what the header and the spool carry)."""
    return {
        "episode_id": ep.episode_id,
        "robot_id": ep.robot_id,
        "task": ep.task,
        "language_instruction": ep.language_instruction,
        "source": ep.source,
        "policy_version": int(ep.policy_version),
        "success": bool(ep.success),
        "terminal": bool(ep.terminal),
        "num_subgoals": int(ep.num_subgoals),
    }


def episode_from_parts(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> Episode:
    """Inverse of (`episode_metadata`, `episode_arrays`); raises WireError naming an unknown or missing field."""
    obs, top = {}, {}
    for name, arr in arrays.items():
        if name.startswith(OBS_PREFIX):
            obs[name[len(OBS_PREFIX):]] = arr
        elif name in TOP_LEVEL_FIELDS:
            top[name] = arr
        else:
            raise WireError(name, f"is not a known episode field; known: {list(KNOWN_FIELDS)}")
    for name in TOP_LEVEL_FIELDS:
        if name not in top:
            raise WireError(name, "is missing")
    return assemble_episode(obs, top, meta)


def to_wire_array(field: str, value: Any) -> np.ndarray:
    """`value` as a C-contiguous little-endian array of an allowed dtype; raises WireError naming `field`."""
    if not isinstance(value, np.ndarray):
        raise WireError(field, f"must be a numpy array, got {type(value).__name__}")
    if value.ndim < 1:
        raise WireError(field, "must have a leading time axis, got a scalar")
    le = value.dtype.newbyteorder("<")  # a value-preserving conversion for big-endian input
    if le.str not in WIRE_DTYPES:
        raise WireError(field, f"has dtype {value.dtype} which cannot go on the wire; allowed: {sorted(WIRE_DTYPES)}")
    return np.ascontiguousarray(value, dtype=le)


# ------------------------------------------------------------------------------------ Episode -> messages


def _digest(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256(json.dumps(dict(meta), sort_keys=True).encode("utf-8"))
    for name in sorted(arrays):
        a = to_wire_array(name, arrays[name])
        h.update(f"\0{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def episode_digest(ep: Episode) -> str:
    """sha256 hex of an episode's whole content (metadata and every array, canonical little-endian bytes):
    what makes "the same episode id" mean "the same episode". Survives the RLDS round trip, so a restarted
    learner recomputes the digests of what it stored."""
    return _digest(episode_metadata(ep), episode_arrays(ep))


def episode_header(ep: Episode, arrays: Mapping[str, np.ndarray]) -> fleet_pb2.EpisodeHeader:
    """Header of an upload: metadata plus dtype/row shape/length of each (already wire-converted) array."""
    meta = episode_metadata(ep)
    return fleet_pb2.EpisodeHeader(
        schema_version=WIRE_SCHEMA_VERSION,
        content_sha256=_digest(meta, arrays),
        num_steps=int(ep.action.shape[0]) if getattr(ep.action, "ndim", 0) >= 1 else 0,
        fields=[
            fleet_pb2.FieldSpec(name=n, dtype=a.dtype.str, row_shape=list(a.shape[1:]), length=int(a.shape[0]))
            for n, a in arrays.items()
        ],
        **meta,
    )


def chunk_steps(arrays: Mapping[str, np.ndarray], steps_per_chunk: int, target_chunk_bytes: int) -> int:
    """Steps per chunk: `steps_per_chunk`, reduced so a chunk stays under `target_chunk_bytes` (>= 1)."""
    bytes_per_step = sum(a.itemsize * math.prod(a.shape[1:]) for a in arrays.values())
    return max(1, min(steps_per_chunk, target_chunk_bytes // max(1, bytes_per_step)))


def episode_to_messages(
    ep: Episode,
    *,
    steps_per_chunk: int = DEFAULT_STEPS_PER_CHUNK,
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES,
) -> Iterator[fleet_pb2.UploadEpisodeRequest]:
    """Yields the header, then chunks of rows over the T + 1 steps. Lazy, so a retry can call it again.

    No schema validation here on purpose: the learner is the authority, and tests need to send bad data.
    """
    arrays = {n: to_wire_array(n, a) for n, a in episode_arrays(ep).items()}
    header = episode_header(ep, arrays)
    yield fleet_pb2.UploadEpisodeRequest(header=header)
    total = header.num_steps + 1
    step = chunk_steps(arrays, steps_per_chunk, target_chunk_bytes)
    for seq, start in enumerate(range(0, total, step)):
        end = min(start + step, total)
        tensors = []
        for name, a in arrays.items():
            rows = a[start:min(end, a.shape[0])] if start < a.shape[0] else a[0:0]
            tensors.append(fleet_pb2.Tensor(name=name, dtype=a.dtype.str, shape=list(rows.shape), data=rows.tobytes()))
        yield fleet_pb2.UploadEpisodeRequest(
            chunk=fleet_pb2.StepChunk(seq=seq, start_step=start, num_steps=end - start, tensors=tensors)
        )


# ------------------------------------------------------------------------------------ messages -> Episode


@dataclasses.dataclass(frozen=True)
class _Field:
    dtype: np.dtype
    row_shape: tuple[int, ...]
    length: int


def _check_text(field: str, value: str, max_chars: int) -> None:
    if not value.strip():
        raise WireError(field, "must be a non-empty string")
    if len(value) > max_chars:
        raise WireError(field, f"expected at most {max_chars} characters, got {len(value)}")


def check_header(
    header: fleet_pb2.EpisodeHeader, *, max_steps: int | None, max_episode_bytes: int, embodiment: Embodiment = UR5E
) -> dict[str, _Field]:
    """Checks an EpisodeHeader before any payload is read against the learner's `embodiment` (its field widths);
    returns the declared fields. Raises WireError."""
    layout = embodiment.field_layout()
    if header.schema_version != WIRE_SCHEMA_VERSION:
        raise WireError("schema_version", f"expected {WIRE_SCHEMA_VERSION}, got {header.schema_version}")
    for name, pattern in (("episode_id", EPISODE_ID_PATTERN), ("robot_id", ID_PATTERN)):
        if not pattern.fullmatch(getattr(header, name)):
            raise WireError(name, f"expected {pattern.pattern}, got {getattr(header, name)[:200]!r}")
    _check_text("task", header.task, MAX_TASK_CHARS)
    _check_text("language_instruction", header.language_instruction, MAX_INSTRUCTION_CHARS)
    t = header.num_steps
    if t < 1:
        raise WireError("num_steps", f"expected at least 1 step, got {t}")
    if max_steps is not None and t > max_steps:
        raise WireError("num_steps", f"expected at most {max_steps} steps, got {t}")
    fields: dict[str, _Field] = {}
    total_bytes = 0
    for spec in header.fields:
        name = spec.name
        if name not in KNOWN_FIELDS:
            raise WireError(name, f"is not a known episode field; known: {list(KNOWN_FIELDS)}")
        if name in fields:
            raise WireError(name, "is declared twice in the header")
        if spec.dtype not in WIRE_DTYPES:
            raise WireError(name, f"has dtype {spec.dtype!r} which is not allowed; allowed: {sorted(WIRE_DTYPES)}")
        row_shape = tuple(int(d) for d in spec.row_shape)
        if len(row_shape) > MAX_ROW_RANK or any(d < 0 for d in row_shape):
            raise WireError(name, f"has an invalid row shape {list(row_shape)}")
        want_dtype, want_shape = layout[name]
        if spec.dtype != want_dtype or row_shape != want_shape:
            # Checked here, before any payload: declared sizes are then bounded by the schema and max_steps.
            raise WireError(name, f"declares dtype {spec.dtype!r} rows {list(row_shape)}; the learner's embodiment "
                                  f"{embodiment.describe()} has {want_dtype!r} rows {list(want_shape)}")
        want_len = t if name in TOP_LEVEL_FIELDS and name != "subgoals" else t + 1
        if spec.length != want_len:
            raise WireError(name, f"declares {spec.length} rows; expected {want_len} (T={t})")
        dtype = np.dtype(spec.dtype)
        total_bytes += spec.length * math.prod(row_shape) * dtype.itemsize
        fields[name] = _Field(dtype, row_shape, int(spec.length))
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise WireError(missing[0], "is missing from the header")
    if fields["action"].length != t:
        raise WireError("num_steps", f"is {t} but field 'action' declares {fields['action'].length} rows")
    if total_bytes > max_episode_bytes:
        raise WireError("num_steps", f"episode would take {total_bytes} bytes; at most {max_episode_bytes} accepted")
    return fields


def declared_bytes(fields: Mapping[str, _Field]) -> int:
    """Bytes the payload of a checked header will take once assembled."""
    return sum(f.length * math.prod(f.row_shape) * f.dtype.itemsize for f in fields.values())


class EpisodeAssembler:
    """Reassembles one upload stream into an `Episode`, checking each message against the header.

    Arrays are allocated once from the (bounded) header, and chunk rows are copied into place, so memory is
    known before the payload arrives and no concatenation happens at the end.
    """

    def __init__(self, header: fleet_pb2.EpisodeHeader, *, max_steps: int | None, max_episode_bytes: int,
                 embodiment: Embodiment = UR5E):
        self.fields = check_header(header, max_steps=max_steps, max_episode_bytes=max_episode_bytes,
                                   embodiment=embodiment)
        self.header = header
        self.meta = {
            k: getattr(header, k)
            for k in ("episode_id", "robot_id", "task", "language_instruction", "source", "policy_version",
                      "success", "terminal", "num_subgoals")
        }
        self.nbytes = declared_bytes(self.fields)
        self._arrays = {n: np.empty((f.length, *f.row_shape), f.dtype) for n, f in self.fields.items()}
        self._total_steps = header.num_steps + 1
        self._next_seq = 0
        self._next_step = 0

    def add_chunk(self, chunk: fleet_pb2.StepChunk) -> None:
        """Copies one chunk's rows into place; raises WireError naming the field on any inconsistency."""
        if chunk.seq != self._next_seq:
            raise WireError("seq", f"expected chunk {self._next_seq}, got {chunk.seq} (a chunk is missing or out of order)")
        if chunk.start_step != self._next_step:
            raise WireError("start_step", f"expected {self._next_step} in chunk {chunk.seq}, got {chunk.start_step}")
        start, end = chunk.start_step, chunk.start_step + chunk.num_steps
        if chunk.num_steps < 1 or end > self._total_steps:
            raise WireError(
                "num_steps", f"chunk {chunk.seq} covers steps [{start}, {end}) outside [0, {self._total_steps})"
            )
        seen: set[str] = set()
        for t in chunk.tensors:
            if t.name in seen:
                raise WireError(t.name, f"appears twice in chunk {chunk.seq}")
            self._add_tensor(chunk.seq, start, end, t)
            seen.add(t.name)
        missing = [n for n in self.fields if n not in seen]
        if missing:
            raise WireError(missing[0], f"is missing from chunk {chunk.seq}")
        self._next_seq += 1
        self._next_step = end

    def _add_tensor(self, seq: int, start: int, end: int, t: fleet_pb2.Tensor) -> None:
        spec = self.fields.get(t.name)
        if spec is None:
            raise WireError(t.name, f"in chunk {seq} was not declared in the header")
        if t.dtype != spec.dtype.str:
            raise WireError(t.name, f"in chunk {seq} has dtype {t.dtype!r}; the header declared {spec.dtype.str!r}")
        rows = max(0, min(end, spec.length) - start)
        want = (rows, *spec.row_shape)
        if tuple(t.shape) != want:
            raise WireError(t.name, f"in chunk {seq} expected shape {list(want)}, got {list(t.shape)}")
        nbytes = math.prod(want) * spec.dtype.itemsize
        if len(t.data) != nbytes:
            raise WireError(t.name, f"in chunk {seq} expected {nbytes} bytes, got {len(t.data)}")
        if rows == 0:
            return
        if spec.dtype.kind == "b" and np.frombuffer(t.data, np.uint8).max() > 1:
            raise WireError(t.name, f"in chunk {seq} holds bool bytes other than 0/1")
        self._arrays[t.name][start:start + rows] = np.frombuffer(t.data, spec.dtype).reshape(want)

    def finish(self) -> Episode:
        """The assembled episode after the last chunk; raises WireError if steps are missing."""
        if self._next_step != self._total_steps:
            raise WireError(
                "num_steps",
                f"header declares T={self.header.num_steps} ({self._total_steps} steps) but the stream carried "
                f"{self._next_step} steps in {self._next_seq} chunks (a chunk is missing)",
            )
        ep = episode_from_parts(self.meta, self._arrays)
        declared = self.header.content_sha256
        if declared:
            got = episode_digest(ep)
            if got != declared:
                raise WireError("content_sha256", f"the stream's content hashes to {got}, the header declared "
                                                  f"{declared} (corrupted in transit, or a sender bug)")
        return ep


# ------------------------------------------------------------------------------------ params <-> messages


@dataclasses.dataclass(frozen=True)
class PolicyBlob:
    """Opaque serialized params with their version; `sha256` is the hex digest of `data`."""

    version: int
    data: bytes
    sha256: str
    format: str = PARAMS_FORMAT_MSGPACK

    @classmethod
    def create(cls, version: int, data: bytes, format: str = PARAMS_FORMAT_MSGPACK) -> PolicyBlob:
        return cls(int(version), bytes(data), hashlib.sha256(data).hexdigest(), format)


def params_to_messages(blob: PolicyBlob, chunk_bytes: int = DEFAULT_PARAMS_CHUNK_BYTES) -> Iterator[fleet_pb2.PolicyChunk]:
    """Header (version, size, sha256, format) then the bytes in `chunk_bytes` pieces."""
    yield fleet_pb2.PolicyChunk(
        header=fleet_pb2.PolicyHeader(
            version=blob.version, total_bytes=len(blob.data), sha256=blob.sha256, format=blob.format,
            chunk_bytes=chunk_bytes,
        )
    )
    view = memoryview(blob.data)
    for i in range(0, len(blob.data), chunk_bytes):
        yield fleet_pb2.PolicyChunk(data=bytes(view[i:i + chunk_bytes]))


def messages_to_params(chunks: Iterable[fleet_pb2.PolicyChunk], max_bytes: int) -> PolicyBlob:
    """Reassembles and verifies a params stream; raises ParamsIntegrityError on any mismatch."""
    it = iter(chunks)
    first = next(it, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise ParamsIntegrityError("params stream did not start with a PolicyHeader")
    h = first.header
    if not 0 <= h.total_bytes <= max_bytes:
        raise ParamsIntegrityError(f"params header declares {h.total_bytes} bytes; at most {max_bytes} accepted")
    buf = bytearray()
    for msg in it:
        if msg.WhichOneof("kind") != "data":
            raise ParamsIntegrityError("params stream carried a second header")
        buf += msg.data
        if len(buf) > h.total_bytes:
            raise ParamsIntegrityError(f"params stream carried more than the declared {h.total_bytes} bytes")
    if len(buf) != h.total_bytes:
        raise ParamsIntegrityError(f"params stream truncated: {len(buf)} of {h.total_bytes} bytes (version {h.version})")
    digest = hashlib.sha256(buf).hexdigest()
    if digest != h.sha256:
        raise ParamsIntegrityError(
            f"params checksum mismatch for version {h.version}: header sha256 {h.sha256}, received {digest}"
        )
    return PolicyBlob(int(h.version), bytes(buf), digest, h.format)


def fleet_status_to_dict(status: fleet_pb2.FleetStatus) -> dict[str, Any]:
    """A FleetStatus message as plain JSON-able data (NaN where a window is empty)."""
    return {
        "policy_version": status.policy_version,
        "episodes_accepted": status.episodes_accepted,
        "window": status.window,
        "robots": {
            r.robot_id: {
                "state": r.state, "episodes_done": r.episodes_done, "policy_version": r.policy_version,
                "spool_pending": r.spool_pending, "episodes_accepted": r.episodes_accepted,
                "seconds_since_heartbeat": r.seconds_since_heartbeat, "window_episodes": r.window_episodes,
                "success_rate": r.success_rate, "intervention_rate": r.intervention_rate,
            }
            for r in status.robots
        },
        "tasks": {
            t.task: {
                "episodes_accepted": t.episodes_accepted, "window_episodes": t.window_episodes,
                "success_rate": t.success_rate, "intervention_rate": t.intervention_rate,
                "mean_cycle_steps": t.mean_cycle_steps,
            }
            for t in status.tasks
        },
    }
