"""The embedded simulated fleet: N bridge daemons as separate processes on this machine, over loopback gRPC.

Why real processes and real config files: this is exactly how a robot runs the bridge (one process per robot,
one TOML config, a token file), so the embedded fleet exercises the same code path, the same failure modes
(a daemon crash, a learner restart) and the same wire as a real fleet. Nothing is imported from
robot_bridge here; the daemon is started by module name.

Each robot gets `<root>/<robot_id>/`: robot.toml, token (0600), state/ (spool + episodes.jsonl) and
daemon.log. Robots are started with one XLA CPU thread each, so N robots plus the learner share a small
machine without oversubscribing it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lwd_jax.learner.auth import generate_token
from lwd_jax.sim.jobs import render_gl

# One XLA thread per robot: inference of one action chunk is small, and the learner needs the cores.
ROBOT_ENV = {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "MUJOCO_GL": "disable",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}


@dataclasses.dataclass(frozen=True)
class RobotSpec:
    robot_id: str
    tasks: tuple[str, ...]
    teleop: bool
    seed: int
    max_episodes: int


def plan_fleet(num_robots: int, tasks: list[str], fleet_episodes: int, teleop_robots: int, seed: int) -> list[RobotSpec]:
    """Splits the episode budget and the task list over the robots.

    Every robot runs every task in turn, each starting at a different task, so all tasks get fleet data from
    the first minutes; the first `teleop_robots` robots have a (simulated) human attendant.
    """
    if num_robots < 0:
        raise ValueError(f"config.online.num_robots: expected >= 0 (0: a real fleet only), got {num_robots}")
    if not 0 <= teleop_robots <= num_robots:
        raise ValueError(f"config.online.teleop_robots: expected in [0, {num_robots}], got {teleop_robots}")
    specs = []
    for i in range(num_robots):
        k = (i * len(tasks)) // num_robots
        share = fleet_episodes // num_robots + (1 if i < fleet_episodes % num_robots else 0) if fleet_episodes else 0
        specs.append(RobotSpec(f"robot-{i}", tuple(tasks[k:] + tasks[:k]), i < teleop_robots, seed * 1000 + i,
                               share if fleet_episodes else 0))
    return specs


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def write_robot_config(path: Path, values: dict[str, object]) -> None:
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()))


class LocalFleet:
    """Starts, watches and stops the embedded fleet's daemons."""

    def __init__(self, root: str, specs: list[RobotSpec], *, control_hz: float,
                 extra_config: dict[str, object] | None = None):
        self.root = Path(root)
        self.learner = ""
        self.specs = specs
        self.control_hz = control_hz
        self.extra = dict(extra_config or {})
        self.procs: dict[str, subprocess.Popen] = {}
        self.tokens: dict[str, str] = {}

    def make_tokens(self) -> dict[str, str]:
        """Each robot's token file (kept across restarts of the same run, as on a real robot); returns
        {robot_id: token} for the learner's auth."""
        for s in self.specs:
            d = self.root / s.robot_id
            d.mkdir(parents=True, exist_ok=True)
            token_file = d / "token"
            if not token_file.exists():
                token_file.touch(mode=0o600)
                token_file.write_text(generate_token())
            self.tokens[s.robot_id] = token_file.read_text().strip()
        return dict(self.tokens)

    def write_configs(self, learner: str, tls: dict[str, str] | None = None) -> None:
        """Every robot's robot.toml, pointing at `learner` (host:port), with the TLS keys `tls` when it serves TLS."""
        self.learner = learner
        for s in self.specs:
            d = self.root / s.robot_id
            token_file = d / "token"
            write_robot_config(d / "robot.toml", {
                "robot_id": s.robot_id, "learner": self.learner, "state_dir": str(d / "state"),
                "token_file": str(token_file), "tasks": list(s.tasks), "control_hz": self.control_hz,
                "teleop": s.teleop, "seed": s.seed, "max_episodes": s.max_episodes, **(tls or {}), **self.extra,
            })

    def start(self) -> None:
        env = {**os.environ, **ROBOT_ENV}
        if self.extra.get("render"):  # robots that render get a GL backend (lwd_jax/sim/jobs.py: render_gl)
            env["MUJOCO_GL"] = render_gl()
        for s in self.specs:
            d = self.root / s.robot_id
            log = open(d / "daemon.log", "ab")
            self.procs[s.robot_id] = subprocess.Popen(
                [sys.executable, "-m", "robot_bridge.daemon", f"--config={d / 'robot.toml'}"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd(),
            )
            log.close()

    def poll(self) -> dict[str, int | None]:
        """Exit codes (None while running)."""
        return {rid: p.poll() for rid, p in self.procs.items()}

    def all_exited(self) -> bool:
        """Every embedded daemon has exited; never true without embedded robots (a real fleet does not end)."""
        return bool(self.specs) and all(code is not None for code in self.poll().values())

    def failed(self) -> dict[str, int]:
        """Robots that exited with an error."""
        return {rid: code for rid, code in self.poll().items() if code not in (None, 0)}

    def stop(self, timeout_s: float = 60.0) -> dict[str, int | None]:
        """SIGTERM (finish/spool the current episode, flush the spool), then SIGKILL after `timeout_s`."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return self.poll()

    def episode_logs(self) -> dict[str, list[dict]]:
        """Each robot's episodes.jsonl (what the daemons themselves logged)."""
        out = {}
        for s in self.specs:
            path = self.root / s.robot_id / "state" / "episodes.jsonl"
            out[s.robot_id] = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return out

    def spooled(self) -> dict[str, int]:
        """Episodes still waiting in each robot's spool (0 after a clean drain)."""
        out = {}
        for s in self.specs:
            pending = self.root / s.robot_id / "state" / "spool" / "pending"
            out[s.robot_id] = sum(1 for p in pending.iterdir() if p.suffix == ".npz") if pending.exists() else 0
        return out
