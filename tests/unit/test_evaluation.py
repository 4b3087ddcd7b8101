"""pipeline.evaluation: metrics against hand-computed values and the Diebold–Mariano test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import stdtr

from pipeline.evaluation import diebold_mariano, directional_accuracy, forecast_metrics, shrinkage_toward_persistence

# Four days worked by hand:
#   actual - forecast   = [-1, 1, -2, 1]   -> MSE 7/4, MAE 5/4
#   actual - last_close = [ 1, 2, -1, 2]   -> naive MSE 10/4
#   forecast direction  = up, up, up, up;  actual direction = up, up, down, up -> 3/4
ACTUAL = np.array([100.0, 102.0, 101.0, 105.0])
FORECAST = np.array([101.0, 101.0, 103.0, 104.0])
LAST_CLOSE = np.array([99.0, 100.0, 102.0, 103.0])


def dm_reference(actual, forecast, benchmark) -> tuple[float, float]:
    """DM for h=1 written out: d_t, its mean, gamma_0, then the HLN factor sqrt((n + 1 - 2h + h(h-1)/n) / n)."""
    h = 1
    d = (actual - forecast) ** 2 - (actual - benchmark) ** 2
    n = d.size
    d_bar = d.sum() / n
    gamma_0 = ((d - d_bar) ** 2).sum() / n
    dm = d_bar / np.sqrt(gamma_0 / n)
    hln = dm * np.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    p = 2 * (1 - stdtr(n - 1, abs(hln)))
    return float(hln), float(p)


def noisy_forecasts(n=250, seed=0, good_sigma=0.5, bad_sigma=2.0):
    rng = np.random.default_rng(seed)
    actual = 100 + np.cumsum(rng.normal(0, 1, n))
    good = actual + rng.normal(0, good_sigma, n)
    bad = actual + rng.normal(0, bad_sigma, n)
    return actual, good, bad


# -- point metrics -------------------------------------------------------------------------------


def test_forecast_metrics_match_hand_computed_values():
    m = forecast_metrics(ACTUAL, FORECAST, LAST_CLOSE)
    assert m["rmse"] == pytest.approx(math.sqrt(7 / 4), rel=1e-12)
    assert m["mae"] == pytest.approx(5 / 4, rel=1e-12)
    assert m["mape"] == pytest.approx(100 * (1 / 100 + 1 / 102 + 2 / 101 + 1 / 105) / 4, rel=1e-12)
    assert m["directional_accuracy"] == pytest.approx(0.75)
    assert m["naive_rmse"] == pytest.approx(math.sqrt(10 / 4), rel=1e-12)
    assert m["u2"] == pytest.approx(math.sqrt(0.7), rel=1e-12)
    assert (m["dm_stat"], m["dm_pvalue"]) == pytest.approx(dm_reference(ACTUAL, FORECAST, LAST_CLOSE), rel=1e-9)
    assert set(m) == {"rmse", "mae", "mape", "directional_accuracy", "naive_rmse", "u2", "dm_stat", "dm_pvalue"}
    assert all(isinstance(v, float) for v in m.values())


def test_mape_is_in_percent():
    m = forecast_metrics(np.array([200.0, 100.0]), np.array([210.0, 95.0]), np.array([200.0, 100.0]))
    assert m["mape"] == pytest.approx(5.0)  # (5% + 5%) / 2


def test_naive_forecast_scores_u2_of_one():
    m = forecast_metrics(ACTUAL, LAST_CLOSE, LAST_CLOSE)
    assert m["rmse"] == pytest.approx(m["naive_rmse"])
    assert m["u2"] == pytest.approx(1.0)
    assert (m["dm_stat"], m["dm_pvalue"]) == (0.0, 1.0)


def test_u2_is_nan_when_the_naive_forecast_is_perfect():
    flat = np.array([10.0, 10.0, 10.0])
    m = forecast_metrics(flat, np.array([10.5, 9.5, 10.0]), flat)
    assert m["naive_rmse"] == 0.0
    assert math.isnan(m["u2"])


def test_directional_accuracy_counts_matching_moves():
    actual = np.array([11.0, 9.0, 12.0, 8.0])
    last = np.array([10.0, 10.0, 10.0, 10.0])
    assert directional_accuracy(actual, np.array([10.5, 9.5, 10.1, 9.9]), last) == 1.0
    assert directional_accuracy(actual, np.array([9.5, 10.5, 9.9, 10.1]), last) == 0.0
    assert directional_accuracy(actual, np.array([10.5, 10.5, 10.5, 10.5]), last) == 0.5


def test_a_flat_forecast_never_scores_directional_accuracy():
    """As documented: even on a day the price did not move, forecasting 'no move' earns nothing."""
    actual = np.array([10.0, 11.0, 10.0, 9.0])
    last = np.array([10.0, 10.0, 10.0, 10.0])
    assert directional_accuracy(actual, last.copy(), last) == 0.0
    # A real move forecast on the unchanged day does not score either.
    assert directional_accuracy(actual, np.array([10.5, 10.5, 9.5, 9.5]), last) == 0.5


# -- Diebold–Mariano -----------------------------------------------------------------------------


def test_identical_forecasts_give_no_evidence():
    actual, good, _ = noisy_forecasts()
    assert diebold_mariano(actual, good, good.copy()) == (0.0, 1.0)


def test_constant_loss_difference_and_tiny_samples_give_no_evidence():
    # Forecast and benchmark differ, but the loss differential has zero variance.
    actual = np.array([0.0, 0.0, 0.0, 0.0])
    assert diebold_mariano(actual, np.array([1.0, -1.0, 1.0, -1.0]), np.array([2.0, 2.0, -2.0, -2.0])) == (0.0, 1.0)
    # Fewer than three days.
    assert diebold_mariano(np.array([1.0, 2.0]), np.array([1.1, 2.1]), np.array([3.0, 5.0])) == (0.0, 1.0)


def test_a_clearly_better_forecast_is_significant_with_a_negative_statistic():
    actual, good, bad = noisy_forecasts()
    stat, p = diebold_mariano(actual, good, bad)
    assert stat < 0
    assert p < 0.01
    # Swapping forecast and benchmark flips the sign and keeps the p-value.
    stat_swapped, p_swapped = diebold_mariano(actual, bad, good)
    assert stat_swapped == pytest.approx(-stat, rel=1e-12)
    assert p_swapped == pytest.approx(p, rel=1e-9)


def test_equally_good_forecasts_are_not_significant():
    actual, good, _ = noisy_forecasts(n=250, seed=4)
    rng = np.random.default_rng(99)
    other = actual + rng.normal(0, 0.5, actual.size)
    _, p = diebold_mariano(actual, good, other)
    assert p > 0.05


@pytest.mark.parametrize("seed, n", [(1, 30), (2, 120), (3, 500)])
def test_dm_matches_a_direct_numpy_computation(seed, n):
    actual, good, bad = noisy_forecasts(n=n, seed=seed, good_sigma=0.9, bad_sigma=1.1)
    stat, p = diebold_mariano(actual, good, bad)
    ref_stat, ref_p = dm_reference(actual, good, bad)
    assert stat == pytest.approx(ref_stat, rel=1e-10)
    assert p == pytest.approx(ref_p, rel=1e-8, abs=1e-12)
    assert 0.0 <= p <= 1.0


def test_dm_hand_computed_small_sample():
    # d = [0, -3, 3, -3]: mean -0.75, gamma_0 = 6.1875, n = 4.
    stat, p = diebold_mariano(ACTUAL, FORECAST, LAST_CLOSE)
    expected = -0.75 / math.sqrt(6.1875 / 4) * math.sqrt(3 / 4)
    assert stat == pytest.approx(expected, rel=1e-12)
    assert p == pytest.approx(2 * (1 - stdtr(3, abs(expected))), rel=1e-10)


class TestShrinkageTowardPersistence:
    def test_a_forecast_that_held_up_is_kept_whole(self):
        actual = np.array([0.01, -0.02, 0.015, -0.005])
        assert shrinkage_toward_persistence(actual, actual) == pytest.approx(1.0)

    def test_an_overconfident_forecast_is_scaled_down_to_the_least_squares_factor(self):
        actual = np.array([0.01, -0.02, 0.015, -0.005])
        assert shrinkage_toward_persistence(4 * actual, actual) == pytest.approx(0.25)

    def test_a_forecast_pointing_the_wrong_way_becomes_persistence(self):
        actual = np.array([0.01, -0.02, 0.015, -0.005])
        assert shrinkage_toward_persistence(-actual, actual) == 0.0

    def test_a_flat_forecast_has_nothing_to_scale(self):
        assert shrinkage_toward_persistence(np.zeros(5), np.ones(5)) == 0.0
