"""Is the critic learning? Its values on a fixed set of offline transitions against their Monte-Carlo returns.

Why this probe: losses say whether the critic fits its own bootstrapped targets, not whether the sparse
success reward has propagated back through the episodes. A critic that has learned ranks transitions of
successful episodes above those of failed ones and tracks the data's discounted return-to-go; a young one
does neither, and an extraction against it only chases its noise. Pure numpy: the learner feeds it
`LWDAgent.critic_values` on probe rows that hold the data's `mc_return` column.
"""

from __future__ import annotations

import numpy as np


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their positions) of the values x [N]."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), np.float64)
    r[order] = np.arange(1, len(x) + 1)
    uniq, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):  # ties: replace each group's ranks by their mean
        sums = np.bincount(inv, weights=r)
        r = (sums / counts)[inv]
    return r


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
    r = ranks(scores)
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
        "q_mc_spearman": pearson(ranks(q), ranks(g)),
        "v_mc_pearson": pearson(v, g),
        "q_success_auroc": auroc(q, success),
        "q_mean": float(q.mean()),
        "mc_mean": float(g.mean()),
        "q_minus_mc_mean": float(np.mean(q - g)),
    }
    if success.any() and (~success).any():
        out["q_gap_success_minus_failure"] = float(q[success].mean() - q[~success].mean())
    return out
