"""The critic probe's statistics against cases whose answers are known by hand."""

import math

import numpy as np
import pytest

from lwd_jax.learner.critic_probe import auroc, pearson, probe_stats


def test_auroc_counts_ties_half():
    pos = np.array([1, 0, 1, 0], bool)
    assert auroc(np.array([3.0, 3.0, 2.0, 1.0]), pos) == 0.625  # pairs (3>3 tie: 0.5, 3>1, 2<3, 2>1) / 4


def test_auroc_known_cases():
    pos = np.array([1, 1, 0, 0], bool)
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), pos) == 1.0  # every success above every failure
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), pos) == 0.0
    assert auroc(np.ones(4), pos) == 0.5  # a constant critic ranks nothing
    assert auroc(np.array([0.9, 0.3, 0.5, 0.2]), pos) == 0.75  # 3 of the 4 (pos, neg) pairs ordered right
    assert math.isnan(auroc(np.ones(3), np.ones(3, bool)))


def test_pearson_and_probe_stats():
    g = np.array([0.0, 0.0, 0.5, 0.9, 1.0])
    assert pearson(2 * g + 1, g) == pytest.approx(1.0)
    assert math.isnan(pearson(np.ones(5), g))
    s = probe_stats(q=g, v=g, mc_return=g)
    assert s["q_mc_pearson"] == pytest.approx(1.0) and s["q_mc_spearman"] == pytest.approx(1.0)
    assert s["q_success_auroc"] == 1.0 and s["q_minus_mc_mean"] == 0.0
    assert s["q_gap_success_minus_failure"] == pytest.approx(0.8)
    assert "q_gap_success_minus_failure" not in probe_stats(g, g, np.zeros(5))  # no successful episode
