"""The bridge daemon: one per robot. Runs the current policy, records every episode, ships it to the learner.

    python -m robot_bridge.daemon --config=/etc/lwd/robot-0.toml [--robot-id=robot-0] [--learner=host:port]

Threads (why: the robot must never wait on the network):
  main       episodes back to back: swap to the newest params *between* episodes, reset, run the policy
             at the control rate with human takeover, write the episode atomically to the spool
  uploader   drains the spool oldest first; an episode is deleted only after the learner's ack; learner
             outages are retried with jittered exponential backoff, while the robot keeps working
  watcher    WatchPolicy stream (re-opened when it ends) -> the newest published version
  heartbeat  every `heartbeat_s`: state, episodes done, running version, spool backlog

Shutdown (SIGTERM from systemd, or SIGINT): the episode in progress ends at the next tick and is spooled as a
time-out (never lost), the uploader gets `shutdown_drain_s` to flush the spool, and whatever is left stays
on disk for the next start.

Exit codes (the systemd unit's `RestartPreventExitStatus=2 3`: restarting fixes neither), one line on stderr:
  0  clean stop (SIGTERM, or max_episodes done)
  2  bad config: unreadable/invalid TOML, an unknown key, an unknown task, a backend that does not load
  3  credentials: the token file is missing/unreadable, or the learner refused them before any policy ran
  4  no policy was published within `policy_wait_s`
  1  anything else (a traceback)

Config: a TOML file (one per robot; see robot_bridge/deploy/robot.example.toml). Keys are the fields of
`DaemonConfig`; the flags --robot-id / --learner / --max-episodes override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from fleet_api.tasks import load_task_file
from fleet_api.wire import ID_PATTERN, is_loopback, learner_hosts
from lwd_jax.policy import Policy
from robot_bridge.client import (
    AuthenticationFailed,
    ClientConfig,
    ClientTLS,
    FleetError,
    LearnerClient,
    LearnerUnavailable,
    PolicyNotPublished,
)
from robot_bridge.robot import Robot, load_backend
from robot_bridge.runner import run_episode
from robot_bridge.spool import Spool

log = logging.getLogger("robot_bridge.daemon")

EXIT_OK, EXIT_CONFIG, EXIT_AUTH, EXIT_NO_POLICY = 0, 2, 3, 4


class CredentialsMissing(RuntimeError):
    """The token file named by the config cannot be read (exit 3)."""


@dataclasses.dataclass(frozen=True)
class DaemonConfig:
    """One robot's daemon settings (TOML keys of the same names)."""

    robot_id: str
    learner: str  # host:port of the learner's gRPC service
    state_dir: str  # spool/ and episodes.jsonl live here; must survive reboots
    tasks: tuple[str, ...]  # tasks this robot runs, in turn
    token: str = ""  # bearer token (or token_file; prefer the file, readable only by the daemon's user)
    token_file: str = ""
    backend: str = "sim"  # "sim" or "package.module:RobotClass" (real hardware adapter)
    task_file: str = ""  # TOML task file (fleet_api/tasks.py): wordings, budgets, sub-goals of the robot's tasks
    control_hz: float = 20.0  # ticks per second; 0 = as fast as possible (simulation only)
    teleop: bool = False  # a (simulated) human watches this robot and takes over when needed
    render: bool = False  # sim backend: camera images in the observations (for image policies; MUJOCO_GL=egl)
    seed: int = 0  # scene seeds of this robot's episodes derive from it
    max_episodes: int = 0  # stop after this many episodes (0: run until stopped)
    heartbeat_s: float = 5.0
    shutdown_drain_s: float = 10.0  # on SIGTERM: time the uploader gets to flush the spool
    max_backoff_s: float = 30.0  # ceiling of the uploader's / watcher's reconnect backoff
    policy_wait_s: float = 0.0  # wait at most this long for a first policy (0: forever)
    tls_root_ca: str = ""  # PEM CA of the learner's certificate: enables TLS
    tls_cert: str = ""  # robot's certificate and key: enables mTLS
    tls_key: str = ""
    tls_target_name: str = ""  # when the learner's certificate names another host
    insecure: bool = False  # allow plaintext to a learner that is not on loopback (tokens in the clear)
    upload_timeout_s: float = 60.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.robot_id):
            raise ValueError(f"field 'robot_id': expected {ID_PATTERN.pattern}, got {self.robot_id!r}")
        if ":" not in self.learner:
            raise ValueError(f"field 'learner': expected host:port, got {self.learner!r}")
        if not self.tasks or not all(isinstance(t, str) and t for t in self.tasks):
            raise ValueError(f"field 'tasks': expected a non-empty list of task names, got {self.tasks!r}")
        if self.control_hz < 0:
            raise ValueError(f"field 'control_hz': expected >= 0, got {self.control_hz}")
        if self.max_episodes < 0:
            raise ValueError(f"field 'max_episodes': expected >= 0, got {self.max_episodes}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("fields 'tls_cert' and 'tls_key': set both (mTLS) or neither")
        if self.tls_cert and not self.tls_root_ca:
            raise ValueError("field 'tls_root_ca': required when 'tls_cert' is set")
        if not self.tls_root_ca and not self.insecure and not all(is_loopback(h) for h in learner_hosts(self.learner)):
            raise ValueError(f"field 'tls_root_ca': required for a learner off this machine ({self.learner!r}): "
                             "without TLS the robot's token crosses the network in the clear (set insecure = true "
                             "to accept that, e.g. on an isolated network)")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> DaemonConfig:
        """Reads a TOML config; unknown keys are errors naming them (a typo must not be ignored)."""
        with open(path, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"robot config {path}: not valid TOML: {e}") from e
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(raw, where=f"robot config {path}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "robot config") -> DaemonConfig:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
        missing = sorted(n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in raw)
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        values = dict(raw)
        if "tasks" in values:
            values["tasks"] = tuple(values["tasks"]) if isinstance(values["tasks"], list | tuple) else values["tasks"]
        for name, value in values.items():
            want = fields[name].type
            ok = {
                "str": isinstance(value, str), "float": isinstance(value, int | float) and not isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool), "bool": isinstance(value, bool),
            }.get(str(want), True)
            if not ok:
                raise ValueError(f"{where}: field '{name}' expected {want}, got {value!r}")
        try:
            return cls(**values)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None

    def read_token(self) -> str | None:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError as e:
                raise CredentialsMissing(f"field 'token_file': cannot read {self.token_file!r}: {e.strerror}") from None
        return self.token or None


def robot_episode_seed(robot_seed: int, index: int) -> int:
    """Scene seed of a robot's `index`-th episode: distinct across robots and restarts (index persists)."""
    return (int(robot_seed) * 1_000_003 + int(index)) % (2**31 - 1)


class BridgeDaemon:
    """The daemon's state and threads (see the module docstring). `run()` returns the exit code."""

    def __init__(self, config: DaemonConfig, robot: Robot | None = None, client: LearnerClient | None = None):
        self.config = config
        self.stop_event = threading.Event()  # stop running episodes (SIGTERM)
        self._net_stop = threading.Event()  # stop network retries (after the final drain)
        self._wake_uploader = threading.Event()
        self.robot = robot or load_backend(config.backend, **self._backend_kwargs())
        if config.task_file:  # tasks as data: the adapter's default task_info and instructions read them
            self.robot.task_specs = load_task_file(config.task_file)
        for task in config.tasks:  # an unknown task fails here (exit 2), not at its first episode
            try:
                self.robot.task_info(task)
            except KeyError as e:
                raise ValueError(f"field 'tasks': {e.args[0] if e.args else task}") from None
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(state / "spool", embodiment=self.robot.embodiment)
        self.episode_log = state / "episodes.jsonl"
        self.episodes_done = self._count_logged()
        self.client = client or self._make_client()
        self.policy: Any = None
        self.version = -1
        self.latest_version = -1
        self.state = "starting"
        self.auth_failed = False
        self.policy_timed_out = False
        self._rng = random.Random(config.seed)
        self._threads: list[threading.Thread] = []

    def _backend_kwargs(self) -> dict[str, Any]:
        if self.config.backend != "sim":
            return {}
        return {"teleop": self.config.teleop, "tasks": list(self.config.tasks), "render": self.config.render}

    def _make_client(self) -> LearnerClient:
        c = self.config
        tls = None
        if c.tls_root_ca:
            try:
                tls = ClientTLS.from_files(c.tls_root_ca, c.tls_cert or None, c.tls_key or None, c.tls_target_name or None)
            except OSError as e:
                raise CredentialsMissing(f"TLS file {e.filename!r}: {e.strerror}") from None
        cc = ClientConfig(upload_timeout_s=c.upload_timeout_s, backoff_max_s=c.max_backoff_s)
        return LearnerClient(c.learner, c.robot_id, c.read_token(), tls=tls, config=cc, stop=self._net_stop)

    def _count_logged(self) -> int:
        if not self.episode_log.exists():
            return 0
        with open(self.episode_log, "rb") as f:
            return sum(1 for _ in f)

    # ------------------------------------------------------------------ background threads

    def _backoff(self, attempt: int) -> float:
        return min(self.config.max_backoff_s, 0.5 * 2**attempt) * (0.5 + 0.5 * self._rng.random())

    def _uploader(self) -> None:
        """Drains the spool whenever woken (or every second); backs off while the learner is away."""
        failures = 0
        while not self._net_stop.is_set():
            self._wake_uploader.wait(1.0)
            self._wake_uploader.clear()
            if self._net_stop.is_set():
                return
            if not len(self.spool):
                continue
            try:
                report = self.client.drain_spool(self.spool)
                failures = 0
                for eid, field, msg in report.rejected:
                    log.error("learner rejected episode %s (field %r): %s; kept in spool/rejected", eid, field, msg)
            except AuthenticationFailed as e:
                self.auth_failed = True
                log.error("learner refused this robot's credentials: %s; episodes stay spooled", e)
                failures += 1
                self._net_stop.wait(self.config.max_backoff_s)
            except (LearnerUnavailable, FleetError) as e:
                failures += 1
                delay = self._backoff(failures)
                log.warning("upload paused (%s); %d spooled; retrying in %.1f s", e.code.name if e.code else e, len(self.spool), delay)
                self._net_stop.wait(delay)

    def _watcher(self) -> None:
        """Follows WatchPolicy, re-opening it when the learner ends it; records the newest version."""
        failures = 0
        while not self._net_stop.is_set():
            try:
                for v in self.client.watch_policy(self.latest_version, timeout_s=60.0):
                    self.latest_version = max(self.latest_version, v)
                    failures = 0
                    if self._net_stop.is_set():
                        return
                failures = 0
                self._net_stop.wait(0.1)
            except FleetError as e:
                failures += 1
                if isinstance(e, AuthenticationFailed):
                    self.auth_failed = True
                self._net_stop.wait(self._backoff(failures))

    def _heartbeat(self) -> None:
        while not self._net_stop.wait(self.config.heartbeat_s):
            try:
                self.client.heartbeat(self.state, self.episodes_done, self.version, len(self.spool))
            except FleetError as e:
                log.debug("heartbeat failed: %s", e)

    def _start_threads(self) -> None:
        for fn in (self._uploader, self._watcher, self._heartbeat):
            t = threading.Thread(target=fn, name=f"bridge-{fn.__name__.strip('_')}", daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ policy

    def _load_policy(self) -> bool:
        """Fetches and installs the newest params; False (old policy kept) on any failure."""

        try:
            blob = self.client.fetch_policy_blob()
        except PolicyNotPublished:
            return False
        except FleetError as e:
            log.warning("policy download failed (%s); keeping version %d", e, self.version)
            return False
        try:
            policy = Policy(blob.data, seed=robot_episode_seed(self.config.seed, 10_000_019 + blob.version))
            why = self.robot.embodiment.mismatch(policy.embodiment, with_image=policy.needs_image)
            if why:  # never drive a robot with a policy made for another body
                raise ValueError(f"the policy is for embodiment {policy.embodiment.describe()}, this robot is "
                                 f"{self.robot.embodiment.describe()}: {why}")
            self._warm_up(policy)
        except Exception as e:  # a blob that passed its checksum but does not decode: keep driving the old one
            log.error("policy version %d could not be loaded (%s: %s); keeping version %d",
                      blob.version, type(e).__name__, e, self.version)
            return False
        self.policy, self.version = policy, blob.version
        self.latest_version = max(self.latest_version, blob.version)
        log.info("running policy version %d (%d bytes, sha256 %s...)", blob.version, len(blob.data), blob.sha256[:12])
        return True

    def _warm_up(self, policy: Any) -> None:
        """Compiles the sampler before the episode starts, so the first tick does not overrun."""

        body = self.robot.embodiment
        obs = {"state": np.zeros(body.state_dim, np.float32), "state_mask": np.ones(body.state_dim, bool),
               "proprio": np.zeros(body.proprio_dim, np.float32)}
        if policy.needs_image:  # an image policy (its robot renders or has a camera)
            obs["image"] = np.zeros(body.image_shape, np.uint8)
        wordings = [w for t in self.config.tasks for w in self.robot.instructions(t)]
        policy.prepare(wordings)
        policy(obs, wordings[0] if wordings else "warm up")

    def _ensure_policy(self) -> bool:
        """Between episodes: swap to a newer version if one was announced; wait for the first one."""
        if self.policy is not None and self.latest_version <= self.version:
            return True
        if self.policy is not None:
            self._load_policy()
            return True
        self.state = "waiting_for_policy"
        deadline = time.monotonic() + self.config.policy_wait_s if self.config.policy_wait_s else None
        attempt = 0
        while not self.stop_event.is_set():
            if self._load_policy():
                return True
            if self.auth_failed:
                return False
            if deadline is not None and time.monotonic() > deadline:
                log.error("no policy published within policy_wait_s=%.0f s", self.config.policy_wait_s)
                self.policy_timed_out = True
                return False
            attempt += 1
            self.stop_event.wait(min(2.0, self._backoff(attempt)))
        return False

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        """Runs episodes until stopped or `max_episodes`; returns the exit code."""
        c = self.config
        log.info("bridge %s -> %s: tasks %s at %.0f Hz, teleop=%s, %d episodes spooled from before",
                 c.robot_id, c.learner, list(c.tasks), c.control_hz, c.teleop, len(self.spool))
        self._start_threads()
        self._wake_uploader.set()  # episodes left from a previous run go first
        try:
            while not self.stop_event.is_set():
                if c.max_episodes and self.episodes_done >= c.max_episodes:
                    break
                if not self._ensure_policy():
                    break
                self._one_episode()
        finally:
            self._shutdown()
        if self.auth_failed and self.policy is None:
            return EXIT_AUTH
        return EXIT_NO_POLICY if self.policy_timed_out else EXIT_OK

    def _one_episode(self) -> None:
        c = self.config
        task = c.tasks[self.episodes_done % len(c.tasks)]
        seed = robot_episode_seed(c.seed, self.episodes_done)
        self.state = "running"
        out = run_episode(self.robot, self.policy, task, seed=seed, robot_id=c.robot_id, policy_version=self.version,
                          control_hz=c.control_hz, stop=self.stop_event)
        ep = out.episode
        self.spool.put(ep)  # durable before anything else happens to it
        self._wake_uploader.set()
        self.episodes_done += 1
        record = {
            "episode_id": ep.episode_id, "index": self.episodes_done - 1, "task": task, "seed": seed,
            "success": bool(ep.success), "steps": ep.num_steps, "cycle_time_s": round(out.cycle_time_s, 3),
            "wall_s": round(out.wall_s, 3), "policy_version": self.version,
            "subgoals": f"{int(ep.subgoals[-1])}/{ep.num_subgoals}", "intervention_steps": int(ep.intervention.sum()),
            "overruns": out.overruns, "max_latency_ms": round(out.max_latency_s * 1e3, 2), "stopped": out.stopped,
        }
        with open(self.episode_log, "a") as f:
            f.write(json.dumps(record) + "\n")
        log.info("episode %d %s %s: %s in %d steps (%.1f s robot time, %.1f s wall), v%d, %s sub-goals, %d human steps%s",
                 record["index"], task, ep.episode_id[:8], "SUCCESS" if ep.success else "failure", ep.num_steps,
                 out.cycle_time_s, out.wall_s, self.version, record["subgoals"], record["intervention_steps"],
                 " (stopped early)" if out.stopped else "")

    def _shutdown(self) -> None:
        """Flushes the spool within `shutdown_drain_s`; whatever is left waits on disk for the next start."""
        self.state = "stopping"
        deadline = time.monotonic() + self.config.shutdown_drain_s
        while len(self.spool) and time.monotonic() < deadline and not self.auth_failed:
            self._wake_uploader.set()
            time.sleep(0.1)
        left = len(self.spool)
        try:
            self.client.heartbeat("stopped", self.episodes_done, self.version, left)
        except FleetError:
            pass
        self._net_stop.set()
        self._wake_uploader.set()
        for t in self._threads:
            t.join(timeout=5.0)
        self.client.close()
        self.robot.close()
        log.info("bridge %s stopped: %d episodes done, %d still spooled", self.config.robot_id, self.episodes_done, left)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m robot_bridge.daemon", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="robot config TOML file")
    p.add_argument("--robot-id", dest="robot_id", help="overrides the file's robot_id")
    p.add_argument("--learner", help="overrides the file's learner host:port")
    p.add_argument("--max-episodes", dest="max_episodes", type=int, help="overrides the file's max_episodes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = DaemonConfig.from_file(args.config, robot_id=args.robot_id, learner=args.learner,
                                        max_episodes=args.max_episodes)
    except (OSError, ValueError) as e:
        print(f"robot_bridge.daemon: {e}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=config.log_level, stream=sys.stderr,
                        format=f"%(asctime)s {config.robot_id} %(levelname)s %(message)s")
    os.environ.setdefault("MUJOCO_GL", "disable")
    try:
        daemon = BridgeDaemon(config)
    except CredentialsMissing as e:
        print(f"robot_bridge.daemon: robot config {args.config}: {e}", file=sys.stderr)
        return EXIT_AUTH
    except (ValueError, ImportError) as e:  # unknown task, a backend that is not a Robot or does not import
        print(f"robot_bridge.daemon: robot config {args.config}: {e}", file=sys.stderr)
        return EXIT_CONFIG

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing the current episode, then stopping", signal.Signals(signum).name)
        daemon.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
