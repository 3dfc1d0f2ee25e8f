"""A learner a real fleet can connect to, end to end with real processes on loopback, as an operator runs it:
certificates (`lwd_jax.learner.certs`), robot credentials (`lwd_jax.learner.auth add`), the learner with no
embedded robots and TLS on (`experiments.serve`), two bridge daemons started separately from their own TOML
files, `robot_bridge.fleet status`; then a revoked robot is refused from then on without a restart, a
plaintext client is refused, and SIGTERM stops the learner with exit 0 and its checkpoint and fleet store
on disk. Also: the exit codes each entry point gives a supervisor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lwd_jax.data.rlds_reader import read_episodes
from lwd_jax.learner import certs
from lwd_jax.learner.auth import TokenAuth, add_robot, hash_token, remove_robot
from lwd_jax.learner.local_fleet import ROBOT_ENV, write_robot_config
from robot_bridge.client import AuthenticationFailed, ClientConfig, ClientTLS, LearnerClient, LearnerUnavailable

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, **ROBOT_ENV}
ONE_TRY = ClientConfig(max_attempts=1, heartbeat_attempts=1, call_timeout_s=5.0, backoff_initial_s=0.05)


def _py(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout, **kw)


def _wait(cond, timeout_s: float, what: str, procs: dict[str, subprocess.Popen] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        for name, p in (procs or {}).items():
            if p.poll() is not None and p.returncode != 0:
                raise AssertionError(f"{name} exited {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_operator_workflow_tls_fleet_revocation_and_sigterm(smoke_dataset, tmp_path):
    data_cfg, _ = smoke_dataset
    tasks = data_cfg.tasks.split(",")
    cert_dir, run_dir = tmp_path / "certs", tmp_path / "run"
    tokens = tmp_path / "tokens.json"
    # 1. certificates and credentials, with the operator's commands
    assert certs.main(["init", "--out", str(cert_dir), "--host", "learner.test"]) == 0
    for rid in ("robot-0", "robot-1", "operator"):
        out = _py("-m", "lwd_jax.learner.auth", "add", "--tokens", str(tokens), rid, "--out", str(tmp_path / f"{rid}.token"))
        assert out.returncode == 0, out.stderr
    assert oct((tmp_path / "robot-0.token").stat().st_mode & 0o777) == "0o600"
    assert "sha256:" in tokens.read_text() and (tmp_path / "robot-0.token").read_text().strip() not in tokens.read_text()

    # 2. the learner: no embedded robots, TLS on, tokens from the operator's file
    log = open(tmp_path / "learner.log", "w")
    learner = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", "--config=experiments/configs/serve.py:smoke",
         f"--config.workdir={run_dir}", f"--config.data.offline_dir={data_cfg.out_dir}", f"--config.tasks={data_cfg.tasks}",
         "--config.online.host=127.0.0.1", "--config.online.port=0", f"--config.online.tokens_file={tokens}",
         f"--config.online.tls_cert={cert_dir / 'learner.pem'}", f"--config.online.tls_key={cert_dir / 'learner.key'}"],
        cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    daemons: dict[str, subprocess.Popen] = {}
    try:
        address_file = run_dir / "fleet" / "learner.json"
        _wait(address_file.exists, 420, "the learner to serve", {"learner": learner})
        addr = json.loads(address_file.read_text())
        assert addr["tls"] and not addr["mtls"]
        target = f"127.0.0.1:{addr['port']}"

        # 3. two daemons, each from its own TOML file, as separate processes
        for i, rid in enumerate(("robot-0", "robot-1")):
            toml = tmp_path / f"{rid}.toml"
            write_robot_config(toml, {
                "robot_id": rid, "learner": target, "state_dir": str(tmp_path / rid), "tasks": tasks[i:] + tasks[:i],
                "token_file": str(tmp_path / f"{rid}.token"), "tls_root_ca": str(cert_dir / "ca.pem"),
                "control_hz": 0.0, "max_episodes": 2, "seed": 7 + i, "heartbeat_s": 1.0, "max_backoff_s": 2.0,
            })
            dlog = open(tmp_path / f"{rid}.log", "w")
            daemons[rid] = subprocess.Popen([sys.executable, "-m", "robot_bridge.daemon", f"--config={toml}"],
                                            cwd=ROOT, env=ENV, stdout=dlog, stderr=subprocess.STDOUT)
            dlog.close()
        _wait(lambda: all(p.poll() is not None for p in daemons.values()), 300, "both daemons' 2 episodes",
              {"learner": learner})
        assert {rid: p.returncode for rid, p in daemons.items()} == {"robot-0": 0, "robot-1": 0}

        # 4. fleet status for people, with the operator's credentials; the flywheel turned: the learner trained
        # on the fleet's episodes and published newer versions than the one the robots started with
        o_end = 4 + 0 + 4  # smoke: pretrain + critic warm-up + offline updates
        def status_as(rid: str) -> list[str]:
            return ["-m", "robot_bridge.fleet", "status", f"--learner={target}", f"--robot-id={rid}",
                    f"--token-file={tmp_path / f'{rid}.token'}", f"--tls-root-ca={cert_dir / 'ca.pem'}", "--json"]

        status_cmd = status_as("operator")

        def status() -> dict:
            out = _py(*status_cmd, timeout=60)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)

        _wait(lambda: status()["policy_version"] > o_end, 180, "a policy trained on fleet episodes", {"learner": learner})
        st = status()
        assert st["episodes_accepted"] == 4 and "operator" not in st["robots"]  # status records no heartbeat
        assert {rid: r["episodes_accepted"] for rid, r in st["robots"].items()} == {"robot-0": 2, "robot-1": 2}
        assert set(st["tasks"]) == set(tasks) and all(t["window_episodes"] == 2 for t in st["tasks"].values())
        text = _py(*status_cmd[:-1], timeout=60)
        assert text.returncode == 0 and "robot-0" in text.stdout and tasks[0] in text.stdout

        # 5. a revoked robot is refused from then on, without a restart; the others are not
        tls = ClientTLS.from_files(str(cert_dir / "ca.pem"))
        token1 = (tmp_path / "robot-1.token").read_text().strip()
        with LearnerClient(target, "robot-1", token1, tls=tls, config=ONE_TRY) as robot1:
            robot1.heartbeat("idle")
            assert _py("-m", "lwd_jax.learner.auth", "remove", "--tokens", str(tokens), "robot-1").returncode == 0
            with pytest.raises(AuthenticationFailed):
                robot1.heartbeat("idle")
        refused = _py(*status_as("robot-1"), timeout=60)
        assert refused.returncode == 3, refused.stderr
        assert "refused" in refused.stderr and "Traceback" not in refused.stderr
        assert status()["episodes_accepted"] == 4

        # 6. a plaintext client is refused by the TLS port
        token0 = (tmp_path / "robot-0.token").read_text().strip()
        with LearnerClient(target, "robot-0", token0, config=ONE_TRY) as plain, pytest.raises(LearnerUnavailable):
            plain.heartbeat("idle")

        # 7. SIGTERM: exit 0 with the checkpoint, the last policy and the fleet store on disk
        learner.send_signal(signal.SIGTERM)
        assert learner.wait(180) == 0
    finally:
        for p in (*daemons.values(), learner):
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
    out = (tmp_path / "learner.log").read_text()
    assert "tls=True" in out and "stopped at step" in out, out[-3000:]
    steps = [int(d) for d in os.listdir(run_dir / "checkpoints") if d.isdigit()]
    assert max(steps) > o_end
    fleet = read_episodes(run_dir / "fleet" / "rlds")
    assert len(fleet) == 4 and {ep.robot_id for ep in fleet} == {"robot-0", "robot-1"}
    assert max(ep.policy_version for ep in fleet) >= o_end


# ------------------------------------------------------------------------------------- credentials


def test_watching_auth_reloads_adds_revocations_and_survives_a_bad_edit(tmp_path):
    path = tmp_path / "tokens.json"
    tok = add_robot(path, "robot-0")
    auth = TokenAuth.watching(path, {"sim-0": "embedded-token"})

    def md(rid: str, t: str) -> list[tuple[str, str]]:
        return [("robot-id", rid), ("authorization", f"Bearer {t}")]

    assert auth.authenticate(md("robot-0", tok)) == "robot-0"
    assert auth.authenticate(md("sim-0", "embedded-token")) == "sim-0"  # in memory only, never in the file
    assert "sim-0" not in path.read_text()
    tok2 = add_robot(path, "robot-2")
    assert auth.authenticate(md("robot-2", tok2)) == "robot-2"  # added without a restart
    remove_robot(path, "robot-0")
    with pytest.raises(Exception, match="invalid token"):
        auth.authenticate(md("robot-0", tok))
    path.write_text("{not json")  # a bad edit keeps the table it replaced
    assert auth.authenticate(md("robot-2", tok2)) == "robot-2"
    assert auth.robot_ids() == ["robot-2", "sim-0"]
    path.write_text(json.dumps({"robot-3": hash_token("t3")}))
    assert auth.authenticate(md("robot-3", "t3")) == "robot-3"
    with pytest.raises(KeyError, match="no robot 'robot-9'"):
        remove_robot(path, "robot-9")


def test_certs_tool_refuses_to_replace_a_ca(tmp_path):
    assert certs.main(["init", "--out", str(tmp_path)]) == 0
    assert certs.main(["init", "--out", str(tmp_path)]) == 2
    assert certs.main(["robot", "--out", str(tmp_path), "robot 0!"]) == 2
    assert certs.main(["robot", "--out", str(tmp_path), "robot-0"]) == 0
    assert (tmp_path / "robot-0.pem").exists() and oct((tmp_path / "robot-0.key").stat().st_mode & 0o777) == "0o600"


# ------------------------------------------------------------------------------------- exit codes


def test_exit_codes_a_supervisor_can_act_on(smoke_dataset, tmp_path):
    """One line on stderr, no traceback, and the code the issue's table gives (README, Run your own fleet)."""
    data_cfg, _ = smoke_dataset
    train = ["-m", "experiments.train", "--config=experiments/configs/multitask.py:smoke"]
    cases = {
        "unknown config field": (train + ["--config.agent.actor_lrr=1e-3"], 2, "actor_lrr"),
        "no such config file": (["-m", "experiments.train", "--config=experiments/configs/nope.py"], 2, "nope.py"),
        "missing dataset": (train + [f"--config.data.offline_dir={tmp_path / 'none'}"], 2, "make data"),
        "unknown task": (train + ["--config.tasks=cube_stak"], 2, "cube_stak"),
        "bad run directory": (train + [f"--config.data.offline_dir={data_cfg.out_dir}",
                                       f"--config.workdir={Path(data_cfg.out_dir) / 'dataset_info.json' / 'x'}"], 2, "config.workdir"),
        "eval: no such run": (["-m", "experiments.eval", "--config=experiments/configs/eval/all.py",
                               f"--config.run={tmp_path / 'norun'}"], 2, "make train"),
        "serve: no tokens file": (["-m", "experiments.serve", "--config=experiments/configs/serve.py:smoke",
                                   f"--config.data.offline_dir={data_cfg.out_dir}"], 3, "tokens_file"),
        "serve: unreadable TLS key": (["-m", "experiments.serve", "--config=experiments/configs/serve.py:smoke",
                                       f"--config.data.offline_dir={data_cfg.out_dir}",
                                       f"--config.online.tokens_file={tmp_path / 'tokens.json'}",
                                       "--config.online.tls_cert=/nonexistent.pem", "--config.online.tls_key=/nonexistent.key"],
                                      3, "tls_cert"),
    }
    add_robot(tmp_path / "tokens.json", "robot-0")
    toml = tmp_path / "robot.toml"
    base = {"robot_id": "robot-0", "learner": "127.0.0.1:9", "state_dir": str(tmp_path / "state"),
            "tasks": ["cube_pick_place"], "token": "x"}
    daemon = ["-m", "robot_bridge.daemon", f"--config={toml}"]
    daemon_cases = {
        "daemon: unknown task": ({**base, "tasks": ["cube_stak"]}, 2, "cube_stak"),
        "daemon: backend does not load": ({**base, "backend": "no_such_pkg.mod:Robot"}, 2, "no_such_pkg"),
        "daemon: token file missing": ({**{k: v for k, v in base.items() if k != "token"},
                                        "token_file": str(tmp_path / "absent.token")}, 3, "token_file"),
        "daemon: no policy within policy_wait_s": ({**base, "policy_wait_s": 1.0, "max_backoff_s": 0.5}, 4, "policy_wait_s"),
    }
    for name, (args, code, needle) in cases.items():
        out = _py(*args, timeout=180)
        assert (out.returncode, needle in out.stderr, "Traceback" in out.stderr) == (code, True, False), (name, out.stderr[-2000:])
    for name, (values, code, needle) in daemon_cases.items():
        write_robot_config(toml, values)
        out = _py(*daemon, timeout=120)
        assert out.returncode == code and needle in out.stderr and "Traceback" not in out.stderr, (name, out.stderr[-2000:])
    make = subprocess.run(["make", "train", "EXP=bogus"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert make.returncode == 2 and "unknown EXP='bogus'" in make.stderr

