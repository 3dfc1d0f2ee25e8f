"""The bridge's client of the learner: upload episodes, drain the spool, fetch/watch params, heartbeat.

Why it retries the way it does: a robot outlives learner restarts and network blips, so transient failures
(UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED, RESOURCE_EXHAUSTED, CANCELLED) are retried with exponential backoff and
jitter (so a fleet does not reconnect in lock-step). Uploads are safe to retry because episode ids are
idempotency keys on the learner. Permanent failures are not retried; they raise a typed error:
`EpisodeRejected` (INVALID_ARGUMENT, FAILED_PRECONDITION or ALREADY_EXISTS, with the field the learner
named), `AuthenticationFailed`,
`PolicyNotPublished`, `ParamsIntegrityError` (checksum), or `LearnerUnavailable` once retries run out.
Every call carries a deadline; the channel has explicit message limits and keepalive.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet_api.protos import fleet_pb2, fleet_pb2_grpc
from fleet_api.schema import Episode
from fleet_api.wire import (
    DEFAULT_STEPS_PER_CHUNK,
    DEFAULT_TARGET_CHUNK_BYTES,
    METADATA_ERROR_FIELD,
    ParamsIntegrityError,
    PolicyBlob,
    channel_target,
    client_metadata,
    episode_arrays,
    episode_to_messages,
    field_of,
    messages_to_params,
    to_wire_array,
)
from robot_bridge.spool import Spool

log = logging.getLogger(__name__)
T = TypeVar("T")

# CANCELLED is retried too: this client never cancels its own calls, and a learner that stops with
# calls in flight cancels them (the robot must simply try again against the restarted learner).
# Every call is idempotent (uploads by episode id), so a retry is always safe.
RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
     grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
)
AUTH_CODES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
# Refusals of this content that no retry can change (the learner decides by cause; see EpisodeRejected).
PERMANENT_CODES = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS}
)

__all__ = [
    "AuthenticationFailed", "ClientConfig", "ClientTLS", "DrainReport", "EpisodeRejected", "FleetError",
    "LearnerClient", "LearnerUnavailable", "ParamsIntegrityError", "PolicyNotPublished", "UploadResult",
]


# ------------------------------------------------------------------------------------------- errors


class FleetError(Exception):
    """A learner call failed; `code` is the gRPC status code (None for local errors)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class EpisodeRejected(FleetError):
    """The learner refused an episode for good: INVALID_ARGUMENT (bad content), FAILED_PRECONDITION (its store
    can never take it), ALREADY_EXISTS (the id was acknowledged with other content). `field` names what was
    wrong. Never retried: the daemon moves it to the spool's rejected/ folder and sends the rest."""

    def __init__(self, message: str, field: str, episode_id: str,
                 code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT):
        super().__init__(message, code)
        self.field, self.episode_id = field, episode_id


class AuthenticationFailed(FleetError):
    """Missing/wrong token or a robot id that does not match the token. Never retried."""


class PolicyNotPublished(FleetError):
    """The learner has no params yet (NOT_FOUND)."""


class LearnerUnavailable(FleetError):
    """Transient failures persisted through every retry; the caller should try again later."""


# ------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ClientConfig:
    """Deadlines, retry policy and channel settings of a LearnerClient (all tunable from the daemon config)."""

    upload_timeout_s: float = 60.0  # per attempt, for one whole episode
    call_timeout_s: float = 10.0  # version poll, heartbeat, health
    policy_timeout_s: float = 120.0  # one params download
    watch_timeout_s: float = 330.0  # longer than the learner's own WatchPolicy limit (300 s)
    max_attempts: int = 8
    heartbeat_attempts: int = 1  # heartbeats are periodic anyway; a missed one is not worth a backoff
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    backoff_multiplier: float = 2.0
    backoff_jitter: float = 0.5  # each delay is scaled by a uniform factor in [1 - jitter, 1]
    steps_per_chunk: int = DEFAULT_STEPS_PER_CHUNK
    target_chunk_bytes: int = DEFAULT_TARGET_CHUNK_BYTES
    max_message_bytes: int = 16 << 20  # matches the learner's limit
    max_params_bytes: int = 4 << 30  # refuse a params header claiming more than this
    keepalive_time_ms: int = 30_000  # >= the learner's minimum accepted ping interval (10 s)
    keepalive_timeout_ms: int = 10_000
    # Reconnect quickly after a learner restart (gRPC's default backoff grows to 120 s).
    initial_reconnect_backoff_ms: int = 200
    max_reconnect_backoff_ms: int = 5_000

    def channel_options(self, target_name_override: str | None = None) -> list[tuple[str, Any]]:
        opts: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),  # we retry ourselves, with typed errors and jitter
            ("grpc.initial_reconnect_backoff_ms", self.initial_reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self.initial_reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
        ]
        if target_name_override:
            opts.append(("grpc.ssl_target_name_override", target_name_override))
        return opts


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """PEM CA that signed the learner's cert; with cert_chain + private_key the robot also proves itself (mTLS)."""

    root_ca: bytes
    cert_chain: bytes | None = None
    private_key: bytes | None = None
    target_name_override: str | None = None  # when the learner's cert names a host other than the target

    @classmethod
    def from_files(
        cls, root_ca: str, cert_chain: str | None = None, private_key: str | None = None,
        target_name_override: str | None = None,
    ) -> ClientTLS:
        def read(p: str | None) -> bytes | None:
            if p is None:
                return None
            with open(p, "rb") as fh:
                return fh.read()

        return cls(read(root_ca), read(cert_chain), read(private_key), target_name_override)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class UploadResult:
    episode_id: str
    duplicate: bool
    attempts: int


