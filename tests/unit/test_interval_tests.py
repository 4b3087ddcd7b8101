"""Kupiec, Christoffersen and pinball scores of pipeline.evaluation.interval_tests, on hand-computed figures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2

from pipeline.evaluation.interval_scores import winkler_scores
from pipeline.evaluation.interval_tests import (
    christoffersen_independence,
    exceedances,
    kupiec_pof,
    mean_pinball,
    pinball_loss,
    transition_counts,
)


def test_kupiec_pof_against_the_closed_form():
    # 250 sessions of an 80% interval with 64 misses (25.6% against 20% promised).
    n, x, p = 250, 64, 0.2
    flags = np.zeros(n, dtype=bool)
    flags[:x] = True
    lr = -2 * ((n - x) * math.log(1 - p) + x * math.log(p) - (n - x) * math.log(1 - x / n) - x * math.log(x / n))
    result = kupiec_pof(flags, 0.80)
    assert result.statistic == pytest.approx(lr, rel=1e-12)
    assert result.p_value == pytest.approx(chi2.sf(lr, 1), rel=1e-12)
    assert lr == pytest.approx(4.6018, abs=1e-4) and result.p_value == pytest.approx(0.03194, abs=1e-5)


def test_kupiec_pof_with_no_or_only_exceedances_and_no_sessions():
    none = kupiec_pof(np.zeros(100, dtype=bool), 0.95)
    assert none.statistic == pytest.approx(-2 * 100 * math.log(0.95))
    every = kupiec_pof(np.ones(10, dtype=bool), 0.95)
    assert every.statistic == pytest.approx(-2 * 10 * math.log(0.05))
    assert kupiec_pof(np.array([0, 0, 0, 0, 1]), 0.80).statistic == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(v) for v in kupiec_pof(np.array([], dtype=bool), 0.8))


def test_christoffersen_independence_against_the_closed_form():
    flags = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    # Counted by hand over the 19 transitions: 0->0 8 times, 0->1 4, 1->0 4, 1->1 3.
    n00, n01, n10, n11 = 8, 4, 4, 3
    assert transition_counts(flags) == (n00, n01, n10, n11)
    pi01, pi11, pi = n01 / (n00 + n01), n11 / (n10 + n11), (n01 + n11) / 19
    log_null = (n00 + n10) * math.log(1 - pi) + (n01 + n11) * math.log(pi)
    log_markov = n00 * math.log(1 - pi01) + n01 * math.log(pi01) + n10 * math.log(1 - pi11) + n11 * math.log(pi11)
    lr = -2 * (log_null - log_markov)
    result = christoffersen_independence(flags)
    assert result.statistic == pytest.approx(lr, rel=1e-12)
    assert result.p_value == pytest.approx(chi2.sf(lr, 1), rel=1e-12)
    assert lr == pytest.approx(0.17113, abs=1e-5) and result.p_value == pytest.approx(0.67911, abs=1e-5)


def test_christoffersen_independence_with_empty_transition_rows():
    assert christoffersen_independence(np.zeros(50, dtype=bool)) == (0.0, 1.0)
    assert christoffersen_independence(np.ones(5, dtype=bool)) == (0.0, 1.0)
    # A single exceedance at the end: the row after an exceedance is empty, the test is still defined.
    single = christoffersen_independence(np.array([0, 0, 0, 1], dtype=bool))
    assert single.statistic == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(v) for v in christoffersen_independence(np.array([True])))


def test_pinball_loss_by_hand():
    actual = np.array([1.0, 2.0, 3.0])
    forecast = np.array([2.0, 2.0, 2.0])
    # tau = 0.1: errors -1, 0, 1 cost 0.9, 0 and 0.1.
    assert pinball_loss(actual, forecast, 0.1) == pytest.approx((0.9 + 0 + 0.1) / 3)


def test_mean_pinball_is_the_winkler_score_scaled_per_level():
    rng = np.random.default_rng(1)
    actual = rng.normal(size=200)
    lower80, upper80 = np.full(200, -1.2), np.full(200, 1.3)
    lower95, upper95 = np.full(200, -2.0), np.full(200, 1.9)
    got = mean_pinball(actual, {0.80: (lower80, upper80), 0.95: (lower95, upper95)})
    by_winkler = (
        0.20 / 2 * winkler_scores(actual, lower80, upper80, 0.80).mean()
        + 0.05 / 2 * winkler_scores(actual, lower95, upper95, 0.95).mean()
    ) / 4
    assert got == pytest.approx(by_winkler, rel=1e-12)


def test_exceedances_count_missing_bounds_as_misses():
    flags = exceedances(np.array([1.0, 5.0, 2.0]), np.array([0.0, 0.0, np.nan]), np.array([2.0, 4.0, 3.0]))
    assert flags.tolist() == [False, True, True]
