"""Is the critic learning? Its values on a fixed set of offline transitions against their Monte-Carlo returns.

Why this probe: losses say whether the critic fits its own bootstrapped targets, not whether the sparse
success reward has propagated back through the episodes. A critic that has learned ranks transitions of
successful episodes above those of failed ones and tracks the data's discounted return-to-go; a young one
does neither, and an extraction against it only chases its noise. Pure numpy: the learner feeds it
`LWDAgent.critic_values` on probe rows that hold the data's `mc_return` column.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from scipy.stats import rankdata

from lwd_jax.agent import LWDAgent, policy_params
from lwd_jax.data import batching
from lwd_jax.data.replay import TransitionBuffer
from lwd_jax.learner.metrics_log import MetricsLogger


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (no ranking information at all)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = a.std(), b.std()
    if len(a) < 2 or sa == 0 or sb == 0:
        return float("nan")
    return float(np.mean((a - a.mean()) * (b - b.mean())) / (sa * sb))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half (Mann-Whitney U / n+ n-).
    NaN without both classes."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(scores)  # average ranks: ties share the mean of their positions
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def probe_stats(q: np.ndarray, v: np.ndarray, mc_return: np.ndarray) -> dict[str, float]:
    """Critic-quality scalars of Q̄(s, a) [N] and E[V(s)] [N] against the data's return-to-go [N].

    With the sparse 0/1 success reward a transition has mc_return > 0 exactly when its episode succeeds, so
    `q_success_auroc` is how well Q̄ tells successful episodes' transitions from failed ones (0.5: not at all).
    """
    q, v, g = (np.asarray(x, np.float64) for x in (q, v, mc_return))
    success = g > 0
    out = {
        "q_mc_pearson": pearson(q, g),
        "q_mc_spearman": pearson(rankdata(q), rankdata(g)),
        "v_mc_pearson": pearson(v, g),
        "q_success_auroc": auroc(q, success),
        "q_mean": float(q.mean()),
        "mc_mean": float(g.mean()),
        "q_minus_mc_mean": float(np.mean(q - g)),
    }
    if success.any() and (~success).any():
        out["q_gap_success_minus_failure"] = float(q[success].mean() - q[~success].mean())
    return out


class CriticProbe:
    """`probe_stats` of the target critic on a fixed, task-balanced set of offline transitions, and how far
    the extraction moved the policy there (`extraction_stats`): logged as probe/* on the learner's log
    cadence and saved per stage in workdir/probe.json."""

    def __init__(self, cfg, agent: LWDAgent, offline: TransitionBuffer, stats, table, write: bool = True):
        rows = offline.sample(np.random.default_rng([cfg.seed, 7]), cfg.probe_size, balanced=cfg.data.task_balanced)
        batch = batching.agent_batch(rows, stats, table)
        self.agent, self.obs, self.actions, self.mc = agent, batch["observations"], batch["actions"], rows["mc_return"]
        self.path = os.path.join(cfg.workdir, "probe.json")
        self.key = jax.random.PRNGKey(cfg.seed + 7)  # the same noise for policy and base, every probe
        self.write = write  # False: compute (a multi-process run's other processes must join in), never write

    def stats(self, state) -> dict[str, float]:
        vals = jax.device_get(self.agent.critic_values(state.params, self.obs, self.actions))
        return {**probe_stats(vals["q"], vals["v"], self.mc), **self.extraction_stats(state)}

    def extraction_stats(self, state) -> dict[str, float]:
        """Q̄ of the policy's and of the BC flow's actions on the probe states (same noise), and their mean
        action distance: a run shows whether the extraction moved the policy, and toward higher Q̄."""
        a_pol = self.agent.sample_actions(policy_params(state, "policy"), self.obs, self.key)
        a_base = self.agent.sample_actions(policy_params(state, "base"), self.obs, self.key)
        q_pol = np.asarray(self.agent.critic_values(state.params, self.obs, a_pol)["q"])
        q_base = np.asarray(self.agent.critic_values(state.params, self.obs, a_base)["q"])
        return {"q_policy_mean": float(q_pol.mean()), "q_base_mean": float(q_base.mean()),
                "q_policy_minus_base": float(np.mean(q_pol - q_base)),
                "policy_base_action_dist": float(np.mean(np.abs(np.asarray(a_pol) - np.asarray(a_base))))}

    def log(self, state, step: int, logger: MetricsLogger) -> None:
        logger.log(step, self.stats(state), prefix="probe")

    def save(self, state, step: int, stage: str) -> None:
        """Computes the probe (every process of a multi-process run must: it is one jitted computation) and
        records it in probe.json (only the process that writes the run's files)."""
        stats = self.stats(state)
        if not self.write:
            return
        saved = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
        saved[stage] = {"step": int(step), **stats}
        with open(self.path + ".tmp", "w") as f:
            json.dump(saved, f, indent=1)
        os.replace(self.path + ".tmp", self.path)
