"""Your robot, your tasks: the embodiment and the tasks as data, and the whole loop on a second body.

The second body is robot_bridge/toy_robot.py:Reach7 (7-d actions, state 16, proprio 8, chunks of 4), described
to the learner by experiments/robots/reach7.toml and its tasks by experiments/robots/reach7_tasks.toml. The loop
test runs what a user with such a robot runs: an RLDS dataset of the robot's episodes -> `experiments.serve`
(BC pretrain, offline RL, then serving) -> a bridge daemon process with that backend and task file -> uploads
-> a policy trained on them, picked up by the robot; a 5-d (simulated UR5e) episode sent to that learner is
refused for good, naming the embodiment."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fleet_api.embodiment import UR5E, Embodiment, EmbodimentError, load_embodiment
from fleet_api.schema import Episode, SchemaError, Source, validate_episode
from fleet_api.tasks import TaskFileError, load_task_file
from fleet_api.wire import PolicyBlob
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data.normalize import compute_stats
from lwd_jax.data.rlds_reader import RLDSReader
from lwd_jax.data.rlds_writer import RLDSWriter
from lwd_jax.fake import random_obs
from lwd_jax.learner.auth import add_robot
from lwd_jax.learner.local_fleet import ROBOT_ENV, write_robot_config
from lwd_jax.learner.task_catalog import load_catalog, parse_task_list
from lwd_jax.policy import Policy, encode_policy
from lwd_jax.sim.tasks import SUITE_TASK_FILE, TASKS
from robot_bridge.client import ClientConfig, EpisodeRejected, LearnerClient
from robot_bridge.daemon import BridgeDaemon, DaemonConfig
from robot_bridge.runner import run_episode
from robot_bridge.toy_robot import REACH7, PointReach, Reach7, reach7_expert

ROOT = Path(__file__).resolve().parents[1]
EMBODIMENT_FILE = ROOT / "experiments" / "robots" / "reach7.toml"
TASK_FILE = ROOT / "experiments" / "robots" / "reach7_tasks.toml"
ENV = {**os.environ, **ROBOT_ENV}


# ------------------------------------------------------------------------------------------ the specs as data
def test_embodiment_file_is_the_adapters_body_and_errors_name_the_key(tmp_path):
    assert load_embodiment(EMBODIMENT_FILE) == REACH7 and load_embodiment("") is UR5E
    assert Embodiment.from_dict(REACH7.to_dict()) == REACH7
    good = EMBODIMENT_FILE.read_text()
    for edit, named in (
        (good.replace("action_dim = 7", "action_dim = 0"), "field 'action_dim'"),
        (good.replace("action_low = -1.0", "action_low = [-1.0, -1.0]"), "field 'action_low'"),
        (good.replace("action_high = 1.0", "action_high = -2.0"), "field 'action_high' must exceed"),
        (good + "gripper = true\n", r"unknown key\(s\) \['gripper'\]"),
        (good.replace("state_dim = 16", ""), r"missing key\(s\) \['state_dim'\]"),
        (good.replace("control_hz = 10.0", "control_hz = -1"), "field 'control_hz'"),
        ("name = [", "not valid TOML"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(edit)
        with pytest.raises(EmbodimentError, match=named):
            load_embodiment(bad)
    with pytest.raises(EmbodimentError, match="neither a built-in"):
        load_embodiment(tmp_path / "absent.toml")


def test_task_files_and_the_catalog(tmp_path):
    specs = load_task_file(TASK_FILE)
    assert specs["reach_7d"].num_subgoals == 2 and specs["reach_7d_slow"].num_subgoals == 1  # success only
    assert not specs["reach_7d"].is_long and specs["reach_7d"].instruction == "move the arm to the target"
    catalog = load_catalog(str(TASK_FILE))
    assert set(TASKS) < set(catalog) and catalog["reach_7d"] == specs["reach_7d"]
    assert parse_task_list("all", catalog, str(TASK_FILE)) == ["reach_7d", "reach_7d_slow"]
    assert parse_task_list("all", load_catalog(), "") == sorted(TASKS)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['reach_9d'\]"):
        parse_task_list("reach_7d,reach_9d", catalog, str(TASK_FILE))
    for text, named in (
        ('[t]\ninstructions = ["go"]\n', r"\[t\] missing key 'step_budget'"),
        ('[t]\ninstructions = ["go"]\nstep_budget = 10\nbudget = 3\n', r"\[t\] unknown key\(s\) \['budget'\]"),
        ('[t]\ninstructions = "go"\nstep_budget = 10\n', r"\[t\] field 'instructions' expected a list"),
        ('[t]\ninstructions = []\nstep_budget = 10\n', "field 'instructions' expected a non-empty list"),
        ('[t]\ninstructions = ["go"]\nstep_budget = 0\n', "field 'step_budget' expected an int >= 1"),
        ('["bad name"]\ninstructions = ["go"]\nstep_budget = 10\n', "task name 'bad name'"),
        ("", "defines no task"),
    ):
        bad = tmp_path / "tasks.toml"
        bad.write_text(text)
        with pytest.raises(TaskFileError, match=named):
            load_task_file(bad)
    # a user's file may not silently redefine a simulated task
    clash = tmp_path / "clash.toml"
    clash.write_text('[cube_stack]\ninstructions = ["stack them"]\nstep_budget = 10\n')
    with pytest.raises(TaskFileError, match="redefines the simulated suite's task 'cube_stack'"):
        load_catalog(str(clash))
    # long by default from four sub-goals on
    four = tmp_path / "four.toml"
    four.write_text('[t]\ninstructions = ["go"]\nstep_budget = 10\nsubgoals = ["a", "b", "c", "d"]\n')
    assert load_task_file(four)["t"].is_long


def test_the_simulated_suite_reads_its_task_file():
    specs = load_task_file(SUITE_TASK_FILE)
    assert list(specs) == list(TASKS)
    for name, task in TASKS.items():
        s = specs[name]
        assert (task.instructions, task.step_budget, task.is_long) == (s.instructions, s.step_budget, s.is_long)
        assert tuple(g.name for g in task.subgoals) == s.subgoals and task.num_subgoals == s.num_subgoals


# ------------------------------------------------------------------------------------------ episodes of a body
def reach7_episode(seed: int, task: str = "reach_7d", noise: float = 0.0) -> Episode:
    """One episode of the 7-d robot driven by its scripted expert (what its offline dataset holds)."""
    robot = Reach7()
    robot.task_specs = load_task_file(TASK_FILE)
    rng = np.random.default_rng(seed)
    out = run_episode(robot, lambda obs, _: reach7_expert(obs, rng, noise), task, seed=seed, robot_id="reach7-gen",
                      policy_version=0, control_hz=0.0)
    return dataclasses.replace(out.episode, source=Source.DEMO.value)


def test_episodes_are_checked_against_their_embodiment():
    ep = reach7_episode(3)
    assert ep.action.shape[1] == 7 and ep.observation["state"].shape[1] == 16 and ep.success
    assert ep.subgoals[-1] == ep.num_subgoals == 2 and 0 < int(np.argmax(ep.subgoals >= 1)) < ep.num_steps
    validate_episode(ep, embodiment=REACH7)
    with pytest.raises(SchemaError, match=r"expected 5-d actions \(embodiment ur5e_manipspace"):
        validate_episode(ep, embodiment=UR5E)
    wide = dataclasses.replace(ep, action=ep.action.copy())
    wide.action[1, 6] = 1.5
    with pytest.raises(SchemaError, match=r"field 'action' expected values in \[-1, 1\] in dimension 6"):
        validate_episode(wide, embodiment=REACH7)
    slow = reach7_episode(4, "reach_7d_slow")
    assert slow.num_subgoals == 1 and slow.subgoals[-1] in (0, 1)


def reach7_blob(version: int = 1) -> bytes:
    """A random-init smoke-sized policy for the 7-d body (the real one is trained in the loop test)."""
    from experiments.configs.multitask import get_config

    cfg = get_config("smoke").agent
    cfg.action_dim, cfg.action_horizon = REACH7.action_dim, REACH7.chunk_len
    rng = np.random.default_rng(0)
    obs = {k: v[:, :REACH7.state_dim] if k.startswith("state") else v for k, v in random_obs(rng, 8).items()}
    obs["proprio"] = obs["proprio"][:, :REACH7.proprio_dim]
    params = policy_params(LWDAgent(cfg, mesh=None).init(0, obs), "policy")
    return encode_policy(cfg, params, compute_stats(obs, action_dim=REACH7.action_dim), version, "policy",
                         embodiment=REACH7)


def test_a_robot_refuses_a_policy_made_for_another_body(tmp_path):
    blob = reach7_blob()
    policy = Policy(blob)
    assert policy.embodiment == REACH7
    robot = Reach7()
    robot.task_specs = load_task_file(TASK_FILE)
    obs, info = robot.reset("reach_7d", 0)
    assert policy(obs, info["instruction"]).shape == (4, 7)
    assert "field 'action_dim' differs: 5 (ur5e_manipspace) vs 7 (toy_reach_7d)" in UR5E.mismatch(policy.embodiment)

    class OneBlob:  # the learner's answer, without a learner
        def fetch_policy_blob(self):
            return PolicyBlob.create(1, blob)

    config = DaemonConfig(robot_id="arm-0", learner="127.0.0.1:1", state_dir=str(tmp_path / "s"), tasks=("point_reach",))
    daemon = BridgeDaemon(config, robot=PointReach(), client=OneBlob())  # a 5-d robot
    assert not daemon._load_policy() and daemon.policy is None  # refused, never driven
    seven = BridgeDaemon(dataclasses.replace(config, tasks=("reach_7d",), task_file=str(TASK_FILE),
                                             state_dir=str(tmp_path / "s7")), robot=Reach7(), client=OneBlob())
    assert seven._load_policy() and seven.version == 1
    with pytest.raises(ValueError, match="unknown task 'cube_stack'"):
        BridgeDaemon(dataclasses.replace(config, tasks=("cube_stack",), task_file=str(TASK_FILE)), robot=Reach7(),
                     client=OneBlob())
    with pytest.raises(ValueError, match="not the embodiment"):
        from experiments.configs.multitask import get_config

        encode_policy(get_config("smoke").agent, {}, compute_stats(random_obs(np.random.default_rng(0), 4)), 1, "policy",
                      embodiment=REACH7)


# ------------------------------------------------------------------------------------------ the whole loop
def _wait(cond, timeout_s: float, what: str, procs: dict[str, subprocess.Popen], logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for name, p in procs.items():
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"{name} exited {p.returncode} while waiting for {what}:\n"
                                     f"{logs[name].read_text()[-4000:]}")
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {n}\n{p.read_text()[-3000:]}" for n, p in logs.items() if p.exists())
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")
        time.sleep(0.5)


def test_second_embodiment_whole_loop_offline_data_serve_daemon_new_version(tmp_path):
    # 1. the robot's offline dataset: its expert (noisy) on both tasks, in an RLDS dataset of its layout
    offline = tmp_path / "offline"
    with RLDSWriter(offline, durable=False, embodiment=REACH7) as writer:
        writer.write([reach7_episode(i, "reach_7d" if i % 3 else "reach_7d_slow", noise=0.5) for i in range(18)])
    assert {ep.action.shape[1] for ep in RLDSReader(offline, embodiment=REACH7).episodes()} == {7}
    with pytest.raises(Exception, match="at most 5 values per step"):  # a UR5e reader names the width
        RLDSReader(offline)

    # 2. the learner, as an operator starts it for their robot: embodiment and tasks from files
    run_dir, tokens = tmp_path / "run", tmp_path / "tokens.json"
    token = add_robot(tokens, "arm-0")
    (tmp_path / "arm-0.token").write_text(token)
    logs = {"learner": tmp_path / "learner.log", "daemon": tmp_path / "daemon.log"}
    learner = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", "--config=experiments/configs/serve.py:smoke",
         f"--config.workdir={run_dir}", f"--config.data.offline_dir={offline}", "--config.tasks=all",
         f"--config.embodiment={EMBODIMENT_FILE}", f"--config.task_file={TASK_FILE}",
         "--config.agent.action_dim=7", "--config.agent.action_horizon=4",
         "--config.online.host=127.0.0.1", "--config.online.port=0", f"--config.online.tokens_file={tokens}"],
        cwd=ROOT, env=ENV, stdout=open(logs["learner"], "w"), stderr=subprocess.STDOUT)
    procs = {"learner": learner}
    try:
        address = run_dir / "fleet" / "learner.json"
        _wait(address.exists, 420, "the learner to serve", procs, logs)
        target = f"127.0.0.1:{json.loads(address.read_text())['port']}"

        # 3. the robot's bridge daemon, a separate process: the 7-d backend, its tasks from the task file
        robot_toml = tmp_path / "arm-0.toml"
        write_robot_config(robot_toml, {
            "robot_id": "arm-0", "learner": target, "state_dir": str(tmp_path / "arm-0"),
            "tasks": ["reach_7d", "reach_7d_slow"], "token_file": str(tmp_path / "arm-0.token"),
            "backend": "robot_bridge.toy_robot:Reach7", "task_file": str(TASK_FILE), "control_hz": 20.0,
            "seed": 11, "heartbeat_s": 1.0, "max_backoff_s": 2.0,
        })
        procs["daemon"] = subprocess.Popen([sys.executable, "-m", "robot_bridge.daemon", f"--config={robot_toml}"],
                                           cwd=ROOT, env=ENV, stdout=open(logs["daemon"], "w"), stderr=subprocess.STDOUT)
        robot_log = tmp_path / "arm-0" / "episodes.jsonl"

        def versions() -> list[int]:
            return [json.loads(x)["policy_version"] for x in robot_log.read_text().splitlines()] if robot_log.exists() else []

        o_end = 4 + 0 + 4  # smoke: pretrain + critic warm-up + offline updates
        # 4. the flywheel turned for this body: the robot ran a policy the learner trained on its uploads
        _wait(lambda: any(v > o_end for v in versions()), 300, "the robot to run a policy trained on its episodes",
              procs, logs)
        assert min(versions()) == o_end  # it started with the offline policy

        # 5. an episode of another body (the simulated UR5e, 5-d) is refused for good, the embodiment named
        five = reach7_episode(5)
        five = dataclasses.replace(five, action=five.action[:, :5].copy(), robot_id="arm-0")
        with LearnerClient(target, "arm-0", token, config=ClientConfig(max_attempts=1, call_timeout_s=10.0)) as client:
            with pytest.raises(EpisodeRejected) as refused:
                client.upload_episode(five)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT and refused.value.field == "action"
        assert "toy_reach_7d (7-d actions" in str(refused.value)

        # 6. both stop cleanly; the fleet store holds the robot's episodes in its own layout
        for name in ("daemon", "learner"):
            procs[name].send_signal(signal.SIGTERM)
            assert procs[name].wait(timeout=180) == 0, logs[name].read_text()[-3000:]
        stored = list(RLDSReader(run_dir / "fleet" / "rlds", embodiment=REACH7).episodes())
        assert len(stored) >= len(versions()) - 1 and {ep.action.shape[1] for ep in stored} == {7}
        assert {ep.task: ep.num_subgoals for ep in stored} == {"reach_7d": 2, "reach_7d_slow": 1}
        assert "no simulator evaluation" in logs["learner"].read_text()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
