"""What a robot pays for the bridge: the daemon process's resident memory and the policy's per-chunk latency
on one core (`make bench`, entry "bridge"; goals: RSS <= 500 MB, p99 <= 5 ms per chunk).

    python -m experiments.speed --only bridge           # writes the blob, runs this in a pinned process

Run in a process of its own, pinned to one CPU with one XLA thread (the embedded fleet's robot environment),
importing what the daemon imports and acting with the default-size policy through `Policy`, on the toy
robot's observations and with the instruction embeddings carried in the blob (no text encoder is loaded:
one that is asked to embed raises). RSS is the process's peak (VmHWM), after the daemon's imports and
after acting.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time

import numpy as np

import robot_bridge.daemon  # noqa: F401  (what the daemon process holds in memory)
from experiments.configs.multitask import get_config
from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data.normalize import compute_stats
from lwd_jax.fake import random_obs
from lwd_jax.policy import Policy, encode_policy
from robot_bridge import toy_robot


class _NoEncoder:
    def encode(self, texts):
        raise RuntimeError(f"bench_bridge: the policy tried to embed {texts}; the blob should carry them")


def _rss_mb() -> float:
    """Peak resident memory of this process image: VmHWM (ru_maxrss would carry the forking parent's peak
    across exec, on Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def toy_policy_blob(variant: str = "", version: int = 1, with_instructions: bool = True) -> bytes:
    """A policy of the `variant` size (random init) with the toy robot's wordings embedded (random 384-d vectors
    standing in for the text encoder's), or without them (an old-style blob)."""
    cfg = get_config(variant).agent
    rng = np.random.default_rng(0)
    obs = random_obs(rng, 64)
    stats = compute_stats({"state": obs["state"], "proprio": obs["proprio"]})
    lang = {w: rng.normal(size=384).astype(np.float32) for w in toy_robot.INSTRUCTIONS} if with_instructions else None
    params = policy_params(LWDAgent(cfg, mesh=None).init(0, random_obs(rng, 2)), "policy")
    return encode_policy(cfg, params, stats, version, "policy", instructions=lang)


def run(blob_path: str, chunks: int) -> dict[str, float]:
    """Loads the blob as a daemon does and acts `chunks` times; the blob is made by another process (the
    learner's work), so the peak RSS is the robot's alone."""
    rss_imports = _rss_mb()
    with open(blob_path, "rb") as f:
        blob = f.read()
    policy = Policy(blob, encoder=_NoEncoder())
    robot = toy_robot.PointReach()
    obs, info = robot.reset(toy_robot.TASK, 0)
    policy(obs, info["instruction"])  # compile
    times = []
    for i in range(chunks):
        obs, info = robot.reset(toy_robot.TASK, i)
        t0 = time.perf_counter()
        policy(obs, info["instruction"])
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"chunks": chunks, "blob_bytes": len(blob), "chunk_p50_ms": 1e3 * statistics.median(times),
            "chunk_p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))], "rss_after_imports_mb": rss_imports,
            "rss_peak_mb": _rss_mb(), "cpus": len(os.sched_getaffinity(0))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=500)
    ap.add_argument("--blob", required=True, help="a policy blob file (experiments.speed writes one)")
    args = ap.parse_args()
    print(json.dumps(run(args.blob, args.chunks)))


if __name__ == "__main__":
    main()
