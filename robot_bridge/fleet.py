"""Fleet status for people: what the learner sees of every robot and every task, from any machine.

    python -m robot_bridge.fleet status --config=/etc/lwd/robot-0.toml          # a robot's own credentials
    python -m robot_bridge.fleet status --learner=learner.example.org:50051 --robot-id=operator \
        --token-file=operator.token --tls-root-ca=fleet-ca.pem [--window=50] [--json]

Why a robot-style credential: the learner has one kind of caller, a robot id with a bearer token (and a
client certificate under mTLS); an operator gets their own entry (`python -m lwd_jax.learner.auth add
--tokens tokens.json operator`) and can be revoked like any robot. The call is GetFleetStatus, which
records nothing (a heartbeat would make the operator look like a robot).

Output is bounded (`--max-robots` rows, then a count of the rest), so a large fleet does not flood a terminal.
Exit codes: 0 shown; 2 bad arguments or config; 3 credentials refused; 4 learner unreachable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tomllib
from typing import Any

from fleet_api.wire import fleet_status_to_dict
from robot_bridge.client import AuthenticationFailed, ClientConfig, ClientTLS, FleetError, LearnerClient

EXIT_OK, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE = 0, 2, 3, 4
# The connection settings a robot's TOML holds that this tool reads (the rest of the file is the daemon's).
CONNECTION_KEYS = ("learner", "robot_id", "token", "token_file", "tls_root_ca", "tls_cert", "tls_key", "tls_target_name")


def connection_settings(args: argparse.Namespace) -> dict[str, str]:
    """The robot TOML's connection keys, overridden by flags; raises ValueError naming what is missing."""
    values: dict[str, str] = {}
    if args.config:
        with open(args.config, "rb") as f:
            try:
                raw = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"robot config {args.config}: not valid TOML: {e}") from e
        values = {k: str(raw[k]) for k in CONNECTION_KEYS if raw.get(k)}
    values.update({k: v for k in CONNECTION_KEYS if (v := getattr(args, k, None))})
    for key in ("learner", "robot_id"):
        if not values.get(key):
            raise ValueError(f"'{key}' is not set: pass --config=<robot.toml> or --{key.replace('_', '-')}")
    if ":" not in values["learner"]:
        raise ValueError(f"'learner': expected host:port, got {values['learner']!r}")
    return values


def make_client(values: dict[str, str]) -> LearnerClient:
    token = values.get("token")
    if values.get("token_file"):
        with open(values["token_file"]) as fh:
            token = fh.read().strip()
    tls = None
    if values.get("tls_root_ca"):
        tls = ClientTLS.from_files(values["tls_root_ca"], values.get("tls_cert"), values.get("tls_key"),
                                   values.get("tls_target_name"))
    return LearnerClient(values["learner"], values["robot_id"], token, tls=tls,
                         config=ClientConfig(call_timeout_s=10.0, heartbeat_attempts=2))


def _rate(x: float) -> str:
    return "   -" if math.isnan(x) else f"{x:4.2f}"


def format_status(status: dict[str, Any], max_robots: int) -> str:
    """A fixed-width text view: the policy version, then one row per robot and one per task."""
    lines = [f"policy version {status['policy_version']}; {status['episodes_accepted']} episodes accepted; "
             f"rates over each robot's / task's last {status['window']} episodes"]
    robots = sorted(status["robots"].items())
    lines.append(f"{'robot':<20} {'state':<18} {'heartbeat':>9} {'version':>8} {'episodes':>8} {'spooled':>7} "
                 f"{'success':>7} {'human':>6}")
    for rid, r in robots[:max_robots]:
        beat = "never" if r["seconds_since_heartbeat"] < 0 else f"{r['seconds_since_heartbeat']:.0f}s ago"
        lines.append(f"{rid[:20]:<20} {r['state'][:18]:<18} {beat:>9} {r['policy_version']:>8} "
                     f"{r['episodes_accepted']:>8} {r['spool_pending']:>7} {_rate(r['success_rate']):>7} "
                     f"{_rate(r['intervention_rate']):>6}")
    if len(robots) > max_robots:
        lines.append(f"... and {len(robots) - max_robots} more robots (--max-robots, or --json for all)")
    lines.append(f"{'task':<32} {'episodes':>8} {'success':>7} {'human':>6} {'cycle steps':>11}")
    for name, t in sorted(status["tasks"].items()):
        cycle = "-" if math.isnan(t["mean_cycle_steps"]) else f"{t['mean_cycle_steps']:.0f}"
        lines.append(f"{name[:32]:<32} {t['episodes_accepted']:>8} {_rate(t['success_rate']):>7} "
                     f"{_rate(t['intervention_rate']):>6} {cycle:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m robot_bridge.fleet", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="per robot and per task: heartbeat, version, episodes, success, interventions")
    st.add_argument("--config", help="a robot TOML file (its learner address and credentials are used)")
    for key in CONNECTION_KEYS:
        st.add_argument(f"--{key.replace('_', '-')}", dest=key)
    st.add_argument("--window", type=int, default=0, help="trailing episodes per robot/task (0: learner default)")
    st.add_argument("--max-robots", type=int, default=50)
    st.add_argument("--json", action="store_true", help="the whole status as JSON")
    args = p.parse_args(argv)
    try:
        values = connection_settings(args)
        client = make_client(values)
    except (OSError, ValueError) as e:
        print(f"robot_bridge.fleet: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        status = fleet_status_to_dict(client.fleet_status(args.window))
    except AuthenticationFailed as e:
        print(f"robot_bridge.fleet: the learner refused these credentials ({e})", file=sys.stderr)
        return EXIT_AUTH
    except FleetError as e:
        code = EXIT_USAGE if e.code is not None and e.code.name == "INVALID_ARGUMENT" else EXIT_UNREACHABLE
        print(f"robot_bridge.fleet: {e}", file=sys.stderr)
        return code
    finally:
        client.close()
    print(json.dumps(status, indent=1) if args.json else format_status(status, args.max_robots))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