@dataclasses.dataclass
class DrainReport:
    uploaded: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (id, field, message)
    skipped: int = 0  # spool files that vanished or were quarantined as unreadable while draining


# ------------------------------------------------------------------------------------------- client


def backoff_delays(config: ClientConfig, rng: random.Random) -> Iterator[float]:
    """Exponential backoff with multiplicative jitter: initial * multiplier**k, capped, times U[1-j, 1]."""
    delay = config.backoff_initial_s
    while True:
        yield delay * (1.0 - config.backoff_jitter * rng.random())
        delay = min(config.backoff_max_s, delay * config.backoff_multiplier)


class LearnerClient:
    """One robot's connection to the learner. Thread-safe (gRPC channels are); close() when done."""

    def __init__(
        self,
        target: str,
        robot_id: str,
        token: str | None = None,
        *,
        tls: ClientTLS | None = None,
        config: ClientConfig = ClientConfig(),
        stop: threading.Event | None = None,
        rng: random.Random | None = None,
    ):
        self.target, self.robot_id, self.config = target, robot_id, config
        self._metadata = client_metadata(robot_id, token)
        self._stop = stop or threading.Event()
        self._rng = rng or random.Random()
        target, extra = channel_target(target)  # one learner, or an ingest replicas' address list
        options = config.channel_options(tls.target_name_override if tls else None) + extra
        if tls is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            creds = grpc.ssl_channel_credentials(tls.root_ca, tls.private_key, tls.cert_chain)
            self._channel = grpc.secure_channel(target, creds, options=options)
        self._stub = fleet_pb2_grpc.FleetStub(self._channel)
        self._closed = False
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def __enter__(self) -> LearnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ retry core

    def _typed_error(self, err: grpc.RpcError, what: str, attempts: int, episode_id: str = "") -> FleetError:
        code, details = err.code(), err.details() or ""
        msg = f"{what} failed after {attempts} attempt(s): {code.name}: {details}"
        if code in PERMANENT_CODES:
            trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
            field = trailing.get(METADATA_ERROR_FIELD) or field_of(details) or ""
            return EpisodeRejected(msg, field=field, episode_id=episode_id, code=code)
        if code in AUTH_CODES:
            return AuthenticationFailed(msg, code)
        if code == grpc.StatusCode.NOT_FOUND:
            return PolicyNotPublished(msg, code)
        if code in RETRYABLE_CODES:
            return LearnerUnavailable(msg, code)
        return FleetError(msg, code)

    def _with_retry(self, what: str, call: Callable[[], T], attempts: int | None = None,
                    episode_id: str = "") -> tuple[T, int]:
        """Runs `call` until it succeeds, fails permanently, or `attempts` transient failures happened."""
        max_attempts = attempts or self.config.max_attempts
        delays = backoff_delays(self.config, self._rng)
        for attempt in range(1, max_attempts + 1):
            try:
                return call(), attempt
            except grpc.RpcError as e:
                if e.code() not in RETRYABLE_CODES or attempt == max_attempts or self._closed:
                    raise self._typed_error(e, what, attempt, episode_id) from e
                delay = next(delays)
                log.info("%s: %s (attempt %d/%d); retrying in %.2f s", what, e.code().name, attempt, max_attempts, delay)
                if self._stop.wait(delay):
                    raise LearnerUnavailable(f"{what}: stopped while waiting to retry", e.code()) from e
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ episodes

    def upload_messages(
        self, make_messages: Callable[[], Iterable[fleet_pb2.UploadEpisodeRequest]], episode_id: str
    ) -> UploadResult:
        """Uploads a prepared stream (re-created for every attempt); for tools and tests that craft streams."""

        def call() -> fleet_pb2.UploadEpisodeReply:
            return self._stub.UploadEpisode(
                iter(make_messages()), timeout=self.config.upload_timeout_s, metadata=self._metadata
            )

        reply, attempts = self._with_retry(f"upload of episode {episode_id}", call, episode_id=episode_id)
        return UploadResult(reply.episode_id, reply.duplicate, attempts)

    def upload_episode(self, ep: Episode) -> UploadResult:
        """Uploads one episode, retrying transient failures; returns once the learner acked it (durably stored).

        Raises EpisodeRejected (naming the field), AuthenticationFailed, LearnerUnavailable, or WireError if
        an array cannot be encoded at all (object dtype etc.; checked here so it never happens mid-stream).
        """
        for name, arr in episode_arrays(ep).items():
            to_wire_array(name, arr)
        cfg = self.config

        def messages() -> Iterator[fleet_pb2.UploadEpisodeRequest]:
            return episode_to_messages(ep, steps_per_chunk=cfg.steps_per_chunk, target_chunk_bytes=cfg.target_chunk_bytes)

        return self.upload_messages(messages, ep.episode_id)

    def drain_spool(self, spool: Spool, max_episodes: int | None = None) -> DrainReport:
        """Uploads pending spool episodes oldest first, deleting each only after its ack.

        Exactly once: an episode leaves the spool only when acked (a crash between ack and delete re-sends
        it, and the learner answers duplicate). A rejected episode moves to the spool's rejected/ folder
        and draining goes on; LearnerUnavailable / AuthenticationFailed stop the drain and propagate, with
        the remaining episodes still spooled.
        """
        report = DrainReport()
        for entry in spool.pending():
            if max_episodes is not None and report.uploaded + report.duplicates >= max_episodes:
                break
            if self._stop.is_set():
                break
            ep = spool.load(entry)
            if ep is None:
                report.skipped += 1
                continue
            try:
                result = self.upload_episode(ep)
            except EpisodeRejected as e:
                spool.reject(entry, str(e))
                report.rejected.append((ep.episode_id, e.field, str(e)))
                continue
            spool.ack(entry)
            if result.duplicate:
                report.duplicates += 1
            else:
                report.uploaded += 1
        return report

    # ------------------------------------------------------------------ params

    def fetch_policy_blob(self) -> PolicyBlob:
        """Downloads the newest params and verifies size and sha256; raises ParamsIntegrityError on mismatch."""

        def call() -> PolicyBlob:
            stream = self._stub.GetPolicy(
                fleet_pb2.GetPolicyRequest(), timeout=self.config.policy_timeout_s, metadata=self._metadata
            )
            return messages_to_params(stream, self.config.max_params_bytes)

        blob, _ = self._with_retry("policy download", call)
        return blob

    def fetch_policy(self) -> tuple[int, bytes]:
        """(version, params bytes) of the newest policy, checksum-verified."""
        blob = self.fetch_policy_blob()
        return blob.version, blob.data

    def policy_version(self) -> int | None:
        """The newest published version, or None if the learner has none yet (a cheap poll)."""

        def call() -> fleet_pb2.PolicyVersion:
            return self._stub.GetPolicyVersion(
                fleet_pb2.GetPolicyVersionRequest(), timeout=self.config.call_timeout_s, metadata=self._metadata
            )

        reply, _ = self._with_retry("policy version poll", call)
        return reply.version if reply.available else None

    def watch_policy(self, known_version: int = -1, timeout_s: float | None = None) -> Iterator[int]:
        """Yields each new policy version as the learner publishes it, until the stream's deadline.

        Ends quietly when the learner closes the stream or the deadline passes; re-open it in a loop.
        Transient errors raise LearnerUnavailable (no retry inside a generator: the caller owns the loop).
        """
        stream = self._stub.WatchPolicy(
            fleet_pb2.WatchPolicyRequest(known_version=known_version),
            timeout=timeout_s or self.config.watch_timeout_s,
            metadata=self._metadata,
        )
        try:
            for msg in stream:
                if msg.available:
                    yield msg.version
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
                return
            raise self._typed_error(e, "policy watch", 1) from e
        finally:
            stream.cancel()

    # ------------------------------------------------------------------ fleet

    def heartbeat(self, state: str, episodes_done: int = 0, policy_version: int = -1,
                  spool_pending: int = 0) -> fleet_pb2.FleetStatus:
        """Reports this robot's state; returns the learner's FleetStatus."""
        req = fleet_pb2.HeartbeatRequest(
            robot_id=self.robot_id, state=state, episodes_done=episodes_done, policy_version=policy_version,
            spool_pending=spool_pending,
        )

        def call() -> fleet_pb2.FleetStatus:
            return self._stub.Heartbeat(req, timeout=self.config.call_timeout_s, metadata=self._metadata)

        reply, _ = self._with_retry("heartbeat", call, attempts=self.config.heartbeat_attempts)
        return reply

    def fleet_status(self, window: int = 0) -> fleet_pb2.FleetStatus:
        """The learner's read-only view of the fleet over the last `window` episodes (0: its default)."""

        def call() -> fleet_pb2.FleetStatus:
            return self._stub.GetFleetStatus(fleet_pb2.FleetStatusRequest(window=window),
                                             timeout=self.config.call_timeout_s, metadata=self._metadata)

        reply, _ = self._with_retry("fleet status", call, attempts=self.config.heartbeat_attempts)
        return reply

    def health(self, service: str = "") -> str:
        """The learner's standard health status name ("SERVING", "NOT_SERVING", ...)."""

        def call() -> health_pb2.HealthCheckResponse:
            return self._health.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.config.call_timeout_s)

        reply, _ = self._with_retry("health check", call, attempts=1)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
