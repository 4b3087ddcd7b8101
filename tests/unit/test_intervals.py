"""Prediction intervals (pipeline.models.volatility, conformal, naive_intervals; pipeline.evaluation.interval_scores):
EWMA volatility, conformal calibration and tracking, the naive baseline, scores, real data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.common import codec
from pipeline.common.settings import BUNDLED_SNAPSHOTS
from pipeline.evaluation.interval_scores import score_interval, score_intervals, winkler_scores
from pipeline.models.conformal import (
    IntervalCalibration,
    calibrate,
    conformal_quantile,
    conformity_scores,
    prediction_intervals,
    tracked_intervals,
)
from pipeline.models.intervals import interval_columns
from pipeline.models.naive_intervals import naive_intervals
from pipeline.models.volatility import ewma_volatility

COLUMNS = ["lower_80", "upper_80", "lower_95", "upper_95"]


def gaussian_prices(sigmas: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.r_[0.0, np.cumsum(rng.normal(0.0, sigmas))])


def regime_prices(seed: int = 0) -> np.ndarray:
    """1000 calm sessions (1% daily), then calm and wild (3%) regimes taking turns every 250 sessions."""
    sigmas = np.r_[np.full(1000, 0.01), np.tile(np.r_[np.full(250, 0.03), np.full(250, 0.01)], 2)]
    return gaussian_prices(sigmas, seed)


# -- EWMA volatility -----------------------------------------------------------------------------


def test_ewma_volatility_by_hand():
    closes = np.array([100.0, 101.0, 99.0, 102.0])
    r = np.diff(np.log(closes))
    lam = 0.94
    sigma = ewma_volatility(closes, lam, window=250, min_returns=1)
    assert math.isnan(sigma[0])
    assert sigma[1] == pytest.approx(abs(r[0]), rel=1e-12)
    expected = math.sqrt((r[2] ** 2 + lam * r[1] ** 2 + lam**2 * r[0] ** 2) / (1 + lam + lam**2))
    assert sigma[3] == pytest.approx(expected, rel=1e-12)


def test_ewma_volatility_matches_the_riskmetrics_recursion_once_the_window_is_full():
    closes = gaussian_prices(np.full(2000, 0.02), seed=1)
    r = np.diff(np.log(closes))
    variance = r[0] ** 2
    for value in r[1:]:
        variance = 0.94 * variance + 0.06 * value**2
    assert ewma_volatility(closes)[-1] == pytest.approx(math.sqrt(variance), rel=1e-6)


def test_ewma_volatility_needs_a_minimum_of_returns():
    sigma = ewma_volatility(gaussian_prices(np.full(30, 0.01)), min_returns=20)
    assert np.isnan(sigma[:20]).all() and np.isfinite(sigma[20:]).all()
    assert np.isnan(ewma_volatility(np.array([100.0]))).all()


# -- split-conformal calibration -----------------------------------------------------------------


def test_conformal_quantile_uses_the_finite_sample_rank():
    scores = np.arange(9.0, 0.0, -1.0)  # 1..9, unsorted
    assert conformal_quantile(scores, 0.8) == 8.0  # ceil(10 * 0.8) = 8th smallest
    assert conformal_quantile(scores, 0.95) == math.inf  # ceil(9.5) = 10 > 9
    assert conformal_quantile(np.arange(1.0, 20.0), 0.95) == 19.0  # (19 + 1) * 0.95 = 19 exactly
    assert conformal_quantile(np.array([]), 0.8) == math.inf


def test_calibration_refuses_too_few_sessions():
    closes = gaussian_prices(np.full(60, 0.01))
    positions = np.arange(30, 45)
    with pytest.raises(ValueError, match="at least 19"):
        calibrate(closes, positions, closes[positions])


def test_intervals_are_the_forecast_times_exp_of_q_sigma():
    closes = gaussian_prices(np.full(400, 0.01), seed=2)
    cal = np.arange(100, 350)
    calibration = calibrate(closes, cal, closes[cal])
    scores = conformity_scores(closes, cal, closes[cal])
    assert calibration.quantiles == (conformal_quantile(scores, 0.8), conformal_quantile(scores, 0.95))
    assert calibration.n_calibration == 250
    positions = np.array([360, 399])  # 399 is the last close: the served model's next-session case
    forecasts = closes[positions] * 1.001
    intervals = prediction_intervals(closes, forecasts, calibration, positions)
    assert list(intervals) == COLUMNS
    sigma = ewma_volatility(closes)[positions]
    q80, q95 = calibration.quantiles
    np.testing.assert_allclose(intervals["lower_80"], forecasts * np.exp(-q80 * sigma), rtol=1e-12)
    np.testing.assert_allclose(intervals["upper_95"], forecasts * np.exp(q95 * sigma), rtol=1e-12)
    assert np.all(intervals["lower_95"] < intervals["lower_80"])
    assert np.all(intervals["upper_80"] < intervals["upper_95"])


def test_sessions_with_too_little_history_get_no_interval():
    closes = gaussian_prices(np.full(300, 0.01), seed=3)
    cal = np.arange(50, 290)
    calibration = calibrate(closes, cal, closes[cal])
    intervals = prediction_intervals(closes, closes, calibration)  # every session as of itself
    assert np.isnan(intervals["lower_80"][:20]).all() and np.isfinite(intervals["lower_80"][20:]).all()


def test_calibration_round_trips_through_json():
    closes = gaussian_prices(np.full(700, 0.01), seed=4)
    calibration = calibrate(closes, np.arange(100, 400), closes[100:400])
    _, tracked = tracked_intervals(closes, closes[400:699], calibration, np.arange(400, 699))
    for fitted in (calibration, tracked):
        text = json.dumps(codec.dump(fitted), allow_nan=False)
        assert codec.load(IntervalCalibration, json.loads(text)) == fitted
    assert tracked.n_tracked == 299 and tracked.quantiles != calibration.quantiles
    assert tracked.calibrated_quantiles == calibration.quantiles


# -- coverage on synthetic data ------------------------------------------------------------------


def test_coverage_holds_through_volatility_regime_shifts_where_the_naive_baseline_fails():
    closes = regime_prices(seed=0)
    cal, test = np.arange(250, 1000), np.arange(1000, len(closes) - 1)
    calibration = calibrate(closes, cal, closes[cal])
    actual, last = closes[test + 1], closes[test]

    static = score_intervals(actual, prediction_intervals(closes, last, calibration, test), last)
    tracked = score_intervals(actual, tracked_intervals(closes, last, calibration, test)[0], last)
    naive = score_intervals(actual, naive_intervals(closes, test), last)

    # Over 40 seeds: static 0.78-0.83 / 0.94-0.96, tracked 0.797-0.804 / 0.947-0.953, naive 95% at most 0.924.
    assert abs(static["coverage_80"] - 0.80) <= 0.03 and abs(static["coverage_95"] - 0.95) <= 0.015
    assert abs(tracked["coverage_80"] - 0.80) <= 0.01 and abs(tracked["coverage_95"] - 0.95) <= 0.01
    assert naive["coverage_95"] < 0.93
    assert static["winkler_95"] < naive["winkler_95"] and tracked["winkler_95"] < naive["winkler_95"]


def test_tracking_restores_coverage_that_a_shift_broke():
    # Calibrated on unbiased forecasts, then the forecaster starts missing by 0.8 daily sigma.
    closes = gaussian_prices(np.full(2000, 0.01), seed=5)
    cal, test = np.arange(250, 1000), np.arange(1000, len(closes) - 1)
    calibration = calibrate(closes, cal, closes[cal])
    biased = closes[test] * math.exp(0.008)
    actual = closes[test + 1]
    static = score_intervals(actual, prediction_intervals(closes, biased, calibration, test), closes[test])
    tracked = score_intervals(actual, tracked_intervals(closes, biased, calibration, test)[0], closes[test])
    # Over 10 seeds: static 0.65-0.70 / 0.86-0.91, tracked 0.789-0.797 / 0.939-0.947 (it takes a while to catch up).
    assert static["coverage_80"] < 0.72 and static["coverage_95"] < 0.92
    assert abs(tracked["coverage_80"] - 0.80) <= 0.015 and abs(tracked["coverage_95"] - 0.95) <= 0.015


def test_tracking_moves_each_quantile_by_eta_times_miss_minus_alpha():
    closes = regime_prices(seed=6)
    cal, test = np.arange(250, 1000), np.arange(1000, 1400)
    calibration = calibrate(closes, cal, closes[cal])
    intervals, tracked = tracked_intervals(closes, closes[test], calibration, test)
    first = prediction_intervals(closes, closes[test[:1]], calibration, test[:1])
    assert all(intervals[name][0] == first[name][0] for name in COLUMNS)
    for level, q0, q_end in zip(calibration.levels, calibration.quantiles, tracked.quantiles, strict=False):
        lower, upper = interval_columns(level)
        missed = ~((closes[test + 1] >= intervals[lower]) & (closes[test + 1] <= intervals[upper]))
        eta = calibration.step * q0
        assert q_end == pytest.approx(q0 + eta * np.sum(missed - (1 - level)), rel=1e-9)
    # Without a step, tracking is the plain split-conformal interval.
    still = calibrate(closes, cal, closes[cal], step=0.0)
    frozen, unchanged = tracked_intervals(closes, closes[test], still, test)
    static = prediction_intervals(closes, closes[test], still, test)
    assert all(np.array_equal(frozen[name], static[name]) for name in COLUMNS)
    assert unchanged.quantiles == still.quantiles


def test_tracking_learns_only_from_known_outcomes():
    closes = gaussian_prices(np.full(400, 0.01), seed=10)
    calibration = calibrate(closes, np.arange(50, 300), closes[50:300])
    positions = np.arange(300, 401)  # 400 is the last close: its outcome is tomorrow's
    forecasts = closes[positions].copy()
    forecasts[10] = np.nan  # a session the model gave no forecast for
    intervals, tracked = tracked_intervals(closes, forecasts, calibration, positions)
    assert tracked.n_tracked == 99
    assert np.isfinite(intervals["lower_95"][-1]) and np.isnan(intervals["lower_95"][10])
    _, without_last = tracked_intervals(closes, forecasts[:-1], calibration, positions[:-1])
    assert without_last.quantiles == tracked.quantiles


def test_tracking_needs_sessions_in_order():
    closes = gaussian_prices(np.full(400, 0.01))
    calibration = calibrate(closes, np.arange(50, 300), closes[50:300])
    with pytest.raises(ValueError, match="increasing"):
        tracked_intervals(closes, closes[[310, 305]], calibration, [310, 305])


# -- no look-ahead -------------------------------------------------------------------------------


def test_changing_prices_after_the_as_of_day_does_not_change_its_interval():
    closes = regime_prices(seed=7)
    cal, test = np.arange(250, 1000), np.arange(1000, 1300)
    calibration = calibrate(closes, cal, closes[cal])
    cut = 1150  # the as-of sessions up to and including this one must not see what follows
    rng = np.random.default_rng(8)
    altered = closes.copy()
    altered[cut + 1 :] *= np.exp(rng.normal(0, 0.05, len(closes) - cut - 1))
    seen = test <= cut

    def all_intervals(prices):
        return {
            "static": prediction_intervals(prices, prices[test], calibration, test),
            "tracked": tracked_intervals(prices, prices[test], calibration, test)[0],
            "naive": naive_intervals(prices, test),
        }

    before, after = all_intervals(closes), all_intervals(altered)
    for method in before:
        for name in COLUMNS:
            np.testing.assert_array_equal(before[method][name][seen], after[method][name][seen])
            assert not np.array_equal(before[method][name][~seen], after[method][name][~seen])


# -- naive baseline ------------------------------------------------------------------------------


def test_naive_intervals_are_the_last_close_times_empirical_return_quantiles():
    closes = gaussian_prices(np.full(100, 0.01), seed=9)
    r = np.diff(np.log(closes))
    intervals = naive_intervals(closes, [40, 99], lookback=30, min_returns=20)
    for out, i in enumerate([40, 99]):
        recent = r[i - 30 : i]  # the 30 returns into closes i-29 .. i
        low, high = np.quantile(recent, [0.1, 0.9])
        assert intervals["lower_80"][out] == pytest.approx(closes[i] * math.exp(low), rel=1e-12)
        assert intervals["upper_80"][out] == pytest.approx(closes[i] * math.exp(high), rel=1e-12)
        low, high = np.quantile(recent, [0.025, 0.975])
        assert intervals["lower_95"][out] == pytest.approx(closes[i] * math.exp(low), rel=1e-12)
    early = naive_intervals(closes, [10, 19, 20], lookback=30, min_returns=20)
    assert np.isnan(early["lower_80"][:2]).all() and np.isfinite(early["lower_80"][2])


# -- scores --------------------------------------------------------------------------------------


def test_winkler_score_by_hand():
    # 80%: alpha 0.2, so a miss costs 2 / 0.2 = 10 per unit beyond the bound.
    actual = np.array([10.0, 12.0, 8.5])
    lower, upper = np.full(3, 9.0), np.full(3, 11.0)
    np.testing.assert_allclose(winkler_scores(actual, lower, upper, 0.8), [2.0, 12.0, 7.0])
    score = score_interval(actual, lower, upper, 0.8, price=np.full(3, 10.0))
    assert score.coverage == pytest.approx(1 / 3)
    assert score.mean_width == 2.0 and score.mean_relative_width == pytest.approx(0.2)
    assert score.winkler == pytest.approx(7.0)


def test_a_missing_interval_counts_as_a_miss():
    score = score_interval(
        np.array([10.0, 10.0]), np.array([9.0, np.nan]), np.array([11.0, np.nan]), 0.95, price=np.array([10.0, 10.0])
    )
    assert score.coverage == 0.5


def test_score_intervals_names_metrics_by_level():
    actual = np.array([10.0, 12.0])
    intervals = {
        "lower_80": np.array([9.0, 9.0]),
        "upper_80": np.array([11.0, 11.0]),
        "lower_95": np.array([8.0, 8.0]),
        "upper_95": np.array([12.0, 12.0]),
    }
    metrics = score_intervals(actual, intervals, price=np.array([10.0, 10.0]))
    assert metrics["coverage_80"] == 0.5 and metrics["coverage_95"] == 1.0
    assert metrics["width_95"] == 4.0 and metrics["relative_width_95"] == pytest.approx(0.4)
    assert metrics["winkler_80"] == pytest.approx((2.0 + 12.0) / 2)


# -- the bundled data, split as the pipeline splits it -------------------------------------------


def pipeline_split(ticker: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closes of the last 10 years, the validation and the test as-of positions, as pipeline.models.windows builds them
    with the default TrainingConfig: 60-session windows, test the last 250 windows, validation 10% of all
    windows just before it."""
    prices = pd.read_csv(BUNDLED_SNAPSHOTS / f"{ticker}.csv", parse_dates=["Date"])
    start = prices["Date"].max() - pd.DateOffset(days=round(10 * 365.25))
    closes = prices.loc[prices["Date"] > start, "Close"].to_numpy(dtype="float64")
    as_of = np.arange(60, len(closes) - 1)
    n_val = round(0.1 * len(as_of))
    return closes, as_of[-250 - n_val : -250], as_of[-250:]


@pytest.mark.parametrize("ticker", ["MSFT", "GSPC"])
def test_coverage_on_the_bundled_test_sessions(ticker):
    # The naive forecast stands in for the LSTM, whose forecasts stay within ~0.1% of it.
    closes, val, test = pipeline_split(ticker)
    calibration = calibrate(closes, val, closes[val])
    intervals, _ = tracked_intervals(closes, closes[test], calibration, test)
    metrics = score_intervals(closes[test + 1], intervals, closes[test])
    assert 0.77 <= metrics["coverage_80"] <= 0.83
    assert 0.92 <= metrics["coverage_95"] <= 0.98
