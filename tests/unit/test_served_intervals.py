"""pipeline.evaluation.served_intervals: the interval method a naive champion serves, chosen on validation sessions
before the out-of-sample ones, and nothing after that point touching the choice or its parameters."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.served_intervals import (
    CANDIDATES,
    EMPIRICAL,
    LONGEST_VALIDATION,
    MIN_FIT,
    WINDOW,
    IntervalChoice,
    _choose,
    choose_intervals,
    served_bounds,
)
from pipeline.models import model_files
from pipeline.models.forecasters import NaiveForecaster
from pipeline.serving import forecast_next
from tests.support import bundled

END = dt.date(2017, 11, 10)
LOGGED_LSTM = Path(__file__).resolve().parents[1] / "data" / "logged_models" / "lstm"


@pytest.fixture(scope="module")
def msft():
    history = bundled("MSFT", as_of=END).tail(2000).reset_index(drop=True)
    return history, history["Close"].to_numpy("float64")


def test_every_candidate_is_scored_on_validation_and_the_choice_is_one_of_them(msft):
    history, closes = msft
    first = len(closes) - 251
    choice = choose_intervals(history, first)
    assert set(choice.validation) == set(CANDIDATES)
    assert choice.method in CANDIDATES and choice.first_out_of_sample == first
    for scores in choice.validation.values():
        assert 0.6 < scores["coverage_80"] < scores["coverage_95"] <= 1 and scores["winkler_80"] > 0
    assert len(choice.quantiles) == (0 if choice.method == EMPIRICAL else 2)


def test_prices_from_the_first_out_of_sample_target_on_never_touch_the_choice(msft):
    history, closes = msft
    first = len(closes) - 251
    choice = choose_intervals(history, first)
    shocked = history.copy()
    later = shocked.index > first  # every target close of the out-of-sample sessions, and their bars
    for column in ("Open", "High", "Low", "Close"):
        shocked.loc[later, column] = shocked.loc[later, column] * 1.5
    again = choose_intervals(shocked, first)
    assert dataclasses.asdict(again) == dataclasses.asdict(choice), "bit-identical method, quantiles and fits"


def test_served_bounds_start_from_the_recalibrated_quantiles_and_track_known_outcomes(msft):
    history, closes = msft
    first = len(closes) - 251
    choice = choose_intervals(history, first)
    positions = np.arange(first, len(closes) - 1)
    bounds = served_bounds(history, choice, positions)
    assert set(bounds) == {"lower_80", "upper_80", "lower_95", "upper_95"}
    assert np.all(bounds["lower_95"] < bounds["lower_80"]) and np.all(bounds["lower_80"] < closes[positions])
    assert np.all(closes[positions] < bounds["upper_80"]) and np.all(bounds["upper_80"] < bounds["upper_95"])
    # One position alone gets the same bounds as in the run over the whole span (tracking starts at `first`).
    alone = served_bounds(history, choice, positions[:1])
    assert alone["upper_80"][0] == bounds["upper_80"][0]
    with pytest.raises(ValueError, match="first out-of-sample"):
        served_bounds(history, choice, positions - 1)


def test_validation_takes_500_sessions_where_the_history_allows_and_the_rest_of_a_shorter_one(msft):
    history, closes = msft
    assert choose_intervals(history, len(closes) - 1).validation_sessions == LONGEST_VALIDATION
    short = history.tail(900).reset_index(drop=True)
    choice = choose_intervals(short, len(short) - 1)
    # 899 as-of sessions before the first out-of-sample one: a return, the fits' 250, calibration's 250, the rest.
    assert choice.validation_sessions == 899 - 1 - MIN_FIT - WINDOW == 398
    assert "398 validation sessions" in choice.description
    shortest = history.tail(2 * WINDOW + 2).reset_index(drop=True)
    assert choose_intervals(shortest, len(shortest) - 1).validation_sessions == WINDOW


def test_a_history_shorter_than_the_two_windows_cannot_choose(msft):
    history, _ = msft
    short = history.tail(2 * WINDOW).reset_index(drop=True)
    with pytest.raises(ValueError, match="sessions with forecasts"):
        choose_intervals(short, len(short) - 1)


def test_the_rule_prefers_calibrated_coverage_then_the_lowest_relative_winkler():
    def scores(c80: float, c95: float, w80: float, w95: float) -> dict[str, float]:
        return {"coverage_80": c80, "coverage_95": c95, "winkler_80": w80, "winkler_95": w95}

    validation = {
        "empirical": scores(0.80, 0.95, 10.0, 20.0),
        "ewma": scores(0.70, 0.95, 5.0, 10.0),  # sharper, but 10 points short of 80%: not chosen while others cover
        "garch": scores(0.81, 0.94, 9.0, 19.0),
        "har_garman_klass": scores(0.79, 0.96, 9.5, 18.0),
    }
    # garch: 0.9 + 0.95 = 1.85; har: 0.95 + 0.9 = 1.85 - a tie goes to the earlier candidate.
    assert _choose(validation) == "garch"
    validation["har_garman_klass"] = scores(0.79, 0.96, 9.0, 18.0)
    assert _choose(validation) == "har_garman_klass"
    off = {name: scores(0.5, 0.6, w, 2 * w) for name, w in (("empirical", 10.0), ("ewma", 4.0))}
    assert _choose(off) == "ewma", "when none covers within 3 points, the best score still serves"


def test_the_description_names_the_method_and_where_it_was_chosen():
    choice = IntervalChoice("har_garman_klass", 100, (1.2, 1.9), {})
    assert "HAR" in choice.description and "validation" in choice.description
    assert math.isfinite(choice.quantiles[0])


def test_predict_serves_a_naive_champion_the_method_chosen_on_the_latest_validation_sessions(msft):
    history, closes = msft
    forecast = forecast_next("MSFT", NaiveForecaster(), history, "1")
    choice = choose_intervals(history, len(closes) - 1)
    bounds = served_bounds(history, choice, np.array([len(closes) - 1]))
    assert forecast.forecast_close == closes[-1] and forecast.as_of == "2017-11-10"
    assert forecast.interval_method == choice.description
    assert (forecast.lower_80, forecast.upper_95) == (bounds["lower_80"][0], bounds["upper_95"][0])
    assert forecast.lower_95 < forecast.lower_80 < forecast.forecast_close < forecast.upper_80 < forecast.upper_95


def test_predict_falls_back_to_the_models_own_bounds_on_a_short_history(msft):
    history, _ = msft
    short = history.tail(300).reset_index(drop=True)
    forecast = forecast_next("MSFT", NaiveForecaster(), short, "1")
    assert forecast.interval_method == NaiveForecaster.interval_method
    assert forecast.lower_80 is not None and forecast.lower_80 < forecast.forecast_close


def test_a_volatility_model_that_cannot_be_fitted_sits_out_and_a_method_is_still_chosen(msft):
    history, closes = msft
    flat = history.copy()
    first = len(closes) - 251
    # Every session up to the end of the fit window trades at one price: GARCH has no variance to fit.
    for column in ("Open", "High", "Low", "Close"):
        flat.loc[: first - LONGEST_VALIDATION - WINDOW - 1, column] = 50.0
    choice = choose_intervals(flat, first)
    assert "garch" not in choice.validation and choice.garch is None
    assert choice.method in choice.validation
    bounds = served_bounds(flat, choice, np.arange(first, len(closes) - 1))
    assert all(np.isfinite(values).all() for values in bounds.values())


def test_predict_serves_an_lstm_crowned_with_chosen_intervals_its_point_and_the_chosen_bounds(msft):
    history, closes = msft
    lstm = model_files.load(LOGGED_LSTM / model_files.ARTIFACTS_DIR)
    own = forecast_next("MSFT", lstm, history, "2")
    crowned = forecast_next("MSFT", lstm, history, "2", chosen_intervals=True)
    choice = choose_intervals(history, len(closes) - 1)
    bounds = served_bounds(history, choice, np.array([len(closes) - 1]))
    assert crowned.forecast_close == own.forecast_close, "the point forecast stays the model's"
    assert crowned.interval_method == choice.description != own.interval_method
    assert crowned.lower_95 == bounds["lower_95"][0] and crowned.upper_80 == bounds["upper_80"][0]
    assert own.lower_95 != crowned.lower_95
