"""The bridge <-> learner gRPC contract over real servers and clients on loopback (port 0).

Covers: upload/ack/idempotent re-upload, every kind of bad episode rejected with the field named (and
earlier episodes untouched), auth, TLS and mTLS with certificates made here by the openssl CLI, params
streaming with checksum (and a corrupting proxy), health, persist failures, and a spool drained across a
learner restart landing every episode exactly once.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleet_api.protos import FLEET_SERVICE_NAME, fleet_pb2_grpc
from fleet_api.schema import ACTION_DIM, IMAGE_SHAPE, PROPRIO_DIM, STATE_DIM, Episode
from fleet_api.wire import episode_digest, episode_to_messages, fleet_status_to_dict
from lwd_jax.learner.auth import TokenAuth, add_robot, load_token_hashes
from lwd_jax.learner.service import FleetServicer, PolicyStore, ServerTLS, serve
from robot_bridge.client import (
    AuthenticationFailed,
    ClientConfig,
    ClientTLS,
    EpisodeRejected,
    LearnerClient,
    LearnerUnavailable,
    ParamsIntegrityError,
    PolicyNotPublished,
)
from robot_bridge.spool import Spool

pytestmark = pytest.mark.timeout(60)

TOKENS = {"robot-0": "token-zero", "robot-1": "token-one"}
TASKS = ("cube", "puzzle")
MAX_STEPS = 400
FAST = ClientConfig(
    upload_timeout_s=10.0, call_timeout_s=5.0, policy_timeout_s=10.0, max_attempts=3,
    backoff_initial_s=0.01, backoff_max_s=0.05, initial_reconnect_backoff_ms=50, max_reconnect_backoff_ms=200,
)


def make_episode(
    T: int = 250, *, task: str = "cube", robot_id: str = "robot-0", seed: int = 0, image: bool = False
) -> Episode:
    """A synthetic episode that passes `validate_episode` (T actions, T + 1 observations)."""
    rng = np.random.default_rng(seed)
    obs = {
        "state": rng.standard_normal((T + 1, STATE_DIM)).astype(np.float32),
        "state_mask": rng.random((T + 1, STATE_DIM)) < 0.5,
        "proprio": rng.standard_normal((T + 1, PROPRIO_DIM)).astype(np.float32),
    }
    if image:
        obs["image"] = rng.integers(0, 256, (T + 1, *IMAGE_SHAPE), dtype=np.uint8)
    return Episode(
        observation=obs,
        action=rng.uniform(-1, 1, (T, ACTION_DIM)).astype(np.float32),
        reward=rng.standard_normal(T).astype(np.float32),
        intervention=rng.random(T) < 0.2,
        subgoals=np.sort(rng.integers(0, 3, T + 1)).astype(np.int32),
        terminal=True,
        success=True,
        language_instruction=f"solve the {task}",
        task=task,
        robot_id=robot_id,
        policy_version=3,
        source="rollout",
        num_subgoals=3,
    )


def assert_same(a: Episode, b: Episode) -> None:
    assert a.episode_id == b.episode_id and a.task == b.task and a.robot_id == b.robot_id
    assert (a.terminal, a.success, a.policy_version, a.source, a.num_subgoals, a.language_instruction) == (
        b.terminal, b.success, b.policy_version, b.source, b.num_subgoals, b.language_instruction)
    assert a.observation.keys() == b.observation.keys()
    for k in a.observation:
        np.testing.assert_array_equal(a.observation[k], b.observation[k])
        assert a.observation[k].dtype == b.observation[k].dtype
    for k in ("action", "reward", "intervention", "subgoals"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
        assert getattr(a, k).dtype == getattr(b, k).dtype


class Store:
    """Stands in for the RLDS writer: counts writes per id so a double store is visible."""

    def __init__(self, delay_s: float = 0.0):
        self.episodes: dict[str, Episode] = {}
        self.writes: dict[str, int] = {}
        self.accepted: list[str] = []
        self.delay_s = delay_s
        self.fail_next = 0
        self._lock = threading.Lock()

    def persist(self, ep: Episode) -> None:
        time.sleep(self.delay_s)
        with self._lock:
            if self.fail_next:
                self.fail_next -= 1
                raise OSError("disk full (simulated)")
            self.episodes[ep.episode_id] = ep
            self.writes[ep.episode_id] = self.writes.get(ep.episode_id, 0) + 1

    def on_accept(self, ep: Episode) -> None:
        with self._lock:
            self.accepted.append(ep.episode_id)

    def ids(self) -> dict[str, str]:
        """What a restarted learner knows: stored ids with their content digests (as FleetStore.rebuild)."""
        with self._lock:
            return {i: episode_digest(ep) for i, ep in self.episodes.items()}


def start_learner(store: Store, *, port: int = 0, tls: ServerTLS | None = None, policy: PolicyStore | None = None,
                  auth: bool = True):
    servicer = FleetServicer(
        persist=store.persist, on_accept=store.on_accept, known_tasks=TASKS, max_steps=MAX_STEPS,
        params_provider=policy, auth=TokenAuth.from_plain_tokens(TOKENS) if auth else None,
        seen_episode_ids=store.ids, watch_poll_s=0.02,
    )
    return serve(servicer, host="127.0.0.1", port=port, tls=tls)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def policy() -> PolicyStore:
    return PolicyStore()


@pytest.fixture
def learner(store, policy):
    srv = start_learner(store, policy=policy)
    yield srv
    srv.stop(grace=0)


def connect(srv, robot_id: str = "robot-0", token: str | None = "default", **kw) -> LearnerClient:
    token = TOKENS.get(robot_id) if token == "default" else token
    return LearnerClient(f"127.0.0.1:{srv.port}", robot_id, token, config=kw.pop("config", FAST), **kw)


# ------------------------------------------------------------------------------------------- upload


@pytest.mark.parametrize("T", [1, 99, 100, 250])
def test_upload_ack_and_idempotent_reupload(learner, store, T):
    ep = make_episode(T, seed=T, image=T == 99)
    with connect(learner) as client:
        first = client.upload_episode(ep)
        again = client.upload_episode(ep)
    assert (first.episode_id, first.duplicate, first.attempts) == (ep.episode_id, False, 1)
    assert again.duplicate and again.attempts == 1
    assert store.writes == {ep.episode_id: 1} and store.accepted == [ep.episode_id]
    assert_same(store.episodes[ep.episode_id], ep)
    assert learner.servicer.fleet_status()["episodes_accepted"] == 1


def test_concurrent_uploads_of_one_episode_store_it_once(learner, store):
    store.delay_s = 0.05
    ep = make_episode(120)
    config = dataclasses.replace(FAST, max_attempts=20)
    with connect(learner, config=config) as client, futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: client.upload_episode(ep), range(4)))
    assert sorted(r.duplicate for r in results) == [False, True, True, True]
    assert store.writes == {ep.episode_id: 1}


def _drop_message(index: int):
    return lambda msgs: msgs[:index] + msgs[index + 1:]


def _add_header_field(msgs):
    msgs[0].header.fields.add(name="foo", dtype="<f4", length=msgs[0].header.num_steps)
    return msgs


def _truncate_bytes(msgs):
    t = msgs[1].chunk.tensors[0]
    t.data = t.data[:-1]
    return msgs


def _repeat_chunk(msgs):
    return msgs[:2] + msgs[1:]


def _with(**changes):
    def mutate(ep: Episode) -> Episode:
        for key, fn in changes.items():
            if key.startswith("obs_"):
                ep.observation[key[4:]] = fn(ep.observation.get(key[4:]))
            else:
                setattr(ep, key, fn(getattr(ep, key)))
        return ep

    return mutate


def _nan_at(a):
    a = a.copy()
    a[7, 3] = np.nan
    return a


BAD_EPISODES = {
    # name: (episode mutator, stream mutator, field the error must name)
    "wrong_shape": (_with(obs_state=lambda a: a[:, :-1].copy()), None, "observation/state"),
    "wrong_dtype": (_with(reward=lambda a: a.astype(np.float64)), None, "reward"),
    "wrong_dtype_int": (_with(subgoals=lambda a: a.astype(np.int64)), None, "subgoals"),
    "nan": (_with(obs_proprio=_nan_at), None, "observation/proprio"),
    "action_out_of_bounds": (_with(action=lambda a: a * 3), None, "action"),
    "unknown_task": (_with(task=lambda _: "juggle"), None, "task"),
    "too_long": (lambda ep: make_episode(MAX_STEPS + 1, seed=5), None, "num_steps"),
    "missing_middle_chunk": (None, _drop_message(2), "seq"),
    "missing_last_chunk": (None, _drop_message(3), "num_steps"),
    "repeated_chunk": (None, _repeat_chunk, "seq"),
    "unknown_obs_field": (_with(obs_depth=lambda _: np.zeros((251, 4), np.float32)), None, "observation/depth"),
    "unknown_top_field": (None, _add_header_field, "foo"),
    "truncated_tensor_bytes": (None, _truncate_bytes, "action"),
    "missing_field": (lambda ep: (ep.observation.pop("proprio"), ep)[1], None, "observation/proprio"),
    "empty_instruction": (_with(language_instruction=lambda _: " "), None, "language_instruction"),
    "bad_episode_id": (_with(episode_id=lambda _: "../../etc/passwd"), None, "episode_id"),
}


@pytest.mark.parametrize("case", sorted(BAD_EPISODES))
def test_bad_episode_rejected_naming_field_and_earlier_ones_intact(learner, store, case):
    mutate_ep, mutate_stream, field = BAD_EPISODES[case]
    good = make_episode(250, seed=1)
    bad = make_episode(250, seed=2)
    if mutate_ep is not None:
        bad = mutate_ep(bad)
    with connect(learner) as client:
        client.upload_episode(good)
        with pytest.raises(EpisodeRejected) as info:
            if mutate_stream is None:
                client.upload_episode(bad)
            else:
                client.upload_messages(lambda: mutate_stream(list(episode_to_messages(bad))), bad.episode_id)
        later = make_episode(30, seed=3)
        client.upload_episode(later)  # the learner keeps serving after a rejection
    err = info.value
    assert err.field == field, str(err)
    assert f"'{field}'" in str(err) and "after 1 attempt(s)" in str(err)  # named, and never retried
    assert store.writes == {good.episode_id: 1, later.episode_id: 1}
    assert_same(store.episodes[good.episode_id], good)
    assert bad.episode_id not in learner.servicer.acked_ids()


def test_persist_failure_is_retried_and_not_half_recorded(learner, store):
    store.fail_next = 1
    ep = make_episode(50)
    with connect(learner) as client:
        result = client.upload_episode(ep)
    assert result.attempts == 2 and not result.duplicate
    assert store.writes == {ep.episode_id: 1}
    # Persist always failing: the robot gets LearnerUnavailable, the id stays un-acked (a retry re-sends).
    store.fail_next = FAST.max_attempts
    ep2 = make_episode(50, seed=9)
    with connect(learner) as client, pytest.raises(LearnerUnavailable):
        client.upload_episode(ep2)
    assert ep2.episode_id not in learner.servicer.acked_ids() and ep2.episode_id not in store.episodes


# ------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize("token", [None, "wrong-token", TOKENS["robot-1"]])
def test_bad_credentials_are_unauthenticated_and_store_nothing(learner, store, policy, token):
    policy.publish(1, b"params")
    with connect(learner, "robot-0", token) as client:
        with pytest.raises(AuthenticationFailed) as info:
            client.upload_episode(make_episode(20))
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        for call in (client.fetch_policy, client.policy_version, lambda: client.heartbeat("idle"),
                     lambda: next(client.watch_policy(timeout_s=2))):
            with pytest.raises(AuthenticationFailed):
                call()
        assert client.health() == "SERVING"  # probes need no token
    assert store.writes == {} and learner.servicer.fleet_status()["robots"] == {}


def test_robot_cannot_upload_as_another_robot(learner, store):
    with connect(learner, "robot-0") as client:
        with pytest.raises(AuthenticationFailed) as info:
            client.upload_episode(make_episode(20, robot_id="robot-1"))
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert store.writes == {}


def test_tokens_file_round_trip(tmp_path):
    path = tmp_path / "tokens.json"
    token = add_robot(path, "robot-7")
    hashes = load_token_hashes(path)
    assert token not in path.read_text() and hashes["robot-7"].startswith("sha256:")
    auth = TokenAuth.from_file(path)
    assert auth.authenticate([("robot-id", "robot-7"), ("authorization", f"Bearer {token}")]) == "robot-7"


# ------------------------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=d)


def _make_leaf(d: Path, name: str, ca: str, ext: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    d = tmp_path_factory.mktemp("certs")
    _make_ca(d, "ca")
    _make_ca(d, "rogue-ca")
    _make_leaf(d, "server", "ca", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _make_leaf(d, "robot-0", "ca", "extendedKeyUsage=clientAuth\n")
    _make_leaf(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return {p.stem + p.suffix: p.read_bytes() for p in d.iterdir() if p.suffix in (".pem", ".key")}


def test_tls_upload_and_plaintext_client_refused(store, certs):
    srv = start_learner(store, tls=ServerTLS(certs["server.pem"], certs["server.key"]))
    try:
        ep = make_episode(40)
        with connect(srv, tls=ClientTLS(certs["ca.pem"])) as client:
            assert client.upload_episode(ep).duplicate is False
        with connect(srv, config=dataclasses.replace(FAST, max_attempts=1)) as plain:
            with pytest.raises(LearnerUnavailable):
                plain.upload_episode(make_episode(40, seed=4))
        with connect(srv, tls=ClientTLS(certs["rogue-ca.pem"]),
                     config=dataclasses.replace(FAST, max_attempts=1)) as wrong_ca:
            with pytest.raises(LearnerUnavailable):
                wrong_ca.upload_episode(make_episode(40, seed=5))
        assert set(store.writes) == {ep.episode_id}
    finally:
        srv.stop(grace=0)


def test_mtls_requires_a_client_cert_signed_by_the_fleet_ca(store, certs):
    tls = ServerTLS(certs["server.pem"], certs["server.key"], client_ca=certs["ca.pem"])
    srv = start_learner(store, tls=tls)
    one_try = dataclasses.replace(FAST, max_attempts=1)
    try:
        ep = make_episode(40)
        good = ClientTLS(certs["ca.pem"], certs["robot-0.pem"], certs["robot-0.key"])
        with connect(srv, tls=good) as client:
            assert client.upload_episode(ep).duplicate is False
            assert client.health() == "SERVING"
        for tls_opts in (ClientTLS(certs["ca.pem"]), ClientTLS(certs["ca.pem"], certs["rogue.pem"], certs["rogue.key"])):
            with connect(srv, tls=tls_opts, config=one_try) as client, pytest.raises(LearnerUnavailable):
                client.upload_episode(make_episode(40, seed=6))
        # robot-1's valid token over robot-0's certificate: the certificate's common name must be the robot id
        with connect(srv, "robot-1", tls=good, config=one_try) as client, pytest.raises(AuthenticationFailed):
            client.upload_episode(make_episode(40, robot_id="robot-1", seed=7))
        assert set(store.writes) == {ep.episode_id}
    finally:
        srv.stop(grace=0)


# ------------------------------------------------------------------------------------------- params


def test_policy_fetch_poll_and_watch(learner, policy):
    with connect(learner) as client:
        with pytest.raises(PolicyNotPublished):
            client.fetch_policy()
        assert client.policy_version() is None
        data = np.random.default_rng(0).bytes(2_500_000)  # three 1 MiB chunks
        policy.publish(1, data)
        assert client.fetch_policy() == (1, data)
        assert client.policy_version() == 1

        seen: list[int] = []

        def watch() -> None:
            for v in client.watch_policy(known_version=-1, timeout_s=5):
                seen.append(v)
                if v == 2:
                    return

        t = threading.Thread(target=watch)
        t.start()
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        policy.publish(2, b"v2-params")
        t.join(5)
        assert seen == [1, 2]
        assert client.fetch_policy() == (2, b"v2-params")
        status = client.heartbeat("running", episodes_done=4, policy_version=2, spool_pending=1)
        assert status.policy_version == 2
        assert [(r.robot_id, r.state, r.episodes_done, r.spool_pending) for r in status.robots] == [
            ("robot-0", "running", 4, 1)]


def test_fleet_status_per_robot_and_task_over_a_window(learner, store):
    """GetFleetStatus: per robot and per task over the trailing window of accepted episodes; records nothing."""
    def ep(i: int, robot: str, task: str, success: bool, human: int) -> Episode:
        e = make_episode(50, robot_id=robot, task=task, seed=100 + i)
        return dataclasses.replace(e, success=success, terminal=success, intervention=np.arange(50) < human)

    eps = [ep(0, "robot-0", "cube", False, 0), ep(1, "robot-0", "cube", True, 10), ep(2, "robot-1", "puzzle", True, 0)]
    for e in eps:
        with connect(learner, e.robot_id) as client:
            client.upload_episode(e)
    with connect(learner, "robot-1") as client:
        full = fleet_status_to_dict(client.fleet_status())
        last1 = fleet_status_to_dict(client.fleet_status(window=1))
        with pytest.raises(EpisodeRejected, match="window"):
            client.fleet_status(window=10**6)
    assert full["episodes_accepted"] == 3 and full["window"] == 20
    r0 = full["robots"]["robot-0"]
    assert (r0["episodes_accepted"], r0["window_episodes"], r0["success_rate"]) == (2, 2, 0.5)
    assert r0["intervention_rate"] == pytest.approx(10 / 100) and r0["seconds_since_heartbeat"] == -1.0
    cube = full["tasks"]["cube"]
    assert (cube["episodes_accepted"], cube["success_rate"], cube["mean_cycle_steps"]) == (2, 0.5, 50.0)
    assert last1["robots"]["robot-0"]["success_rate"] == 1.0 and last1["tasks"]["cube"]["window_episodes"] == 1
    puzzle = full["tasks"]["puzzle"]
    assert (puzzle["success_rate"], puzzle["intervention_rate"], puzzle["mean_cycle_steps"]) == (1.0, 0.0, 50.0)
    assert full["robots"].keys() == {"robot-0", "robot-1"}  # fleet_status calls recorded no heartbeat
    assert all(r["seconds_since_heartbeat"] == -1.0 for r in full["robots"].values())


class _CorruptingProxy(fleet_pb2_grpc.FleetServicer):
    """A man in the middle that flips one byte of the params (or drops the last chunk)."""

    def __init__(self, upstream: fleet_pb2_grpc.FleetStub, mode: str):
        self.upstream, self.mode = upstream, mode

    def GetPolicy(self, request, context):  # noqa: N802
        msgs = list(self.upstream.GetPolicy(request, metadata=context.invocation_metadata(), timeout=5))
        if self.mode == "flip":
            data = bytearray(msgs[1].data)
            data[10] ^= 0xFF
            msgs[1].data = bytes(data)
        else:
            msgs = msgs[:-1]
        yield from msgs


@pytest.mark.parametrize("mode", ["flip", "truncate"])
def test_corrupted_params_stream_is_detected(learner, policy, mode):
    policy.publish(5, np.random.default_rng(1).bytes(1_500_000))
    upstream = grpc.insecure_channel(f"127.0.0.1:{learner.port}")
    proxy = grpc.server(futures.ThreadPoolExecutor(2))
    fleet_pb2_grpc.add_FleetServicer_to_server(_CorruptingProxy(fleet_pb2_grpc.FleetStub(upstream), mode), proxy)
    port = proxy.add_insecure_port("127.0.0.1:0")
    proxy.start()
    try:
        with LearnerClient(f"127.0.0.1:{port}", "robot-0", TOKENS["robot-0"], config=FAST) as client:
            with pytest.raises(ParamsIntegrityError, match="checksum mismatch" if mode == "flip" else "truncated"):
                client.fetch_policy()
    finally:
        proxy.stop(0)
        upstream.close()


# ------------------------------------------------------------------------------------------- health


def test_standard_health_check_serving(learner):
    with grpc.insecure_channel(f"127.0.0.1:{learner.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", FLEET_SERVICE_NAME):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    learner.health.enter_graceful_shutdown()
    assert learner.health.Check(health_pb2.HealthCheckRequest(service=""), None).status == (
        health_pb2.HealthCheckResponse.NOT_SERVING)


def test_upload_stream_must_start_with_header(learner, store):
    with connect(learner) as client, pytest.raises(EpisodeRejected) as info:
        ep = make_episode(10)
        client.upload_messages(lambda: list(episode_to_messages(ep))[1:], ep.episode_id)
    assert info.value.field == "header" and store.writes == {}


# ------------------------------------------------------------------------------------------- spool drain


def test_drain_spool_rejects_bad_episode_and_uploads_the_rest(learner, store, tmp_path):
    spool = Spool(tmp_path / "spool", validate=False)
    eps = [make_episode(30, seed=i) for i in range(3)]
    eps[1].task = "juggle"
    for ep in eps:
        spool.put(ep)
    with connect(learner) as client:
        report = client.drain_spool(spool)
    assert (report.uploaded, report.duplicates) == (2, 0)
    assert [(eid, field) for eid, field, _ in report.rejected] == [(eps[1].episode_id, "task")]
    assert len(spool) == 0 and len(list((tmp_path / "spool" / "rejected").glob("*.npz"))) == 1
    assert set(store.writes) == {eps[0].episode_id, eps[2].episode_id}


def test_spool_drained_across_learner_restart_lands_every_episode_exactly_once(tmp_path):
    store = Store(delay_s=0.03)
    spool = Spool(tmp_path / "spool")
    eps = [make_episode(60, seed=i) for i in range(16)]
    for ep in eps:
        spool.put(ep)
    srv = start_learner(store)
    port = srv.port
    config = dataclasses.replace(FAST, max_attempts=100, backoff_max_s=0.1)
    reports = []
    with connect(srv, config=config) as client:
        drain = threading.Thread(target=lambda: reports.append(client.drain_spool(spool)))
        drain.start()
        while len(store.ids()) < 5:
            time.sleep(0.005)
        srv.stop(grace=0)  # mid-drain: an upload is typically in flight right now
        time.sleep(0.3)
        srv = start_learner(store, port=port)  # a "restarted learner": dedupe seeded from what is on disk
        try:
            drain.join(30)
            assert not drain.is_alive()
        finally:
            srv.stop(grace=0)
    assert store.writes == {ep.episode_id: 1 for ep in eps}
    for ep in eps:
        assert_same(store.episodes[ep.episode_id], ep)
    assert len(spool) == 0
    assert reports[0].uploaded + reports[0].duplicates == len(eps)


def test_ingest_benchmark_smoke():
    from experiments.bench_ingest import run

    result = run(num_uploaders=2, episodes=2, steps=20)
    assert result["episodes"] == 4 and result["steps_per_s"] > 0


def test_stubs_rebuild_in_a_process_that_already_loaded_tensorflow():
    """The learner imports the stubs after the RLDS reader loaded TensorFlow; protoc in-process segfaulted there."""
    import subprocess
    import sys

    code = ("import tensorflow\nfrom fleet_api.protos import build_stubs\n"
            "build_stubs.build(force=True)\nimport fleet_api.protos as p\nprint(p.FLEET_SERVICE_NAME)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("lwd.fleet.v1.Fleet")


# ------------------------------------------------------------------------------------------- refusals by cause


def _without_hash(ep: Episode):
    """The upload an older client sends: no content_sha256 in the header."""
    def messages():
        for i, m in enumerate(episode_to_messages(ep)):
            if i == 0:
                m.header.content_sha256 = ""
            yield m
    return messages


def test_same_id_with_other_content_is_already_exists_never_a_silent_duplicate(learner, store):
    ep = make_episode(60)
    other = dataclasses.replace(ep, reward=ep.reward + 1.0)  # same episode_id, other content
    with connect(learner, config=dataclasses.replace(FAST, max_attempts=1)) as client:
        client.upload_episode(ep)
        assert client.upload_episode(ep).duplicate
        with pytest.raises(EpisodeRejected) as e:
            client.upload_episode(other)
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS and e.value.field == "episode_id"
        assert episode_digest(ep) in str(e.value) and episode_digest(other) in str(e.value)
        # an older client (no declared hash): the payload is read and compared, never stored twice
        assert client.upload_messages(_without_hash(ep), ep.episode_id).duplicate
        with pytest.raises(EpisodeRejected, match="ALREADY_EXISTS"):
            client.upload_messages(_without_hash(other), ep.episode_id)
    assert store.writes == {ep.episode_id: 1}
    assert_same(store.episodes[ep.episode_id], ep)


def test_a_stream_that_does_not_match_its_declared_hash_is_refused(learner, store):
    ep = make_episode(40)

    def tampered():
        for i, m in enumerate(episode_to_messages(ep)):
            if i == 1:
                t = m.chunk.tensors[0]
                t.data = bytes([t.data[0] ^ 1]) + t.data[1:]
            yield m

    with connect(learner) as client, pytest.raises(EpisodeRejected) as e:
        client.upload_messages(tampered, ep.episode_id)
    assert e.value.field == "content_sha256" and store.writes == {}


def test_an_episode_the_store_can_never_take_goes_to_dead_letters_and_the_spool_moves_on(tmp_path):
    """The store was created without images; an image episode can never go in. It is refused for good
    (FAILED_PRECONDITION), the robot moves it to rejected/ with the reason, and the episodes behind it land."""
    from lwd_jax.data.rlds_writer import RLDSWriter

    writer = RLDSWriter(tmp_path / "rlds", with_image=False, durable=False)
    servicer = FleetServicer(persist=writer.append, known_tasks=TASKS, max_steps=MAX_STEPS,
                             auth=TokenAuth.from_plain_tokens(TOKENS))
    srv = serve(servicer, host="127.0.0.1", port=0)
    spool = Spool(tmp_path / "spool")
    poisoned, good = make_episode(30, image=True, seed=1), make_episode(30, seed=2)
    spool.put(poisoned)
    spool.put(good)
    try:
        with connect(srv) as client:
            report = client.drain_spool(spool)
        assert report.uploaded == 1 and [r[0] for r in report.rejected] == [poisoned.episode_id]
        assert "observation/image" in report.rejected[0][1] + report.rejected[0][2]
        assert len(spool) == 0 and servicer.acked_ids() == {good.episode_id}
        reasons = list((tmp_path / "spool" / "rejected").glob("*"))
        assert any(poisoned.episode_id in p.name for p in reasons)
    finally:
        srv.stop(grace=0)
        writer.close()


def test_values_the_schema_implies_are_bounded(learner, store):
    bad = {
        "reward": dataclasses.replace(make_episode(20, seed=1), reward=np.full(20, 3e38, np.float32)),
        "subgoals": dataclasses.replace(make_episode(20, seed=2), subgoals=np.full(21, 1000, np.int32)),
        "episode_id": dataclasses.replace(make_episode(20, seed=3), episode_id="not-a-uuid"),
    }
    with connect(learner) as client:
        for field, ep in bad.items():
            with pytest.raises(EpisodeRejected) as e:
                client.upload_episode(ep)
            assert e.value.field == field, (field, str(e.value))
    assert store.writes == {}


def test_in_flight_bytes_and_streams_per_robot_are_bounded(store):
    ep = make_episode(100)
    one_try = dataclasses.replace(FAST, max_attempts=1)
    tight = FleetServicer(persist=store.persist, known_tasks=TASKS, max_steps=MAX_STEPS,
                          auth=TokenAuth.from_plain_tokens(TOKENS), max_inflight_bytes=1000)
    srv = serve(tight, host="127.0.0.1", port=0)
    try:
        with connect(srv, config=one_try) as client, pytest.raises(LearnerUnavailable, match="max_inflight_bytes"):
            client.upload_episode(ep)  # declares more than the whole budget: refused before any payload
    finally:
        srv.stop(grace=0)
    store.delay_s = 0.5  # the first upload holds its stream slot while it persists
    one_stream = FleetServicer(persist=store.persist, known_tasks=TASKS, max_steps=MAX_STEPS,
                               auth=TokenAuth.from_plain_tokens(TOKENS), max_streams_per_robot=1)
    srv = serve(one_stream, host="127.0.0.1", port=0)
    try:
        with connect(srv, config=one_try) as client, futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.upload_episode, ep)
            time.sleep(0.2)
            with pytest.raises(LearnerUnavailable, match="max_streams_per_robot"):
                client.upload_episode(make_episode(100, seed=9))
            assert first.result().duplicate is False
        with connect(srv, config=one_try) as client:  # the slot is free again
            assert client.upload_episode(make_episode(100, seed=9)).duplicate is False
    finally:
        srv.stop(grace=0)
