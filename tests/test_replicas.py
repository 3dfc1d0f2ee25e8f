"""Ingest replicas over one shared fleet store (lwd_jax/learner/replicas.py): exactly once by episode id across
replicas, orphan copies skipped by the learner's tail, policies served by every replica, and a replica
killed with SIGKILL mid-stream while robots keep uploading through the address list."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fleet_api.wire import channel_target, episode_digest
from lwd_jax.data.batching import InstructionTable
from lwd_jax.learner.auth import add_robot
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.replicas import (
    Commit,
    DirectoryPolicies,
    ReplicaStore,
    SharedStore,
    StoreTail,
    iter_commits,
)
from lwd_jax.learner.service import FleetServicer, StoredElsewhere, serve
from robot_bridge.client import ClientConfig, EpisodeRejected, LearnerClient
from tests.rlds_fixtures import TASKS, make_episode

TASK_IDS = {t: i for i, t in enumerate(TASKS)}


def _eps(seed: int, n: int) -> list:
    rng = np.random.default_rng(seed)
    return [make_episode(rng, int(rng.integers(5, 30)), task=TASKS[i % len(TASKS)]) for i in range(n)]


class _RacingStore(SharedStore):
    """A store whose first commit lookup misses: the replica appends, then finds the record another replica
    linked in between (the race the link(2) commit decides)."""

    def __init__(self, root: str):
        super().__init__(root, durable=False)
        self.misses = 1

    def read_commit(self, episode_id: str):
        if self.misses:
            self.misses -= 1
            return None
        return super().read_commit(episode_id)


def test_one_commit_per_id_across_replicas_and_the_tail_delivers_each_once(tmp_path):
    store = SharedStore(tmp_path, durable=False)
    r0 = ReplicaStore(store, "r0", known_tasks=TASK_IDS)
    r1 = ReplicaStore(store, "r1", known_tasks=TASK_IDS)
    a, b, c = _eps(0, 3)
    r0.persist(a)
    with pytest.raises(StoredElsewhere) as e:  # a re-send reaching the other replica: nothing appended there
        r1.persist(a)
    assert e.value.digest == episode_digest(a) and r1.writer.num_shards == 0

    r0.persist(b)  # committed by r0 while r1 is between its lookup and its link:
    racing = ReplicaStore(_RacingStore(tmp_path), "r2", known_tasks=TASK_IDS)
    with pytest.raises(StoredElsewhere):
        racing.persist(b)
    assert racing.orphans == 1 and racing.writer.num_shards == 1  # an orphan copy on disk, never delivered

    other = dataclasses.replace(b, reward=b.reward + 1.0)  # the same id with other content
    with pytest.raises(StoredElsewhere) as e:
        r1.persist(other)
    assert e.value.digest == episode_digest(b) != episode_digest(other)

    r1.writer.append(c)  # appended, not yet committed (its replica between the two): pending, not delivered
    tail, got = StoreTail(store), []
    assert tail.poll(got.append) == 2 and [ep.episode_id for ep in got] == [a.episode_id, b.episode_id]
    assert tail.orphans == 1 and tail.pending == 1
    assert store.commit(c.episode_id, Commit("r1", 0, episode_digest(c))) == Commit("r1", 0, episode_digest(c))
    assert tail.poll(got.append) == 1 and got[-1].episode_id == c.episode_id and tail.pending == 0
    assert tail.poll(got.append) == 0  # nothing twice
    assert sorted(i for i, _ in iter_commits(store)) == sorted(ep.episode_id for ep in (a, b, c))
    for r in (r0, r1, racing):
        r.close()


def test_replica_servicers_answer_duplicates_conflicts_and_serve_the_published_policy(tmp_path):
    store = SharedStore(tmp_path, durable=False)
    policies = DirectoryPolicies(store)
    replicas = [ReplicaStore(store, f"r{i}", known_tasks=TASK_IDS) for i in range(2)]
    servers = [serve(FleetServicer(persist=r.persist, known_tasks=TASK_IDS, params_provider=DirectoryPolicies(store)),
                     host="127.0.0.1") for r in replicas]
    clients = [LearnerClient(f"127.0.0.1:{s.port}", "robot-0") for s in servers]
    try:
        ep = _eps(1, 1)[0]
        assert not clients[0].upload_episode(ep).duplicate
        assert clients[1].upload_episode(ep).duplicate  # committed by r0: a duplicate at r1 too
        with pytest.raises(EpisodeRejected) as e:
            clients[1].upload_episode(dataclasses.replace(ep, reward=ep.reward + 1.0))
        assert e.value.field == "episode_id" and episode_digest(ep) in str(e.value)
        for version in (3, 7):
            policies.publish(version, f"params-{version}".encode())
            assert [c.fetch_policy() for c in clients] == [(version, f"params-{version}".encode())] * 2
    finally:
        for c in clients:
            c.close()
        for s in servers:
            s.stop(0)
        for r in replicas:
            r.close()


def test_address_lists_become_grpc_round_robin_targets():
    assert channel_target("127.0.0.1:5000") == ("127.0.0.1:5000", [])
    assert channel_target("127.0.0.1:5000, 127.0.0.1:5001") == (
        "ipv4:127.0.0.1:5000,127.0.0.1:5001", [("grpc.lb_policy_name", "round_robin")])
    assert channel_target("[::1]:5000,[::1]:5001")[0] == "ipv6:[::1]:5000,[::1]:5001"
    assert channel_target("dns:///fleet.example:443")[1] == [("grpc.lb_policy_name", "round_robin")]
    with pytest.raises(ValueError, match="host 'learner-a'"):
        channel_target("learner-a:5000,learner-b:5000")


def _start_replica(root: str, name: str, tokens: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lwd_jax.learner.replicas", "--store", root, "--name", name,
                             "--tokens-file", tokens, "--no-fsync"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, f"{name}.log"), "wb"))


def _address(root: str, name: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> int:
    path = os.path.join(root, "replicas", f"{name}.address.json")
    t0 = time.monotonic()
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"replica {name} did not start: {open(os.path.join(root, f'{name}.log')).read()[-2000:]}")
        time.sleep(0.1)
    with open(path) as f:
        return int(json.load(f)["port"])


def test_a_replica_killed_mid_stream_loses_nothing_and_stores_nothing_twice(tmp_path):
    """2 replica processes behind one address list; 4 robots upload 12 episodes each (48) while the learner's tail
    feeds a fleet store; replica r0 is SIGKILLed after the first acks. Every episode is acknowledged, committed
    once, delivered to the learner once and sampleable."""
    root = str(tmp_path / "fleet")
    store = SharedStore(root, durable=False)
    store.write_spec({"tasks": TASK_IDS, "max_steps": 200, "with_image": False})
    tokens_file = str(tmp_path / "tokens")
    tokens = {f"robot-{i}": add_robot(tokens_file, f"robot-{i}") for i in range(4)}
    procs = {n: _start_replica(root, n, tokens_file) for n in ("r0", "r1")}
    learner = FleetStore(os.path.join(root, "learner"), chunk_len=5, n_chunks=1, gamma=0.99, task_ids=TASK_IDS,
                         table=InstructionTable(lambda texts: np.ones((len(texts), 4), np.float32), 4),
                         capacity=100_000, own_dataset=False)
    learner.rebuild()
    stop = threading.Event()
    tail = StoreTail(store)
    tail_thread = threading.Thread(target=tail.run, args=(learner.on_accept, stop, 0.05))
    results: dict[str, list] = {}
    errors: list[str] = []
    try:
        ports = {n: _address(root, n, p) for n, p in procs.items()}
        for port in ports.values():  # both answer before the robots start (a slow start is not the test)
            with LearnerClient(f"127.0.0.1:{port}", "robot-0", tokens["robot-0"]) as c:
                c.policy_version()
        target = ",".join(f"127.0.0.1:{ports[n]}" for n in ("r0", "r1"))
        tail_thread.start()
        episodes = {rid: [dataclasses.replace(e, robot_id=rid) for e in _eps(10 + i, 12)] for i, rid in enumerate(tokens)}

        def robot(rid: str) -> None:
            cfg = ClientConfig(max_attempts=30, backoff_max_s=1.0, upload_timeout_s=20.0)
            try:
                with LearnerClient(target, rid, tokens[rid], config=cfg) as client:
                    for ep in episodes[rid]:
                        results.setdefault(rid, []).append(client.upload_episode(ep))
                        time.sleep(0.05)
            except Exception as e:
                errors.append(f"{rid}: {e!r}")

        threads = [threading.Thread(target=robot, args=(rid,)) for rid in tokens]
        for t in threads:
            t.start()
        # Once both replicas have stored some (round-robin spreads the robots' uploads), r0 dies without a word.
        deadline = time.monotonic() + 120
        while {c.replica for _, c in iter_commits(store)} != {"r0", "r1"}:
            assert time.monotonic() < deadline and any(t.is_alive() for t in threads), "r0 never got an upload"
            time.sleep(0.02)
        os.kill(procs["r0"].pid, signal.SIGKILL)
        left_at_kill = 48 - sum(len(r) for r in results.values())
        for t in threads:
            t.join(timeout=300)
        assert not errors, errors
        sent = {ep.episode_id for eps in episodes.values() for ep in eps}
        assert sum(len(r) for r in results.values()) == len(sent) == 48
        deadline = time.monotonic() + 60
        while tail.delivered < len(sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        if tail_thread.is_alive():
            tail_thread.join(timeout=60)
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)
    commits = dict(iter_commits(store))
    assert set(commits) == sent  # every id committed once, by one replica
    assert {c.replica for c in commits.values()} == {"r0", "r1"} and left_at_kill > 0  # both stored; r0 died mid-run
    assert tail.delivered == len(learner) == len(sent) and tail.pending == 0
    assert {e.episode_id for e in learner.history()} == sent  # each once, in the learner's log and buffer
    assert learner.num_transitions() == sum(ep.num_steps for eps in episodes.values() for ep in eps)
    learner.close()
