"""A restarted fleet store (issue 16): the fleet log is its index, so a restart reads only the episodes the
buffers can still hold, and ends exactly where a full replay of the dataset ends: the same buffer rows,
ring cursor, sizes and totals, the same dedupe table, the same log; episodes committed after the last log
line (a crash between commit and log) and a torn last line are caught up; a log that does not agree with
the dataset is replaced by the full replay."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from lwd_jax.data.batching import InstructionTable
from lwd_jax.learner.fleet_store import FleetStore
from tests.rlds_fixtures import make_episode

TASK = "cube_pick_place"


def _kw(capacity: int, keep: str = "all") -> dict:
    table = InstructionTable(lambda texts: np.ones((len(texts), 4), np.float32), 4)
    return dict(chunk_len=3, n_chunks=1, gamma=0.99, task_ids={TASK: 0}, table=table, capacity=capacity,
                durable=False, keep=keep)


def _episodes(n: int) -> list:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):  # every third episode has a human takeover (whole human chunks), the rest none
        steps = int(rng.integers(8, 20))
        human = np.zeros(steps, bool)
        if i % 3 == 0:
            human[2:9] = True
        out.append(make_episode(rng, steps, task=TASK, intervention=human))
    return out


def _fill(root: str, eps: list, **kw) -> None:
    store = FleetStore(os.path.join(root, "rlds"), **kw)
    for ep in eps:
        store.persist(ep)
        store.on_accept(ep)
    store.close()


def _state(store: FleetStore) -> dict:
    """Everything a restart must restore: both buffers' layouts and the log's records (minus wall clocks)."""
    def buf(b):
        return {"size": len(b), "cursor": b._cursor, "added": b.total_added,
                **{k: v[: len(b)].copy() for k, v in b._cols.items()}}

    log = [{k: v for k, v in vars(e).items() if k != "accepted_at"} for e in store.history()]
    return {"buffer": buf(store.buffer), "human": buf(store.human), "log": log, "count": len(store),
            "steps": store.robot_steps(), "recent": [e.order for e in store.snapshot()]}


def _assert_same(a: dict, b: dict) -> None:
    assert a["log"] == b["log"] and a["count"] == b["count"] and a["steps"] == b["steps"] and a["recent"] == b["recent"]
    for name in ("buffer", "human"):
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            np.testing.assert_array_equal(a[name][k], b[name][k], err_msg=f"{name}/{k}")


def _restart(root: str, **kw) -> tuple[FleetStore, dict]:
    store = FleetStore(os.path.join(root, "rlds"), **kw)
    seen = store.rebuild()
    return store, seen


@pytest.mark.parametrize("keep", ["all", "human"])
def test_restart_reads_only_what_the_buffers_hold_and_ends_as_a_full_replay(tmp_path, keep):
    eps = _episodes(30)
    kw = _kw(capacity=60, keep=keep)  # ~4 episodes' worth: most of the 30 are evicted already
    _fill(str(tmp_path / "a"), eps, **kw)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "rlds.episodes.jsonl")  # no log: the full replay

    fast, seen_fast = _restart(str(tmp_path / "a"), **kw)
    full, seen_full = _restart(str(tmp_path / "b"), **kw)
    assert fast.rebuild_stats["mode"] == "log" and full.rebuild_stats["mode"] == "full replay"
    assert fast.rebuild_stats["episodes_read"] < 20 and full.rebuild_stats["episodes_read"] == 30
    assert seen_fast == seen_full and list(seen_fast) == [ep.episode_id for ep in eps]
    _assert_same(_state(fast), _state(full))
    # and the next episode lands alike in both
    extra = make_episode(np.random.default_rng(99), 12, task=TASK)
    for store in (fast, full):
        store.persist(extra)
        store.on_accept(extra)
    _assert_same(_state(fast), _state(full))
    fast.close()
    full.close()


def test_late_episodes_and_a_torn_line_are_caught_up(tmp_path):
    eps = _episodes(12)
    kw = _kw(capacity=1000)  # everything fits: every episode is read either way
    _fill(str(tmp_path / "a"), eps, **kw)
    log = tmp_path / "a" / "rlds.episodes.jsonl"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:8]) + lines[8][: len(lines[8]) // 2])  # 3 lines lost, the 9th torn mid-write
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    os.remove(tmp_path / "b" / "rlds.episodes.jsonl")

    fast, seen_fast = _restart(str(tmp_path / "a"), **kw)
    full, seen_full = _restart(str(tmp_path / "b"), **kw)
    assert fast.rebuild_stats["mode"] == "log" and fast.rebuild_stats["late_episodes"] == 4
    assert seen_fast == seen_full
    _assert_same(_state(fast), _state(full))
    assert len(log.read_text().splitlines()) == 12  # the log is whole again
    fast.close()
    full.close()


def test_a_log_that_disagrees_with_the_dataset_is_replaced_by_the_full_replay(tmp_path):
    eps = _episodes(6)
    kw = _kw(capacity=1000)
    _fill(str(tmp_path / "a"), eps, **kw)
    log = tmp_path / "a" / "rlds.episodes.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    records[2]["shard"] = 5  # another history than the dataset's
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    store, seen = _restart(str(tmp_path / "a"), **kw)
    assert store.rebuild_stats["mode"] == "full replay" and list(seen) == [ep.episode_id for ep in eps]
    assert [e.shard for e in store.history()] == list(range(6))  # rewritten from the dataset
    store.close()


def test_dedupe_index_keeps_ram_bounded_answers_old_ids_and_is_checked_at_restart(tmp_path):
    """The servicer's dedupe table (issue 16: it held every acknowledged id in RAM, ~190 B each, for ever) keeps
    only a window in RAM, yet an id far outside the window is still a duplicate with its content and
    ALREADY_EXISTS with other content, over real gRPC; a restart keeps an index that agrees with the store and
    refills one that lost its last inserts (a crash: the index is written without fsync)."""
    import dataclasses
    import sqlite3

    import grpc

    from fleet_api.wire import episode_digest
    from lwd_jax.learner.service import FleetServicer, serve
    from robot_bridge.client import ClientConfig, EpisodeRejected, LearnerClient

    eps = _episodes(20)
    kw = dict(_kw(capacity=100), acked_window=4)
    root = str(tmp_path / "rlds")
    store = FleetStore(root, **kw)
    index = store.rebuild()
    servicer = FleetServicer(persist=store.persist, on_accept=store.on_accept, known_tasks={TASK: 0},
                             max_steps=100, seen_episode_ids=index)
    server = serve(servicer, host="127.0.0.1")
    try:
        with LearnerClient(f"127.0.0.1:{server.port}", eps[0].robot_id, None,
                           config=ClientConfig(max_attempts=1, upload_timeout_s=10.0)) as client:
            for ep in eps:
                assert not client.upload_episode(ep).duplicate
            assert index.ram_entries() == 4 and len(index) == 20  # RAM holds the window; the file holds all
            assert client.upload_episode(eps[0]).duplicate  # 16 ids older than the window
            other = dataclasses.replace(eps[0], reward=eps[0].reward + 1.0)
            with pytest.raises(EpisodeRejected) as e:
                client.upload_episode(other)
            assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
            assert episode_digest(eps[0]) in str(e.value) and episode_digest(other) in str(e.value)
    finally:
        server.stop(0)
        store.close()
    assert store.writer.num_episodes == 20
    expected = {ep.episode_id: episode_digest(ep) for ep in eps}

    again, seen = _restart(str(tmp_path), **kw)
    assert again.rebuild_stats["acked_index"] == "kept" and dict(seen.items()) == expected
    assert list(seen) == [ep.episode_id for ep in eps] and seen.ram_entries() == 0
    again.close()
    with sqlite3.connect(again.acked_path) as db:  # a crash lost the index's last two inserts
        db.execute("DELETE FROM acked WHERE n >= 18")
    third, seen = _restart(str(tmp_path), **kw)
    assert third.rebuild_stats["acked_index"] == "refilled" and dict(seen.items()) == expected
    third.close()
