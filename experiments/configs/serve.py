"""A learner that a real fleet connects to (`make serve`, `python -m experiments.serve`): the main job's
stages (BC pretrain -> offline DIVL + QAM -> online), but the online stage serves robots on other machines
and runs until stopped.

    python -m lwd_jax.learner.auth add --tokens fleet/tokens.json robot-0 --out robot-0.token
    python -m experiments.serve --config=experiments/configs/serve.py \
        --config.online.tokens_file=fleet/tokens.json \
        --config.online.tls_cert=certs/learner.pem --config.online.tls_key=certs/learner.key

Why these defaults: bound on every interface at the port the sample robot TOML names (50051); no embedded
simulated robots (online.num_robots, set it > 0 to mix them in); learner updates paced to the robot steps
delivered (utd 0.5: a learner never trains far ahead of its data); it waits for robots as long as it
takes (a real fleet can be away for hours) and ends on SIGTERM with its checkpoint, last policy and fleet
store on disk; the same command resumes. The variant "smoke" is the tiny one the tests run.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import multitask

DEFAULT_PORT = 50051
WAIT_FOREVER_S = 365 * 24 * 3600.0


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    if variant not in ("", "smoke"):
        raise ValueError(f"serve config: unknown variant {variant!r}; expected '' or 'smoke'")
    c = multitask.get_config("smoke" if variant == "smoke" else "")
    c.workdir = "runs/serve" if variant == "" else "runs/serve_smoke"
    c.online.host = "[::]"
    c.online.port = DEFAULT_PORT
    c.online.num_robots = 0
    c.online.teleop_robots = 0
    c.online.fleet_episodes = 0
    c.online.until_stopped = True
    c.online.pacing = "utd"
    c.online.utd_ratio = 0.5
    c.online.warmup_episodes = 1
    c.online.warmup_timeout_s = WAIT_FOREVER_S
    c.online.publish_every = 200 if variant == "" else 2
    if variant == "":
        c.eval.every = 10_000  # a simulator evaluation pauses the learner ~1 min: rarer than the main job's
    return c
