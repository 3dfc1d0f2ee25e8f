"""The learner's gRPC service: episode ingest from the fleet, policy params out, fleet status, health.

Why it is built around callbacks: durability (`persist`, e.g. the RLDS writer) and training (`on_accept`,
e.g. the online replay buffer) belong to the learner loop; this module owns only the contract — checking
every upload at the edge, exactly-once bookkeeping and the acknowledgement order:

    validate the whole episode -> persist(episode) -> mark acknowledged -> on_accept(episode) -> reply

An episode is acknowledged only once it is durably persisted, so a robot deletes its spooled copy only
when the learner can replay it after a crash. Episode ids are idempotency keys: a re-upload of an
acknowledged id (the ack was lost, the robot retried) is acknowledged with `duplicate=True` and not stored
again; seed `seen_episode_ids` with the ids already on disk so this also holds across learner restarts
(`FleetStore.rebuild` hands back an `AckedIndex`: the newest ids in RAM, all of them in a file beside the store).
A persist failure answers UNAVAILABLE (the robot retries later) and leaves no trace in the dedupe set.

Threading: gRPC runs handlers on a thread pool. `persist` and `on_accept` are serialized behind one lock by
default (`serialize_callbacks=True`) because writers are rarely thread-safe; pass False if yours is.

Layering note: the wire contract (`fleet_api.protos`, `fleet_api.wire`, `fleet_api.schema`) is the one
package both sides of the API share; the health service is grpcio-health-checking's.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleet_api.embodiment import UR5E, Embodiment
from fleet_api.protos import FLEET_SERVICE_NAME, fleet_pb2, fleet_pb2_grpc
from fleet_api.schema import DEFAULT_MAX_ABS_REWARD, Episode, SchemaError, validate_episode
from fleet_api.wire import (
    DEFAULT_PARAMS_CHUNK_BYTES,
    ID_PATTERN,
    METADATA_ERROR_FIELD,
    METADATA_ROBOT_ID,
    PARAMS_FORMAT_MSGPACK,
    EpisodeAssembler,
    PolicyBlob,
    WireError,
    check_header,
    declared_bytes,
    episode_digest,
    field_of,
    fleet_status_to_dict,
    params_to_messages,
)
from lwd_jax.learner.acked import AckedIndex
from lwd_jax.learner.auth import AuthError, TokenAuth

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 16 << 20  # 16x the largest chunk the bridge sends (1 MiB); bounds a bad sender
DEFAULT_MAX_EPISODE_BYTES = 512 << 20  # ~40k steps with 64x64 images; larger means a runaway recorder
# Payload bytes all open uploads may hold at once, and open uploads per robot: beyond either an upload is
# answered RESOURCE_EXHAUSTED (the robot backs off and retries), so no sender can make the learner buffer
# more than this however many streams it opens (measured before: 4 streams took RSS 918 -> 2922 MB).
DEFAULT_MAX_INFLIGHT_BYTES = 1 << 30
DEFAULT_MAX_STREAMS_PER_ROBOT = 2
DEFAULT_MAX_WORKERS = 32  # handler threads: uploads + open WatchPolicy streams of a ~16-robot fleet
DEFAULT_WATCH_POLL_S = 0.25  # how quickly WatchPolicy notices a new version
DEFAULT_WATCH_MAX_S = 300.0  # a WatchPolicy stream ends after this, so it never pins a thread forever
DEFAULT_CLOSE_TIMEOUT_S = 30.0  # how long stop() waits for persist calls already running
DEFAULT_STOP_GRACE_S = 2.0
DEFAULT_STATUS_WINDOW = 20  # trailing episodes per robot / per task in GetFleetStatus
MAX_STATUS_WINDOW = 1_000  # outcomes kept per robot and per task (bounded memory whatever the fleet's age)
# Server keepalive: ping idle clients to drop dead connections; accept client pings every >= 10 s
# (the bridge pings every 30 s, see robot_bridge/client.py).
SERVER_KEEPALIVE_TIME_MS = 60_000
SERVER_KEEPALIVE_TIMEOUT_MS = 20_000
SERVER_MIN_CLIENT_PING_INTERVAL_MS = 10_000

ParamsProvider = Callable[[], "tuple[int, bytes] | PolicyBlob | None"]


class PolicyStore:
    """A thread-safe holder of the newest params blob; an instance is a valid `params_provider`.

    The learner loop calls `publish(version, data)` every K updates; the servicer streams whatever is
    newest. The sha256 is computed once per publish, not once per download.
    """

    def __init__(self, format: str = PARAMS_FORMAT_MSGPACK):
        self._format = format
        self._blob: PolicyBlob | None = None
        self._lock = threading.Lock()

    def publish(self, version: int, data: bytes) -> PolicyBlob:
        blob = PolicyBlob.create(version, data, self._format)
        with self._lock:
            if self._blob is not None and blob.version <= self._blob.version:
                raise ValueError(f"field 'version' must increase: published {self._blob.version}, got {blob.version}")
            self._blob = blob
        return blob

    def __call__(self) -> PolicyBlob | None:
        with self._lock:
            return self._blob


# ------------------------------------------------------------------------------------------- fleet


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """What status needs of one accepted episode (the episode itself is the learner's, not ours to keep)."""

    success: bool
    steps: int
    human_steps: int


def _recent() -> collections.deque:
    return collections.deque(maxlen=MAX_STATUS_WINDOW)


@dataclasses.dataclass
class _RobotRecord:
    state: str = ""
    episodes_done: int = 0
    policy_version: int = -1
    spool_pending: int = 0
    last_seen: float = 0.0
    episodes_accepted: int = 0
    recent: collections.deque = dataclasses.field(default_factory=_recent)


@dataclasses.dataclass
class _TaskRecord:
    episodes_accepted: int = 0
    recent: collections.deque = dataclasses.field(default_factory=_recent)


def window_stats(outcomes: list[_Outcome]) -> tuple[float, float, float]:
    """(success rate, share of human-driven steps, mean steps of the successes) of a window; NaN when empty."""
    if not outcomes:
        return math.nan, math.nan, math.nan
    steps = sum(o.steps for o in outcomes)
    wins = [o.steps for o in outcomes if o.success]
    return (len(wins) / len(outcomes), sum(o.human_steps for o in outcomes) / max(steps, 1),
            sum(wins) / len(wins) if wins else math.nan)


class StoredElsewhere(Exception):
    """A `persist` that finds the episode id already stored (e.g. by another ingest replica: learner/replicas.py)
    raises this with the stored copy's content digest; the upload is then answered `duplicate` when the digests
    agree and ALREADY_EXISTS naming both when they do not. Nothing is stored twice either way."""

    def __init__(self, episode_id: str, digest: str, where: str = ""):
        super().__init__(f"episode {episode_id} is already stored{' ' + where if where else ''} (sha256 {digest})")
        self.episode_id, self.digest = episode_id, digest


class _Reject(Exception):
    """Internal: abort the current call with `code`, naming `field`."""

    def __init__(self, code: grpc.StatusCode, field: str, message: str):
        super().__init__(message)
        self.code, self.field = code, field


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    """Implements lwd.fleet.v1.Fleet over learner-supplied callbacks (see the module docstring)."""

    def __init__(
        self,
        *,
        persist: Callable[[Episode], None],
        on_accept: Callable[[Episode], None] | None = None,
        known_tasks: Mapping[str, Any] | Iterable[str] | None = None,
        max_steps: int | None = None,
        params_provider: ParamsProvider | None = None,
        auth: TokenAuth | None = None,
        seen_episode_ids: AckedIndex | Iterable[str] | Mapping[str, str | None] | Callable[[], Any] = (),
        max_episode_bytes: int = DEFAULT_MAX_EPISODE_BYTES,
        max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES,
        max_streams_per_robot: int = DEFAULT_MAX_STREAMS_PER_ROBOT,
        max_abs_reward: float = DEFAULT_MAX_ABS_REWARD,
        embodiment: Embodiment = UR5E,
        params_format: str = PARAMS_FORMAT_MSGPACK,
        params_chunk_bytes: int = DEFAULT_PARAMS_CHUNK_BYTES,
        watch_poll_s: float = DEFAULT_WATCH_POLL_S,
        watch_max_s: float = DEFAULT_WATCH_MAX_S,
        serialize_callbacks: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._persist = persist
        self._on_accept = on_accept
        if known_tasks is not None and not isinstance(known_tasks, Mapping):
            known_tasks = dict.fromkeys(known_tasks)
        self._known_tasks = known_tasks
        self._max_steps = max_steps
        self._embodiment = embodiment  # every upload's field widths and action bounds are checked against it
        self._params_provider = params_provider
        self._auth = auth
        self._max_episode_bytes = max_episode_bytes
        self._params_format = params_format
        self._params_chunk_bytes = params_chunk_bytes
        self._watch_poll_s = watch_poll_s
        self._watch_max_s = watch_max_s
        self._clock = clock
        self._callback_lock: contextlib.AbstractContextManager = (
            threading.Lock() if serialize_callbacks else contextlib.nullcontext()
        )
        self._lock = threading.Condition()
        seen = seen_episode_ids() if callable(seen_episode_ids) else seen_episode_ids
        # episode id -> content digest (None: stored before digests, or handed in as bare ids). An AckedIndex
        # from the store keeps RAM bounded; anything else is copied into an all-in-RAM one (tests, small runs).
        if isinstance(seen, AckedIndex):
            self._acked = seen
        else:
            self._acked = AckedIndex(window=None)
            self._acked.update(seen.items() if isinstance(seen, Mapping) else ((k, None) for k in seen))
        self._in_flight: set[str] = set()
        self._max_inflight_bytes = max_inflight_bytes
        self._max_streams_per_robot = max_streams_per_robot
        self._max_abs_reward = max_abs_reward
        self._inflight_bytes = 0
        self._streams: collections.Counter[str] = collections.Counter()
        self._persisting = 0
        self._closing = threading.Event()
        self._episodes_accepted = 0
        self._robots: dict[str, _RobotRecord] = {}
        self._tasks: dict[str, _TaskRecord] = {}
        self._blob_cache: PolicyBlob | None = None

    # ---------------------------------------------------------------- lifecycle and introspection

    def close(self, timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> bool:
        """Refuses new persists and waits for running ones, so a stop never cuts a write in half."""
        self._closing.set()
        with self._lock:
            return self._lock.wait_for(lambda: self._persisting == 0, timeout)

    def acked_ids(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._acked)  # (reads the whole index: tests and tools)

    def _reserve(self, robot: str, nbytes: int) -> None:
        """Takes `nbytes` of the in-flight budget and one of `robot`'s stream slots, or raises RESOURCE_EXHAUSTED."""
        with self._lock:
            if self._streams[robot] >= self._max_streams_per_robot:
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "",
                              f"robot {robot!r} already has {self._streams[robot]} uploads open "
                              f"(max_streams_per_robot={self._max_streams_per_robot}); retry later")
            if self._inflight_bytes + nbytes > self._max_inflight_bytes:
                raise _Reject(grpc.StatusCode.RESOURCE_EXHAUSTED, "",
                              f"the learner holds {self._inflight_bytes} bytes of open uploads; this one declares "
                              f"{nbytes} (max_inflight_bytes={self._max_inflight_bytes}); retry later")
            self._streams[robot] += 1
            self._inflight_bytes += nbytes

    def _unreserve(self, robot: str, nbytes: int) -> None:
        with self._lock:
            self._streams[robot] -= 1
            if self._streams[robot] <= 0:
                del self._streams[robot]
            self._inflight_bytes -= nbytes

    def _conflict(self, episode_id: str, stored: str | None, got: str) -> _Reject:
        return _Reject(grpc.StatusCode.ALREADY_EXISTS, "episode_id",
                       f"field 'episode_id' {episode_id} was acknowledged with content sha256 {stored}; this upload's "
                       f"content is {got} (one id, two episodes: the new one is not stored)")

    def fleet_status(self, window: int = DEFAULT_STATUS_WINDOW) -> dict[str, Any]:
        """The learner's view of the fleet, as plain data for logs."""
        return fleet_status_to_dict(self._fleet_status_proto(window, with_tasks=True))

    # ---------------------------------------------------------------- helpers

    def _authenticate(self, context: grpc.ServicerContext) -> str | None:
        """The verified robot id (None when auth is off); aborts UNAUTHENTICATED otherwise."""
        if self._auth is None:
            return None
        try:
            robot = self._auth.authenticate(context.invocation_metadata())
            # Under mTLS the certificate names the robot too: a leaked token alone, or another robot's
            # certificate, is not enough (the common name must be the robot id).
            names = {n.decode() for n in (context.auth_context() or {}).get("x509_common_name", [])}
            if names and robot not in names:
                raise AuthError(f"robot id {robot!r} is not the client certificate's common name {sorted(names)}")
            return robot
        except AuthError as e:
            md = dict(context.invocation_metadata() or ())
            log.warning("rejected call from %s (robot-id %r): %s", context.peer(), md.get(METADATA_ROBOT_ID), e)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))  # raises
            return None

    @staticmethod
    def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, field: str, message: str) -> None:
        """Ends the call with `code`; the field also goes to trailing metadata for typed client errors."""
        if field:
            context.set_trailing_metadata(((METADATA_ERROR_FIELD, field),))
        context.abort(code, message)

    def _check_identity(self, robot: str | None, claimed: str) -> None:
        if robot is not None and claimed != robot:
            raise _Reject(
                grpc.StatusCode.PERMISSION_DENIED, "robot_id",
                f"field 'robot_id' is {claimed!r} but the caller authenticated as {robot!r}",
            )

    def _snapshot(self) -> PolicyBlob | None:
        """The newest params as a PolicyBlob; the checksum is computed once per version."""
        got = self._params_provider() if self._params_provider is not None else None
        if got is None or isinstance(got, PolicyBlob):
            return got
        version, data = got
        cached = self._blob_cache
        if cached is None or cached.version != version:
            cached = self._blob_cache = PolicyBlob.create(version, data, self._params_format)
        return cached

    def _claim(self, episode_id: str) -> str:
        with self._lock:
            if episode_id in self._acked:
                return "acked"
            if episode_id in self._in_flight:
                return "busy"
            self._in_flight.add(episode_id)
            return "claimed"

    def _release(self, episode_id: str) -> None:
        with self._lock:
            self._in_flight.discard(episode_id)

    def _persist_then_accept(self, ep: Episode, digest: str) -> bool:
        """persist -> mark acknowledged (with the content digest) -> on_accept; returns whether the episode was
        already stored (StoredElsewhere from persist: a duplicate, nothing accepted). Raises _Reject on failure:
        UNAVAILABLE when a retry may succeed, FAILED_PRECONDITION when the store can never take the episode."""
        with self._lock:
            if self._closing.is_set():
                raise _Reject(grpc.StatusCode.UNAVAILABLE, "", "learner is shutting down; retry later")
            self._persisting += 1
        try:
            with self._callback_lock:
                try:
                    self._persist(ep)
                except StoredElsewhere as e:
                    if e.digest != digest:
                        raise self._conflict(ep.episode_id, e.digest, digest) from e
                    with self._lock:
                        self._acked.add(ep.episode_id, digest)
                    return True
                except SchemaError as e:
                    # Permanent: this store can never take this episode (e.g. images into a store made without
                    # them). UNAVAILABLE here made robots retry it forever, blocking their spool behind it.
                    log.error("episode %s from %s refused by the store: %s", ep.episode_id, ep.robot_id, e)
                    raise _Reject(grpc.StatusCode.FAILED_PRECONDITION, getattr(e, "field", None) or field_of(str(e)) or "",
                                  f"the learner's store cannot take this episode: {e}") from e
                except Exception as e:
                    log.exception("persist failed for episode %s from %s", ep.episode_id, ep.robot_id)
                    raise _Reject(grpc.StatusCode.UNAVAILABLE, "", f"learner could not persist episode: {e}") from e
                outcome = _Outcome(bool(ep.success), int(ep.num_steps), int(ep.intervention.sum()))
                with self._lock:
                    self._acked.add(ep.episode_id, digest)
                    self._episodes_accepted += 1
                    robot = self._robots.setdefault(ep.robot_id, _RobotRecord())
                    robot.episodes_accepted += 1
                    robot.recent.append(outcome)
                    task = self._tasks.setdefault(ep.task, _TaskRecord())
                    task.episodes_accepted += 1
                    task.recent.append(outcome)
                if self._on_accept is not None:
                    try:
                        self._on_accept(ep)
                    except Exception as e:
                        # Already durable: a retry is answered as a duplicate and a restarted learner
                        # replays it from disk, so report the error without un-acknowledging.
                        log.exception("on_accept failed for persisted episode %s", ep.episode_id)
                        raise _Reject(grpc.StatusCode.INTERNAL, "", f"episode persisted but not buffered: {e}") from e
                return False
        finally:
            with self._lock:
                self._persisting -= 1
                self._lock.notify_all()

    # ---------------------------------------------------------------- RPCs

    def UploadEpisode(self, request_iterator, context):  # noqa: N802
        robot = self._authenticate(context)
        episode_id = ""
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "header":
                raise WireError("header", "must be the first message of an upload")
            header = first.header
            episode_id = header.episode_id
            self._check_identity(robot, header.robot_id)
            if self._known_tasks is not None and header.task not in self._known_tasks:
                raise WireError("task", f"names an unknown task {header.task!r}; known: {sorted(self._known_tasks)}")
            fields = check_header(header, max_steps=self._max_steps, max_episode_bytes=self._max_episode_bytes,
                                  embodiment=self._embodiment)
            claim = self._claim(episode_id)
            if claim == "acked":
                with self._lock:
                    stored = self._acked.lookup(episode_id)[1]
                declared = header.content_sha256
                if declared and stored and declared != stored:
                    raise self._conflict(episode_id, stored, declared)
                if declared or not stored:  # the same content (or nothing stored to compare with)
                    return self._reply(episode_id, duplicate=True)
                # no declared hash (an older client): read the payload to compare, never store it again
            elif claim == "busy":
                raise _Reject(grpc.StatusCode.ABORTED, "episode_id",
                              f"field 'episode_id' {episode_id} is being uploaded on another stream; retry")
            nbytes = declared_bytes(fields)
            who = robot or header.robot_id
            try:
                self._reserve(who, nbytes)
            except _Reject:
                if claim == "claimed":
                    self._release(episode_id)
                raise
            try:
                assembler = EpisodeAssembler(header, max_steps=self._max_steps, max_episode_bytes=self._max_episode_bytes,
                                             embodiment=self._embodiment)
                for msg in request_iterator:
                    if msg.WhichOneof("kind") != "chunk":
                        raise WireError("header", "sent twice in one upload")
                    assembler.add_chunk(msg.chunk)
                ep = validate_episode(
                    assembler.finish(), known_tasks=self._known_tasks, max_steps=self._max_steps,
                    max_abs_reward=self._max_abs_reward, embodiment=self._embodiment,
                    where=f"upload from robot {header.robot_id!r}, episode",
                )
                digest = episode_digest(ep)
                if claim == "acked":
                    if digest != stored:
                        raise self._conflict(episode_id, stored, digest)
                    return self._reply(episode_id, duplicate=True)
                duplicate = self._persist_then_accept(ep, digest)
            finally:
                self._unreserve(who, nbytes)
                if claim == "claimed":
                    self._release(episode_id)
            return self._reply(episode_id, duplicate=duplicate)
        except SchemaError as e:
            field = getattr(e, "field", None) or field_of(str(e)) or ""
            log.warning("rejected episode %s from robot %s: %s", episode_id or "?", robot, e)
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, field, str(e))
        except _Reject as e:
            self._abort(context, e.code, e.field, str(e))
        except grpc.RpcError:
            # The client went away mid-stream (cancelled, deadline, learner stopping): nothing was stored.
            log.info("upload of episode %s from robot %s ended by the client mid-stream", episode_id or "?", robot)
            return None

    def _reply(self, episode_id: str, duplicate: bool) -> fleet_pb2.UploadEpisodeReply:
        with self._lock:
            total = self._episodes_accepted
        return fleet_pb2.UploadEpisodeReply(episode_id=episode_id, duplicate=duplicate, episodes_accepted=total)

    def GetPolicy(self, request, context):  # noqa: N802
        self._authenticate(context)
        blob = self._snapshot()
        if blob is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no policy has been published yet")
        yield from params_to_messages(blob, self._params_chunk_bytes)

    def _version_proto(self) -> fleet_pb2.PolicyVersion:
        blob = self._snapshot()
        if blob is None:
            return fleet_pb2.PolicyVersion(available=False, version=-1)
        return fleet_pb2.PolicyVersion(available=True, version=blob.version, sha256=blob.sha256)

    def GetPolicyVersion(self, request, context):  # noqa: N802
        self._authenticate(context)
        return self._version_proto()

    def WatchPolicy(self, request, context) -> Iterator[fleet_pb2.PolicyVersion]:  # noqa: N802
        self._authenticate(context)
        known = request.known_version
        end = self._clock() + self._watch_max_s
        while context.is_active() and not self._closing.is_set() and self._clock() < end:
            current = self._version_proto()
            if current.available and current.version != known:
                known = current.version
                yield current
            self._closing.wait(self._watch_poll_s)

    def Heartbeat(self, request, context):  # noqa: N802
        robot = self._authenticate(context)
        if not ID_PATTERN.fullmatch(request.robot_id):
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "robot_id",
                        f"field 'robot_id' expected {ID_PATTERN.pattern}, got {request.robot_id!r}")
        try:
            self._check_identity(robot, request.robot_id)
        except _Reject as e:
            self._abort(context, e.code, e.field, str(e))
        with self._lock:
            rec = self._robots.setdefault(request.robot_id, _RobotRecord())
            rec.state, rec.episodes_done = request.state, request.episodes_done
            rec.policy_version, rec.spool_pending = request.policy_version, request.spool_pending
            rec.last_seen = self._clock()
        return self._fleet_status_proto()

    def GetFleetStatus(self, request, context):  # noqa: N802
        self._authenticate(context)
        window = int(request.window) or DEFAULT_STATUS_WINDOW
        if not 1 <= window <= MAX_STATUS_WINDOW:
            self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, "window",
                        f"field 'window' expected 1..{MAX_STATUS_WINDOW} (0: {DEFAULT_STATUS_WINDOW}), got {request.window}")
        return self._fleet_status_proto(window, with_tasks=True)

    def _fleet_status_proto(self, window: int = DEFAULT_STATUS_WINDOW, with_tasks: bool = False) -> fleet_pb2.FleetStatus:
        version = self._version_proto()
        now = self._clock()
        with self._lock:
            robots = []
            for rid, r in sorted(self._robots.items()):
                recent = list(r.recent)[-window:]
                success, human, _ = window_stats(recent)
                robots.append(fleet_pb2.RobotStatus(
                    robot_id=rid, state=r.state, episodes_done=r.episodes_done, policy_version=r.policy_version,
                    spool_pending=r.spool_pending, episodes_accepted=r.episodes_accepted,
                    seconds_since_heartbeat=(now - r.last_seen) if r.last_seen else -1.0,
                    window_episodes=len(recent), success_rate=success, intervention_rate=human,
                ))
            tasks = []
            for name, t in sorted(self._tasks.items()) if with_tasks else ():
                recent = list(t.recent)[-window:]
                success, human, cycle = window_stats(recent)
                tasks.append(fleet_pb2.TaskStatus(
                    task=name, episodes_accepted=t.episodes_accepted, window_episodes=len(recent),
                    success_rate=success, intervention_rate=human, mean_cycle_steps=cycle,
                ))
            total = self._episodes_accepted
        return fleet_pb2.FleetStatus(
            policy_version=version.version if version.available else -1, episodes_accepted=total, robots=robots,
            tasks=tasks, window=window,
        )


