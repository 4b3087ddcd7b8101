"""pipeline.evaluation.metrics: point metrics against hand-computed values, and shrinkage toward persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.evaluation.metrics import directional_accuracy, point_metrics
from pipeline.models.shrinkage import shrinkage_toward_persistence

# Four days worked by hand:
#   actual - forecast   = [-1, 1, -2, 1]   -> MSE 7/4, MAE 5/4
#   actual - last_close = [ 1, 2, -1, 2]   -> naive MSE 10/4
#   forecast direction  = up, up, up, up;  actual direction = up, up, down, up -> 3/4
ACTUAL = np.array([100.0, 102.0, 101.0, 105.0])
FORECAST = np.array([101.0, 101.0, 103.0, 104.0])
LAST_CLOSE = np.array([99.0, 100.0, 102.0, 103.0])


# -- point metrics -------------------------------------------------------------------------------


def test_point_metrics_match_hand_computed_values():
    m = point_metrics(ACTUAL, FORECAST, LAST_CLOSE)
    assert m["rmse"] == pytest.approx(math.sqrt(7 / 4), rel=1e-12)
    assert m["mae"] == pytest.approx(5 / 4, rel=1e-12)
    assert m["mape"] == pytest.approx(100 * (1 / 100 + 1 / 102 + 2 / 101 + 1 / 105) / 4, rel=1e-12)
    assert m["directional_accuracy"] == pytest.approx(0.75)
    assert set(m) == {"rmse", "mae", "mape", "directional_accuracy"}
    assert all(isinstance(v, float) for v in m.values())


def test_mape_is_in_percent():
    m = point_metrics(np.array([200.0, 100.0]), np.array([210.0, 95.0]), np.array([200.0, 100.0]))
    assert m["mape"] == pytest.approx(5.0)  # (5% + 5%) / 2


def test_the_naive_forecast_scores_its_own_rmse():
    assert point_metrics(ACTUAL, LAST_CLOSE, LAST_CLOSE)["rmse"] == pytest.approx(math.sqrt(10 / 4), rel=1e-12)


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
