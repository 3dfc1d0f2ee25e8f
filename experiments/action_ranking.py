"""Does the critic rank actions *within* a state the way real outcomes do? Branch the simulator and see.

    python -m experiments.action_ranking --run runs/flywheel/seed0 --episodes 4 --candidates 8

Why: every extraction (QAM, best-of-N, AWR) acts on the critic's ranking of actions of one state, but the
critic probe's AUROC measures ranking *across* states (successful vs failed episodes). This experiment
measures the within-state ranking against ground truth. For scenes of a validation seed range (never the
test scenes), it runs the BC flow (SFT) from reset, and at branch points (chunk boundaries at given
fractions of the episode) draws N candidate chunks from the BC flow, scores each with the run's target
critic Q̄, and then executes each candidate from the *same* simulator state (reset with the scene's seed
and replay of the recorded actions: the sim is deterministic given its seed) followed by the BC flow with
common random numbers, to the end of the episode. Reported: success of the Q̄-best candidate vs the mean
candidate vs the Q̄-worst one (what best-of-N acting gains in real outcomes), and the within-state rank
correlation of Q̄ with success over states whose candidates disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import jax
import numpy as np
from scipy.stats import spearmanr

from lwd_jax.algos import divl
from lwd_jax.learner.export import export_policy
from lwd_jax.methods import Nets
from lwd_jax.policy import Policy
from lwd_jax.sim.env import make_env
from lwd_jax.sim.recorder import record_episode
from lwd_jax.sim.tasks import parse_tasks

VALIDATION_SEED_BASE = 770_000  # scenes of their own: the test scenes use eval.seed (12345) * 1_000_003 + ...


class Scripted:
    """A policy that replays `prefix` actions one step at a time, then emits `chunk`, then acts as `then`."""

    def __init__(self, prefix: np.ndarray, chunk: np.ndarray | None, then: Any):
        self.queue: list[np.ndarray] = [a for a in prefix] + ([chunk] if chunk is not None else [])
        self.then = then

    def __call__(self, obs: dict[str, np.ndarray], instruction: str) -> np.ndarray:
        return self.queue.pop(0) if self.queue else self.then(obs, instruction)


def candidates(pol: Policy, obs: dict[str, np.ndarray], instruction: str, n: int, key: jax.Array
               ) -> tuple[np.ndarray, np.ndarray]:
    """N raw candidate chunks [N, H, A] of the BC flow at `obs` and their target-critic Q̄ [N]."""
    x = pol.stats.normalize_obs({k: np.repeat(np.asarray(v)[None], n, axis=0) for k, v in obs.items()})
    x["lang"] = pol._embed([instruction] * n)
    agent = pol.agent
    base = {"base": pol.params["base"]}
    a = agent.sample_actions(base, x, key)  # normalized [N, H, A]: N independent draws (no critic: N = 1 each)
    q = divl.target_q(Nets.apply(agent.critic_net), pol.params["critic_target"], x, a, agent.divl_cfg.target_agg)
    return pol.stats.unnormalize_action(np.asarray(a)), np.asarray(q)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run's workdir (its latest checkpoint is scored)")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: the run's)")
    ap.add_argument("--episodes", type=int, default=4, help="validation scenes per task")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--branch-at", default="0.25,0.5", help="fractions of the SFT episode's length")
    ap.add_argument("--out", default=None, help="JSON path (default: <run>/action_ranking.json)")
    args = ap.parse_args(argv)

    exported = export_policy(args.run, "best_of_n")
    pol = Policy(exported.blob, seed=0)
    sft = Policy(export_policy(args.run, "base").blob, seed=0)
    if args.tasks:
        tasks = parse_tasks(args.tasks, "--tasks")
    else:
        with open(os.path.join(args.run, "results.json")) as f:
            tasks = list(next(iter(json.load(f).values())))  # the tasks of the run's first evaluation
    fracs = [float(x) for x in args.branch_at.split(",")]
    h = pol.chunk_len
    rows, t0 = [], time.time()
    for ti, task in enumerate(tasks):
        env = make_env(task)
        for e in range(args.episodes):
            seed = VALIDATION_SEED_BASE + 1000 * ti + e
            sft.reseed(seed)
            ep = record_episode(task, sft, seed=seed, env=env, validate=False).episode
            length = len(ep.action)
            for frac in fracs:
                t = int(frac * length) // h * h
                if t <= 0 or t >= length - 1:
                    continue
                obs = {k: v[t] for k, v in ep.observation.items()}
                chunks, q = candidates(pol, obs, ep.language_instruction, args.candidates,
                                       jax.random.PRNGKey(seed * 10 + int(100 * frac)))
                outcomes = []
                for c in chunks:
                    sft.reseed(seed + 7)  # common random numbers: every candidate's continuation draws the same noise
                    branch = record_episode(task, Scripted(ep.action[:t], c, sft), seed=seed, env=env,
                                            instruction=ep.language_instruction, validate=False).episode
                    np.testing.assert_allclose(branch.observation["state"][t], obs["state"], atol=1e-5,
                                               err_msg="replay diverged: the simulator is not deterministic here")
                    outcomes.append(float(branch.success))
                rows.append({"task": task, "seed": seed, "t": t, "q": q.tolist(), "success": outcomes,
                             "sft_success": bool(ep.success)})
        print(f"{task}: {args.episodes} scenes, {time.time() - t0:.0f}s", flush=True)
    out = summarize(rows)
    out.update(run=args.run, step=exported.step, tasks=tasks, candidates=args.candidates, branch_at=fracs, rows=rows)
    path = args.out or os.path.join(args.run, "action_ranking.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}, indent=1), flush=True)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Success of the Q̄-best, mean and Q̄-worst candidate per branch state, pooled and per task, and the
    within-state Spearman correlation of Q̄ with success over states whose candidates disagree."""

    def stats(rs: list[dict[str, Any]]) -> dict[str, float]:
        best = [r["success"][int(np.argmax(r["q"]))] for r in rs]
        worst = [r["success"][int(np.argmin(r["q"]))] for r in rs]
        mean = [float(np.mean(r["success"])) for r in rs]
        mixed = [r for r in rs if 0 < np.mean(r["success"]) < 1]
        rho = [spearmanr(r["q"], r["success"]).statistic for r in mixed]
        return {"states": len(rs), "mixed_states": len(mixed), "best_q_success": float(np.mean(best)),
                "mean_candidate_success": float(np.mean(mean)), "worst_q_success": float(np.mean(worst)),
                "within_state_spearman": float(np.nanmean(rho)) if rho else float("nan")}

    out = {"pooled": stats(rows)} if rows else {}
    for task in dict.fromkeys(r["task"] for r in rows):
        out[task] = stats([r for r in rows if r["task"] == task])
    return out


if __name__ == "__main__":
    main()
