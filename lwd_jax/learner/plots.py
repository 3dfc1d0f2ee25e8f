"""PNG plots of the flywheel: success rate against fleet experience.

Why fleet episodes on the x axis (not wall time or learner steps): fleet experience is what a deployment pays
for, and it is the axis on which methods with different update costs can be compared fairly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lwd_jax.learner.eval_report import wilson_interval


def trailing_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Mean of the last `window` values at each position (fewer at the start)."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return v
    c = np.concatenate([[0.0], np.cumsum(v)])
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def success_vs_fleet_episodes(
    episodes: Sequence[Any],
    path: str,
    *,
    autonomous: set[str] | None = None,
    window: int = 50,
    evals: Mapping[str, tuple[int, Mapping[str, Mapping[str, float]]]] | None = None,
    curve: Sequence[tuple[int, Mapping[str, Mapping[str, float]]]] = (),
    title: str = "",
) -> None:
    """Trailing success rate and step-wise score of fleet episodes vs the number of fleet episodes so far.

    `episodes`: FleetEpisode records in acceptance order. Only episodes of `autonomous` robots (no human
    attendant) enter the curves, since a human's takeovers would inflate success; the x axis still counts
    every fleet episode. The shaded band is the 95% Wilson interval of the trailing success rate (the
    window's successes over its episodes); dotted vertical lines mark the first fleet episode run with each
    newly published policy version. `evals`: name -> (x, per-task summary) of simulator evaluations, drawn
    as points with the pooled success over all their episodes and its 95% Wilson interval (evaluations at the
    same x are spread a little apart). `curve`: (x, per-task summary) of the evaluations taken during the
    online stage on the same test scenes, drawn as one line with the same intervals: the learning curve
    that pairs with the stage evaluations, where the fleet's own trailing success mixes tasks and scenes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, succ, score = [], [], []
    for i, e in enumerate(episodes):
        if autonomous is None or e.robot_id in autonomous:
            xs.append(i + 1)
            succ.append(float(e.success))
            score.append(e.subgoal_frac)
    fig, ax = plt.subplots(figsize=(7, 5.4), dpi=120)
    if xs:
        rate = trailing_mean(succ, window)
        n = np.minimum(np.arange(1, len(succ) + 1), window)
        band = np.array([wilson_interval(round(r * k), int(k)) for r, k in zip(rate, n, strict=True)])
        ax.plot(xs, rate, label=f"fleet success (trailing {window})", color="C0")
        ax.fill_between(xs, band[:, 0], band[:, 1], color="C0", alpha=0.15, label="95% Wilson interval of it")
        ax.plot(xs, trailing_mean(score, window), label=f"fleet step-wise score (trailing {window})", color="C1", alpha=0.8)
    first_of_version = {}
    for i, e in enumerate(episodes):
        first_of_version.setdefault(e.policy_version, i + 1)
    for j, x in enumerate(sorted(first_of_version.values())[1:]):  # the first version is the offline policy
        ax.axvline(x, color="0.5", linestyle=":", linewidth=0.8, label="new policy version deployed" if j == 0 else None)
    def pooled(summary: Mapping[str, Mapping[str, float]]) -> tuple[float, float, float, int]:
        n_eps = sum(int(s["episodes"]) for s in summary.values())
        wins = sum(round(s["success_rate"] * s["episodes"]) for s in summary.values())
        lo, hi = wilson_interval(wins, n_eps)
        return wins / max(n_eps, 1), lo, hi, n_eps

    points = [(x, *pooled(summary)) for x, summary in curve if summary]
    if points:
        px, pm, plo, phi, pn = (np.array(v) for v in zip(*points, strict=True))
        ax.errorbar(px, pm, yerr=[pm - plo, phi - pm], fmt="s-", capsize=3, color="C5", markersize=4,
                    label=f"eval during the online stage (test scenes, 95% CI of {int(pn[0])} episodes)")
    span = max([len(xs) and xs[-1], *(x for x, _ in (evals or {}).values()), 1])
    seen_x: dict[int, int] = {}
    for k, (name, (x, summary)) in enumerate((evals or {}).items()):
        if not summary:
            continue
        m, lo, hi, n_eps = pooled(summary)
        shift = seen_x.get(x, 0)
        seen_x[x] = shift + 1
        ax.errorbar([x - 0.012 * span * shift], [m], yerr=[[m - lo], [hi - m]], fmt="o", capsize=4, color=f"C{k + 2}",
                    label=f"eval: {name} ({m:.2f}, 95% CI of {n_eps} episodes)")
    ax.set_xlabel("fleet episodes")
    ax.set_ylabel("success rate / score")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
