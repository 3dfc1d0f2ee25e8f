"""The robot's durable spool: atomic writes, order, re-open after a kill, quarantine of corrupt files."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fleet_api.schema import ACTION_DIM, PROPRIO_DIM, STATE_DIM, Episode, SchemaError
from robot_bridge.spool import PENDING, QUARANTINE, REJECTED, TMP, Spool, decode_episode, encode_episode

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]


def make_episode(T: int = 40, seed: int = 0, task: str = "cube") -> Episode:
    """A synthetic episode that passes `validate_episode`."""
    rng = np.random.default_rng(seed)
    return Episode(
        observation={
            "state": rng.standard_normal((T + 1, STATE_DIM)).astype(np.float32),
            "state_mask": rng.random((T + 1, STATE_DIM)) < 0.5,
            "proprio": rng.standard_normal((T + 1, PROPRIO_DIM)).astype(np.float32),
        },
        action=rng.uniform(-1, 1, (T, ACTION_DIM)).astype(np.float32),
        reward=rng.standard_normal(T).astype(np.float32),
        intervention=rng.random(T) < 0.3,
        subgoals=np.zeros(T + 1, np.int32),
        terminal=False,
        language_instruction="put the cube in the drawer",
        task=task,
        robot_id="robot-0",
        policy_version=2,
        source="intervention",
    )


def same(a: Episode, b: Episode) -> bool:
    arrays = lambda e: {**{f"o/{k}": v for k, v in e.observation.items()}, "a": e.action, "r": e.reward,  # noqa: E731
                        "i": e.intervention, "s": e.subgoals}
    aa, bb = arrays(a), arrays(b)
    return (
        aa.keys() == bb.keys()
        and all(np.array_equal(aa[k], bb[k]) and aa[k].dtype == bb[k].dtype for k in aa)
        and (a.episode_id, a.task, a.robot_id, a.source, a.policy_version, a.terminal, a.success,
             a.language_instruction, a.num_subgoals)
        == (b.episode_id, b.task, b.robot_id, b.source, b.policy_version, b.terminal, b.success,
            b.language_instruction, b.num_subgoals)
    )


def test_encode_decode_round_trip_without_pickle():
    ep = make_episode()
    data = encode_episode(ep)
    assert same(decode_episode(data), ep)
    # A file carrying an object array would need pickle to load; the spool refuses it.
    import io

    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(b"{}", np.uint8), action=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        decode_episode(buf.getvalue())


def test_put_is_atomic_ordered_and_survives_reopen(tmp_path):
    spool = Spool(tmp_path)
    eps = [make_episode(seed=i) for i in range(5)]
    entries = [spool.put(ep) for ep in eps]
    assert [e.episode_id for e in spool.pending()] == [ep.episode_id for ep in eps]  # oldest first
    assert list((tmp_path / TMP).iterdir()) == []  # no temporary files left behind
    assert spool.put(eps[2]) == entries[2] and len(spool) == 5  # same id twice: stored once

    reopened = Spool(tmp_path)
    loaded = list(reopened.iter_pending())
    assert [e.episode_id for e, _ in loaded] == [ep.episode_id for ep in eps]
    assert all(same(got, want) for (_, got), want in zip(loaded, eps, strict=True))

    reopened.ack(loaded[0][0])
    reopened.ack(loaded[0][0])  # acking twice is harmless
    assert [e.episode_id for e in Spool(tmp_path).pending()] == [ep.episode_id for ep in eps[1:]]


def test_put_validates_and_writes_nothing_on_a_bad_episode(tmp_path):
    spool = Spool(tmp_path)
    bad = make_episode()
    bad.reward = bad.reward.astype(np.float64)
    with pytest.raises(SchemaError, match="'reward'"):
        spool.put(bad)
    bad_id = make_episode()
    bad_id.episode_id = "../escape"
    with pytest.raises(ValueError, match="'episode_id'"):
        spool.put(bad_id)
    assert len(spool) == 0 and list((tmp_path / TMP).iterdir()) == []


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "bad_meta", "wrong_id"])
def test_corrupt_file_is_quarantined_and_good_ones_kept(tmp_path, caplog, damage):
    spool = Spool(tmp_path)
    eps = [make_episode(seed=i) for i in range(3)]
    entries = [spool.put(ep) for ep in eps]
    victim = entries[1].path
    raw = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        victim.write_bytes(os.urandom(len(raw)))
    elif damage == "empty":
        victim.write_bytes(b"")
    elif damage == "bad_meta":
        other = make_episode(seed=1)
        other.episode_id = eps[1].episode_id
        victim.write_bytes(encode_episode(other).replace(b'"spool_format": 1', b'"spool_format": 9'))
    else:
        victim.write_bytes(encode_episode(eps[0]))  # the content names another episode id
    with caplog.at_level(logging.ERROR, logger="robot_bridge.spool"):
        loaded = list(Spool(tmp_path).iter_pending())
    assert [e.episode_id for e, _ in loaded] == [eps[0].episode_id, eps[2].episode_id]
    assert same(loaded[0][1], eps[0]) and same(loaded[1][1], eps[2])
    quarantined = sorted(p.name for p in (tmp_path / QUARANTINE).iterdir())
    assert quarantined == [victim.name, victim.name + ".reason.txt"]
    assert any("quarantine" in r.getMessage() for r in caplog.records)
    assert not victim.exists()


def test_stray_files_are_quarantined_not_deleted(tmp_path):
    spool = Spool(tmp_path)
    good = spool.put(make_episode())
    (tmp_path / PENDING / "notes.txt").write_text("hello")
    # A partial write left by a process that no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = tmp_path / TMP / f"abc.{dead.pid}.123.npz.partial"
    partial.write_bytes(b"half an episode")
    # A partial write of a live process (this one) is left alone.
    mine = tmp_path / TMP / f"def.{os.getpid()}.456.npz.partial"
    mine.write_bytes(b"being written")
    spool = Spool(tmp_path)
    assert [e.episode_id for e in spool.pending()] == [good.episode_id]
    names = {p.name for p in (tmp_path / QUARANTINE).iterdir()}
    assert {"notes.txt", partial.name} <= names and mine.exists()


def test_reject_moves_aside_with_reason(tmp_path):
    spool = Spool(tmp_path)
    entry = spool.put(make_episode())
    dest = spool.reject(entry, "field 'task' names an unknown task")
    assert dest is not None and dest.parent.name == REJECTED and len(spool) == 0
    assert "unknown task" in dest.with_name(dest.name + ".reason.txt").read_text()


def test_spool_survives_sigkill_mid_writing(tmp_path):
    """A writer killed at a random moment leaves only complete, loadable episodes in pending/."""
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_spool import make_episode
        from robot_bridge.spool import Spool
        spool = Spool({str(tmp_path)!r})
        print("ready", flush=True)
        i = 0
        while True:
            ep = make_episode(T=400, seed=i)
            ep.episode_id = f"{{i:032x}}"
            spool.put(ep)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().strip() == b"ready"
    deadline = time.monotonic() + 20
    while len(list((tmp_path / PENDING).iterdir())) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    spool = Spool(tmp_path)
    entries = spool.pending()
    assert len(entries) >= 5
    loaded = list(spool.iter_pending())
    assert len(loaded) == len(entries)  # nothing in pending/ was partial
    for i, (_, ep) in enumerate(loaded):
        want = make_episode(T=400, seed=i)
        want.episode_id = f"{i:032x}"
        assert same(ep, want)
    assert list((tmp_path / TMP).iterdir()) == []  # the dead writer's partial file was moved aside
