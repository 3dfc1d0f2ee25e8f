"""Evaluation statistics: Wilson intervals against known values, per-task summaries, the markdown table."""

import math

import pytest

from lwd_jax.learner.eval_report import EpisodeResult, markdown_table, summarize, wilson_interval


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
