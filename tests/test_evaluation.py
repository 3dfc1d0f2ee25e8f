"""Evaluation statistics: Wilson intervals against known values, per-task summaries, the markdown table."""

import math

import pytest

from lwd_jax.learner.eval_report import (
    EpisodeResult,
    markdown_table,
    paired_markdown,
    paired_success,
    summarize,
    wilson_interval,
    with_seed,
)


@pytest.mark.parametrize(
    "k,n,lo,hi",
    [
        (0, 10, 0.0, 0.2775),  # the classic 0/10 Wilson bound (the normal interval would be [0, 0])
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (81, 100, 0.7222, 0.8749),
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=1e-3) and b == pytest.approx(hi, abs=1e-3)


def test_summarize_and_table():
    rs = [
        EpisodeResult("a", 0, True, 50, 1.0, 200),
        EpisodeResult("a", 1, False, 200, 0.5, 200),
        EpisodeResult("b", 0, True, 30, 1.0, 100),
    ]
    s = summarize(rs)
    assert s["a"]["success_rate"] == 0.5 and s["a"]["stepwise_score"] == 0.75
    assert s["a"]["cycle_time_success"] == 50 and s["a"]["cycle_time_all"] == 125  # failure counted at budget
    assert s["b"]["success_rate"] == 1.0
    md = markdown_table({"m": s}, long_tasks={"a"})
    assert "| a (long) |" in md and "average long" in md and "average short" in md
    assert not any(math.isnan(v) for v in s["b"].values())


def test_paired_success_counts_discordant_pairs_on_shared_scenes():
    """Matched by (task, seed): 12 scenes where a wins, 2 where b wins, the rest tied -> diff 10/40, McNemar's
    exact p = P(Binomial(14, 0.5) <= 2) * 2; unmatched episodes are ignored."""
    a, b = [], []
    for i in range(40):
        sa, sb = (True, False) if i < 12 else (False, True) if i < 14 else (i % 2 == 0, i % 2 == 0)
        a.append(EpisodeResult("t", i, sa, 10, float(sa), 100))
        b.append(EpisodeResult("t", i, sb, 10, float(sb), 100))
    b.append(EpisodeResult("t", 999, True, 10, 1.0, 100))  # a scene only b met
    out = paired_success(a, b)
    assert (out["n"], out["a_only"], out["b_only"]) == (40, 12, 2)
    assert out["diff"] == pytest.approx(0.25)
    assert out["mcnemar_p"] == pytest.approx(2 * sum(math.comb(14, k) for k in range(3)) / 2**14)
    assert out["diff_lo"] < 0.25 < out["diff_hi"] and out["diff_lo"] > 0
    assert paired_success(a, [])["n"] == 0
    assert "seed_diffs" not in out  # one unnamed seed: the checkpoint-level test only


def test_paired_success_over_seeds_is_wider_when_seeds_disagree():
    """Pooled over training seeds: seed 0's policy wins 30 of 40 scenes, seed 1's loses 10 of 40. The pooled
    pair-level interval excludes 0 (these checkpoints differ); the interval over seeds and scenes must not
    (the two training runs disagree about the method), and the per-seed differences are exact."""
    a, b = [], []
    for s, wins, losses in ((0, 30, 0), (1, 0, 10)):
        ea, eb = [], []
        for i in range(40):
            sa, sb = (True, False) if i < wins else (False, True) if i < wins + losses else (True, True)
            ea.append(EpisodeResult("t", i, sa, 10, float(sa), 100))
            eb.append(EpisodeResult("t", i, sb, 10, float(sb), 100))
        a += with_seed(ea, s)
        b += with_seed(eb, s)
    out = paired_success(a, b)
    assert out["diff"] == pytest.approx(0.25) and out["diff_lo"] > 0
    assert out["seed_diffs"] == pytest.approx({"0": 0.75, "1": -0.25})
    assert out["diff_lo_seeds"] < 0 < out["diff_hi_seeds"]
    assert out["diff_hi_seeds"] - out["diff_lo_seeds"] > 2 * (out["diff_hi"] - out["diff_lo"])
    md = paired_markdown({"x vs y": out})
    assert "+0.75 -0.25" in md and "over seeds and scenes" in md
