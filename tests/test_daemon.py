"""The bridge daemon: config errors, the episode runner on the simulated robot, and real daemon processes
against a real learner service (RLDS-backed fleet store) over loopback: learner killed and restarted while
the robot keeps working, and SIGTERM in the middle of an episode."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fleet_api.schema import STATE_DIM
from lwd_jax.data.rlds_reader import read_episodes
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.local_fleet import ROBOT_ENV, write_robot_config
from lwd_jax.learner.service import FleetServicer, PolicyStore, serve
from lwd_jax.sim.tasks import TASKS, task_names
from robot_bridge.daemon import DaemonConfig
from robot_bridge.robot import load_backend
from robot_bridge.runner import run_episode
from robot_bridge.sim_robot import SimRobot

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-robot-0"


# ------------------------------------------------------------------------------------------ config


def _cfg(**kw):
    base = {"robot_id": "robot-0", "learner": "127.0.0.1:1", "state_dir": "/tmp/x", "tasks": ["cube_pick_place"]}
    return DaemonConfig.from_dict({**base, **kw})


def test_config_errors_name_the_key(tmp_path):
    assert _cfg().control_hz == 20.0
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['contrl_hz'\]"):
        _cfg(contrl_hz=10)
    with pytest.raises(ValueError, match="robot_id"):
        _cfg(robot_id="robot 0!")
    with pytest.raises(ValueError, match="control_hz"):
        _cfg(control_hz="fast")
    with pytest.raises(ValueError, match="tasks"):
        _cfg(tasks=[])
    with pytest.raises(ValueError, match="tls_key"):
        _cfg(tls_cert="c.pem")
    with pytest.raises(ValueError, match="tls_root_ca.*in the clear"):  # plaintext off this machine: refused
        _cfg(learner="learner.example.org:50051")
    assert _cfg(learner="learner.example.org:50051", insecure=True).insecure  # unless said so
    assert _cfg(learner="[::1]:50051").learner == "[::1]:50051"
    with pytest.raises(ValueError, match=r"missing key\(s\) \['learner'\]"):
        DaemonConfig.from_dict({"robot_id": "r", "state_dir": "d", "tasks": ["cube_pick_place"]})
    bad = tmp_path / "r.toml"
    bad.write_text("robot_id = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        DaemonConfig.from_file(bad)
    with pytest.raises(ValueError, match="backend"):
        load_backend("no_colon_here")
    with pytest.raises(ValueError, match="unknown task"):
        SimRobot(tasks=["no_such_task"])


# ------------------------------------------------------------------------------------------ runner


def test_runner_flags_human_steps_and_stop_spools_a_partial_episode():
    robot = SimRobot(teleop=True)
    still = lambda obs, instr: np.zeros((4, 5), np.float32)  # a policy that never moves: the human must step in
    out = run_episode(robot, still, "cube_pick_place", seed=3, robot_id="robot-0", policy_version=7, control_hz=0)
    ep = out.episode
    assert ep.intervention.any() and not ep.intervention[:50].any()  # patience first, then takeover
    assert ep.source == "intervention" and ep.policy_version == 7 and ep.robot_id == "robot-0"
    assert ep.num_steps == len(ep.reward) == len(ep.observation["state"]) - 1
    assert out.cycle_time_s == pytest.approx(ep.num_steps / 20.0)

    stop = threading.Event()
    calls = []

    def stopping(obs, instr):
        calls.append(instr)
        stop.set()  # SIGTERM arrives during the first chunk
        return np.zeros((4, 5), np.float32)

    out = run_episode(SimRobot(), stopping, "cube_pick_place", seed=3, robot_id="robot-0", policy_version=7,
                      control_hz=0, stop=stop)
    assert out.stopped and out.episode.num_steps == 1 and not out.episode.terminal and not out.episode.success
    assert calls[0] in TASKS["cube_pick_place"].instructions


def test_runner_names_a_wrongly_shaped_policy_output():
    flat = lambda obs, instr: np.zeros(10, np.float32)  # two actions run together: never silently reshaped
    with pytest.raises(ValueError, match=r"robot 'robot-0' task 'cube_pick_place': policy must return \[5\] or \[H, 5\], got \(10,\)"):
        run_episode(SimRobot(), flat, "cube_pick_place", seed=0, robot_id="robot-0", policy_version=0, control_hz=0)


def test_runner_paces_at_the_control_rate():
    robot = SimRobot()
    n = {"calls": 0}
    stop = threading.Event()

    def act(obs, instr):
        n["calls"] += 1
        if n["calls"] == 6:  # stop during tick 26 (the 6th chunk's first): 26 ticks at 50 Hz = 0.52 s
            stop.set()
        return np.zeros((5, 5), np.float32)

    out = run_episode(robot, act, "cube_pick_place", seed=0, robot_id="r", policy_version=0, control_hz=50, stop=stop)
    assert out.episode.num_steps == 26 and out.stopped
    assert 0.45 <= out.wall_s <= 2.0


# ------------------------------------------------------------------------------------------ processes


@pytest.fixture(scope="module")
def policy_blob():
    from experiments.configs.multitask import get_config
    from lwd_jax.agent import LWDAgent, policy_params
    from lwd_jax.data.normalize import compute_stats
    from lwd_jax.policy import encode_policy

    cfg = get_config("smoke").agent
    agent = LWDAgent(cfg, mesh=None)
    rng = np.random.default_rng(0)
    example = {"state": np.zeros((2, STATE_DIM), np.float32), "state_mask": np.ones((2, STATE_DIM), bool),
               "proprio": np.zeros((2, 20), np.float32), "lang": np.zeros((2, 384), np.float32)}
    state = agent.init(0, example)
    stats = compute_stats({"state": rng.normal(size=(64, STATE_DIM)).astype(np.float32),
                           "proprio": rng.normal(size=(64, 20)).astype(np.float32)})
    return lambda version: encode_policy(cfg, policy_params(state, "policy"), stats, version=version, kind="policy")


class Learner:
    """A real learner front: FleetServicer + RLDS FleetStore + auth + params, on a loopback port."""

    def __init__(self, root: Path, blob: bytes, version: int, port: int = 0):
        from lwd_jax.data.batching import InstructionTable

        task_ids = {t: i for i, t in enumerate(task_names())}
        table = InstructionTable(lambda xs: np.zeros((len(xs), 8), np.float32), 8)
        self.store = FleetStore(str(root / "rlds"), chunk_len=5, n_chunks=1, gamma=0.99, task_ids=task_ids,
                                table=table, capacity=100_000, durable=False)
        seen = self.store.rebuild()
        self.policies = PolicyStore()
        self.policies.publish(version, blob)
        servicer = FleetServicer(persist=self.store.persist, on_accept=self.store.on_accept, known_tasks=task_ids,
                                 params_provider=self.policies, auth=TokenAuth.from_plain_tokens({"robot-0": TOKEN}),
                                 seen_episode_ids=seen, watch_poll_s=0.05)
        self.server = serve(servicer, host="127.0.0.1", port=port)
        self.port = self.server.port

    def stop(self):
        self.server.stop(grace=0)
        self.store.close()


def start_daemon(root: Path, port: int, **cfg) -> subprocess.Popen:
    (root / "token").write_text(TOKEN)
    values = {"robot_id": "robot-0", "learner": f"127.0.0.1:{port}", "state_dir": str(root / "robot"),
              "token_file": str(root / "token"), "tasks": ["cube_pick_place"], "control_hz": 0.0,
              "max_backoff_s": 0.5, "heartbeat_s": 0.5, **cfg}
    write_robot_config(root / "robot.toml", values)
    return subprocess.Popen([sys.executable, "-m", "robot_bridge.daemon", f"--config={root / 'robot.toml'}"],
                            cwd=ROOT, env={**os.environ, **ROBOT_ENV}, stdout=open(root / "daemon.log", "wb"),
                            stderr=subprocess.STDOUT)


def robot_log(root: Path) -> list[dict]:
    path = root / "robot" / "episodes.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def wait_for(pred, timeout: float, what: str, root: Path):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; daemon log:\n{(root / 'daemon.log').read_text()[-3000:]}")
        time.sleep(0.1)


def test_daemon_keeps_episodes_across_a_learner_restart_and_lands_each_once(tmp_path, policy_blob):
    learner = Learner(tmp_path, policy_blob(1), 1)
    port = learner.port
    proc = start_daemon(tmp_path, port, max_episodes=4)
    try:
        wait_for(lambda: len(learner.store) >= 1, 120, "the first upload", tmp_path)
        learner.stop()  # the learner dies; the robot keeps working and spooling
        wait_for(lambda: len(robot_log(tmp_path)) >= 3, 60, "episodes recorded while the learner is down", tmp_path)
        assert len(list((tmp_path / "robot" / "spool" / "pending").iterdir())) >= 1
        learner = Learner(tmp_path, policy_blob(2), 2, port=port)  # restarted: buffer and dedupe rebuilt from disk
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        learner.stop()
    ids = [r["episode_id"] for r in robot_log(tmp_path)]
    stored = [ep.episode_id for ep in read_episodes(tmp_path / "rlds")]
    assert len(ids) == 4 and sorted(stored) == sorted(ids)  # all of them, each exactly once
    assert not list((tmp_path / "robot" / "spool" / "pending").iterdir())
    assert {r["policy_version"] for r in robot_log(tmp_path)} <= {1, 2}


def test_sigterm_mid_episode_spools_and_uploads_the_partial_episode(tmp_path, policy_blob):
    learner = Learner(tmp_path, policy_blob(5), 5)
    # A long task at the real 20 Hz: the first episode would take 40 s.
    proc = start_daemon(tmp_path, learner.port, tasks=["scene_rearrange"], control_hz=20.0)
    try:
        wait_for(lambda: b"running policy version 5" in (tmp_path / "daemon.log").read_bytes(), 120, "the policy", tmp_path)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        log = robot_log(tmp_path)
        assert len(log) == 1 and log[0]["stopped"] and 0 < log[0]["steps"] < TASKS["scene_rearrange"].step_budget
        eps = learner.store.snapshot()
        assert [e.episode_id for e in eps] == [log[0]["episode_id"]] and not eps[0].success
    finally:
        if proc.poll() is None:
            proc.kill()
        learner.stop()
