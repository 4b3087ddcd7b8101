"""pipeline.evaluation.evidence: per-block RMSE, the one-sided HLN Diebold-Mariano test, and each branch of the
promotion rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import stdtr

from pipeline.common import codec
from pipeline.evaluation.evidence import (
    BLOCKS,
    DM,
    GAIN,
    U2,
    Evidence,
    PromotionPolicy,
    block_rmse,
    dm_one_sided,
    gather_evidence,
    judge,
)

POLICY = PromotionPolicy(min_relative_gain=0.005, promotion_alpha=0.10)
N = 250


def given(*, challenger_rmse: float, champion_rmse: float = 1.0, **figures) -> Evidence:
    """Evidence with these figures, the relative gain consistent with the two RMSEs."""
    gain = round(1 - challenger_rmse / champion_rmse, 12)
    return Evidence(
        challenger_rmse=challenger_rmse, champion_rmse=champion_rmse, relative_gain=gain, sessions=N, **figures
    )


def from_errors(challenger_error, champion_error, naive_error):
    """Forecasts whose errors against an actual series of zeros are exactly the given ones."""
    actual = np.zeros(len(challenger_error))
    return (
        actual,
        np.asarray(challenger_error, float),
        np.asarray(champion_error, float),
        np.asarray(naive_error, float),
    )


def alternating(a: float, b: float, n: int = N) -> np.ndarray:
    return np.where(np.arange(n) % 2 == 0, a, b)


def failed_check(checks):
    return next(check.name for check in checks if not check.passed)


# -- block_rmse ----------------------------------------------------------------------------------


def test_blocks_are_consecutive_and_nearly_equal_in_array_split_order():
    actual = np.arange(11.0)
    forecasts = {"a": actual + 1.0, "b": actual - np.arange(11.0)}
    table = block_rmse(actual, forecasts, 3)
    assert list(table.columns) == ["block", "first", "last", "n", "a", "b"]
    assert table["block"].tolist() == [1, 2, 3]
    assert table["n"].tolist() == [4, 4, 3]
    assert table["first"].tolist() == [0, 4, 8] and table["last"].tolist() == [3, 7, 10]
    assert table["a"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    # b's errors are the positions themselves.
    expected_b = [math.sqrt(np.mean(np.arange(lo, hi + 1.0) ** 2)) for lo, hi in [(0, 3), (4, 7), (8, 10)]]
    assert table["b"].tolist() == pytest.approx(expected_b, rel=1e-12)


def test_blocks_carry_dates_when_given():
    dates = pd.bdate_range("2018-01-01", periods=10)
    table = block_rmse(np.ones(10), {"m": np.zeros(10)}, 2, dates=dates)
    assert table["first"].tolist() == [dates[0], dates[5]]
    assert table["last"].tolist() == [dates[4], dates[9]]


@pytest.mark.parametrize("blocks", [0, 6])
def test_impossible_block_counts_are_refused(blocks):
    with pytest.raises(ValueError, match="blocks"):
        block_rmse(np.ones(5), {"m": np.ones(5)}, blocks)


def test_mismatched_lengths_and_clashing_names_are_refused():
    with pytest.raises(ValueError, match="forecasts for"):
        block_rmse(np.ones(5), {"m": np.ones(4)}, 2)
    with pytest.raises(ValueError, match="clash"):
        block_rmse(np.ones(5), {"n": np.ones(5)}, 2)
    with pytest.raises(ValueError, match="dates"):
        block_rmse(np.ones(5), {"m": np.ones(5)}, 2, dates=pd.bdate_range("2018-01-01", periods=4))


# -- Diebold-Mariano -----------------------------------------------------------------------------


def test_dm_matches_a_hand_computation():
    # Errors: challenger [-1, 1, -2, 1], champion [1, 2, -1, 2] -> d = [0, -3, 3, -3], mean -0.75,
    # gamma_0 = 6.1875; HLN for h = 1 multiplies by sqrt((n - 1) / n); one-sided p = P(t_3 <= stat).
    actual = np.array([100.0, 102.0, 101.0, 105.0])
    challenger = np.array([101.0, 101.0, 103.0, 104.0])
    champion = np.array([99.0, 100.0, 102.0, 103.0])
    stat, p = dm_one_sided(actual, challenger, champion)
    expected = -0.75 / math.sqrt(6.1875 / 4) * math.sqrt(3 / 4)
    assert stat == pytest.approx(expected, rel=1e-12)
    assert p == pytest.approx(stdtr(3, expected), rel=1e-8)


def two_sided_dm_reference(actual, forecast, benchmark) -> tuple[float, float]:
    """DM for h=1 written out: d_t, its mean, gamma_0, the HLN factor sqrt((n - 1) / n), a two-sided t p-value."""
    d = (actual - forecast) ** 2 - (actual - benchmark) ** 2
    n = d.size
    statistic = d.mean() / np.sqrt(((d - d.mean()) ** 2).sum() / n / n) * np.sqrt((n - 1) / n)
    return float(statistic), float(2 * (1 - stdtr(n - 1, abs(statistic))))


@pytest.mark.parametrize("seed, n", [(1, 30), (2, 120), (3, 500)])
def test_dm_is_the_one_sided_version_of_the_two_sided_test(seed, n):
    rng = np.random.default_rng(seed)
    actual = 100 + np.cumsum(rng.normal(0, 1, n))
    a, b = actual + rng.normal(0, 0.9, n), actual + rng.normal(0, 1.1, n)
    for challenger, champion in [(a, b), (b, a)]:
        stat, p = dm_one_sided(actual, challenger, champion)
        two_stat, two_p = two_sided_dm_reference(actual, challenger, champion)
        assert stat == pytest.approx(two_stat, rel=1e-10)
        assert p == pytest.approx(two_p / 2 if stat < 0 else 1 - two_p / 2, rel=1e-7, abs=1e-12)


def test_a_better_challenger_gets_a_small_p_value_and_a_worse_one_a_large_one():
    rng = np.random.default_rng(0)
    actual = 100 + np.cumsum(rng.normal(0, 1, N))
    good, bad = actual + rng.normal(0, 0.5, N), actual + rng.normal(0, 2.0, N)
    assert dm_one_sided(actual, good, bad)[1] < 0.01
    assert dm_one_sided(actual, bad, good)[1] > 0.99


def test_dm_gives_no_evidence_for_degenerate_inputs():
    rng = np.random.default_rng(1)
    actual = rng.normal(size=N)
    forecast = actual + rng.normal(size=N)
    assert dm_one_sided(actual, forecast, forecast.copy()) == (0.0, 1.0)  # identical: zero variance
    zeros = np.zeros(4)
    assert dm_one_sided(zeros, np.array([1.0, -1, 1, -1]), np.array([2.0, 2, -2, -2])) == (0.0, 1.0)  # constant d
    assert dm_one_sided(np.array([1.0, 2.0]), np.array([1.1, 2.1]), np.array([3.0, 5.0])) == (0.0, 1.0)  # n < 3
    with_nan = forecast.copy()
    with_nan[3] = np.nan
    stat, p = dm_one_sided(actual, with_nan, forecast)
    assert math.isnan(stat) and math.isnan(p)


# -- gather_evidence -----------------------------------------------------------------------------


def test_evidence_figures_follow_their_definitions():
    actual, challenger, champion, naive = from_errors(
        alternating(0.5, -0.5), alternating(1.0, -1.0), alternating(2.0, -2.0)
    )
    e = gather_evidence(actual, challenger, champion, naive, blocks=5)
    assert (e.challenger_rmse, e.champion_rmse, e.naive_rmse) == pytest.approx((0.5, 1.0, 2.0))
    assert e.relative_gain == pytest.approx(0.5)
    assert e.u2 == pytest.approx(0.25)
    assert (e.blocks_won, e.blocks, e.sessions) == (5, 5, N)
    assert len(e.per_block) == 5 and e.per_block[0]["n"] == 50
    assert list(e.block_table().columns) == ["block", "first", "last", "n", "challenger", "champion", "naive"]


def test_evidence_is_json_ready():
    dates = pd.bdate_range("2017-01-02", periods=N)
    actual, challenger, champion, naive = from_errors(alternating(0.5, -0.5), alternating(1.0, -1.0), np.zeros(N))
    e = gather_evidence(actual, challenger, champion, naive, blocks=5, dates=dates)
    assert math.isnan(e.u2)  # a perfect naive forecast: U2 undefined
    values = json.loads(json.dumps(codec.dump(e), allow_nan=False))
    assert values["u2"] is None
    assert values["per_block"][0]["first"] == "2017-01-02"
    assert values["blocks_won"] == 5


# -- the promotion rule --------------------------------------------------------------------------


def test_a_challenger_clearly_better_in_every_block_is_promoted():
    rng = np.random.default_rng(2)
    actual = 100 + np.cumsum(rng.normal(0, 1, N))
    naive = np.r_[actual[0], actual[:-1]]
    challenger = actual + rng.normal(0, 0.5, N)
    e = gather_evidence(actual, challenger, naive, naive, blocks=5)
    promote, reason, checks = judge(e, POLICY)
    assert promote
    assert [c.name for c in checks] == [GAIN, DM, BLOCKS, U2] and all(c.passed for c in checks)
    assert f"{e.relative_gain:.2%}" in reason and "won 5 of 5 blocks" in reason
    assert "DM p-value" in reason and f"U2 {e.u2:.3f} < 1" in reason


def test_better_on_average_but_losing_most_blocks_is_kept():
    # Block 1: the champion is far off and the challenger not; blocks 2-5: the challenger slightly worse.
    challenger_error = np.r_[alternating(0.1, -0.1, 50), alternating(1.05, -1.05, 200)]
    champion_error = np.r_[alternating(3.0, -2.0, 50), alternating(1.0, -1.0, 200)]
    e = gather_evidence(*from_errors(challenger_error, champion_error, np.full(N, 5.0)), blocks=5)
    assert e.relative_gain > POLICY.min_relative_gain and e.dm_pvalue < POLICY.promotion_alpha
    promote, reason, checks = judge(e, POLICY)
    assert not promote
    assert failed_check(checks) == BLOCKS
    assert reason == "won 1 of 5 blocks (needs a majority)"


def test_better_but_not_significant_is_kept():
    # Squared errors 0 and 1.9 alternating vs 1: a 2.5% lower RMSE, but a noisy loss differential.
    challenger_error = alternating(0.0, math.sqrt(1.9))
    e = gather_evidence(*from_errors(challenger_error, np.ones(N), np.full(N, 5.0)), blocks=5)
    assert e.relative_gain == pytest.approx(1 - math.sqrt(0.95))
    promote, reason, checks = judge(e, POLICY)
    assert not promote
    assert failed_check(checks) == DM
    # d alternates -1 and 0.9: mean -0.05, gamma_0 0.9025, HLN statistic -0.8305, P(t_249 <= -0.8305) = 0.204.
    assert e.dm_stat == pytest.approx(-0.05 / math.sqrt(0.9025 / N) * math.sqrt((N - 1) / N), rel=1e-9)
    assert reason == "DM p-value 0.204 >= 0.10"


def test_significant_but_below_the_minimum_gain_is_kept():
    # Squared error 0.996 +- 0.001 vs 1: consistently better, by about 0.2%.
    challenger_error = np.sqrt(alternating(0.995, 0.997))
    e = gather_evidence(*from_errors(challenger_error, np.ones(N), np.full(N, 5.0)), blocks=5)
    assert e.dm_pvalue < 1e-6 and e.blocks_won == 5
    promote, reason, checks = judge(e, POLICY)
    assert not promote
    assert failed_check(checks) == GAIN
    assert reason == f"gain over champion {e.relative_gain:.2%} < required 0.50%"
    assert reason == "gain over champion 0.20% < required 0.50%"


def test_a_challenger_no_better_than_naive_is_kept():
    rng = np.random.default_rng(3)
    challenger_error = rng.normal(0, 1.0, N)
    champion_error = rng.normal(0, 2.0, N)
    e = gather_evidence(*from_errors(challenger_error, champion_error, rng.normal(0, 0.9, N)), blocks=5)
    promote, reason, checks = judge(e, POLICY)
    assert not promote
    assert [c.passed for c in checks] == [True, True, True, False]
    assert reason == f"U2 {e.u2:.3f} >= 1"


def test_identical_forecasts_never_promote():
    rng = np.random.default_rng(4)
    actual = rng.normal(size=N)
    forecast = actual + rng.normal(size=N)
    e = gather_evidence(actual, forecast, forecast.copy(), actual + 2 * rng.normal(size=N), blocks=5)
    assert (e.dm_stat, e.dm_pvalue, e.relative_gain, e.blocks_won) == (0.0, 1.0, 0.0, 0)
    promote, reason, checks = judge(e, PromotionPolicy(min_relative_gain=0.0))
    assert not promote
    assert reason == "gain over champion 0.00% is not positive (a tie never promotes)"
    assert [c.passed for c in checks] == [False, False, False, True]


def test_an_equal_rmse_with_different_forecasts_is_a_tie():
    e = gather_evidence(*from_errors(alternating(1.0, -1.0), alternating(-1.0, 1.0), np.full(N, 5.0)), blocks=5)
    assert e.relative_gain == 0.0
    promote, reason, _ = judge(e, PromotionPolicy(min_relative_gain=0.0))
    assert not promote and "tie never promotes" in reason


def test_an_even_split_of_blocks_is_not_a_majority():
    evidence = given(challenger_rmse=0.9, naive_rmse=1.0, u2=0.9, dm_stat=-3.0, dm_pvalue=0.001, blocks_won=2, blocks=4)
    promote, reason, checks = judge(evidence, POLICY)
    assert not promote and reason == "won 2 of 4 blocks (needs a majority)"
    blocks_check = checks[2]
    assert (blocks_check.figure, blocks_check.threshold) == (2.0, 2.0)


def test_non_finite_evidence_is_kept_with_a_clear_reason():
    actual, challenger, champion, naive = from_errors(alternating(0.5, -0.5), np.ones(N), np.full(N, 5.0))
    challenger[7] = np.nan
    e = gather_evidence(actual, challenger, champion, naive, blocks=5)
    promote, reason, checks = judge(e, POLICY)
    assert not promote
    assert reason.startswith("cannot judge non-finite evidence (challenger_rmse=nan")
    assert not any(c.passed for c in checks[:2])
    json.dumps(codec.dump(e), allow_nan=False)
    json.dumps([codec.dump(c) for c in checks], allow_nan=False)


def test_checks_report_figure_and_threshold():
    evidence = given(
        challenger_rmse=0.99, naive_rmse=1.2, u2=0.825, dm_stat=-2.0, dm_pvalue=0.03, blocks_won=4, blocks=5
    )
    promote, reason, checks = judge(evidence, PromotionPolicy(min_relative_gain=0.002, promotion_alpha=0.05))
    assert promote
    assert [(c.name, c.passed, c.figure, c.threshold) for c in checks] == [
        (GAIN, True, 0.01, 0.002),
        (DM, True, 0.03, 0.05),
        (BLOCKS, True, 4.0, 2.5),
        (U2, True, 0.825, 1.0),
    ]
    assert (
        reason == "gain over champion 1.00% >= required 0.20%, DM p-value 0.03 < 0.05, won 4 of 5 blocks, U2 0.825 < 1"
    )


@pytest.mark.parametrize("gain, alpha", [(-0.1, 0.1), (1.0, 0.1), (0.0, 0.0), (0.0, 1.5)])
def test_policy_refuses_meaningless_settings(gain, alpha):
    with pytest.raises(ValueError):
        PromotionPolicy(min_relative_gain=gain, promotion_alpha=alpha)