# ------------------------------------------------------------------------------------------- server


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """PEM server certificate chain and key; with `client_ca` set, clients must present a cert it signed (mTLS)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert_chain: str, private_key: str, client_ca: str | None = None) -> ServerTLS:
        def read(p: str) -> bytes:
            with open(p, "rb") as fh:
                return fh.read()

        return cls(read(cert_chain), read(private_key), read(client_ca) if client_ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Channel arguments of the learner's server: explicit message limits and keepalive policy."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_CLIENT_PING_INTERVAL_MS),
        ("grpc.http2.max_pings_without_data", 0),
        # Two learners must never share a port silently (each would hold half the dedupe set).
        ("grpc.so_reuseport", 0),
    ]


@dataclasses.dataclass
class LearnerServer:
    """A started server: `port` is the bound port (useful with port 0)."""

    server: grpc.Server
    port: int
    servicer: FleetServicer
    health: health.HealthServicer

    def stop(self, grace: float | None = DEFAULT_STOP_GRACE_S, close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """NOT_SERVING -> finish running persists (refusing new ones) -> stop the server, waiting for it."""
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, open Watch streams told
        if not self.servicer.close(close_timeout):
            log.error("stop: persist calls still running after %.1f s", close_timeout)
        self.server.stop(grace).wait()

    def wait(self, timeout: float | None = None) -> bool:
        return self.server.wait_for_termination(timeout)


def serve(
    servicer: FleetServicer,
    *,
    port: int = 0,
    host: str = "[::]",
    tls: ServerTLS | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    maximum_concurrent_rpcs: int | None = None,
) -> LearnerServer:
    """Starts the Fleet and Health services on `host:port` (port 0 picks a free one); returns the handle."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lwd-fleet"),
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    health_servicer = health.HealthServicer()
    fleet_pb2_grpc.add_FleetServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    if not bound:
        raise RuntimeError(f"could not bind the learner's gRPC server to {address}")
    server.start()
    for name in ("", FLEET_SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("learner gRPC service on %s (port %d, tls=%s, mtls=%s)", host, bound, tls is not None,
             bool(tls and tls.client_ca))
    return LearnerServer(server=server, port=bound, servicer=servicer, health=health_servicer)
