"""Scoring: the challenger, the champion and the naive forecast on the same test sessions, from the same raw prices.

Nothing here decides; `pipeline.evaluation.promotion.decide` turns the scores' evidence into a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline.evaluation.evidence import CHALLENGER, CHAMPION, NAIVE, Evidence, gather_evidence
from pipeline.evaluation.interval_scores import score_intervals
from pipeline.evaluation.metrics import point_metrics
from pipeline.evaluation.served_intervals import IntervalChoice, choose_intervals, served_bounds
from pipeline.models.conformal import IntervalCalibration, tracked_intervals
from pipeline.models.forecasters import NAIVE as NAIVE_KIND
from pipeline.models.forecasters import Forecaster, LstmForecaster, forecasts_on, min_input_rows, to_model_input
from pipeline.models.intervals import LEVELS, interval_columns
from pipeline.models.naive_intervals import naive_intervals
from pipeline.models.references import reference_intervals
from pipeline.models.training import as_of_positions
from pipeline.models.windows import Dataset


@dataclass(frozen=True)
class Scores:
    """Everything measured on the test sessions: forecasts, point metrics per model, intervals and evidence."""

    as_of: pd.DatetimeIndex
    target_date: pd.DatetimeIndex
    actual: np.ndarray
    last_close: np.ndarray
    forecasts: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]
    evidence: Evidence
    # Per model with intervals: column name (lower_80, ...) -> bounds on the test sessions.
    bounds: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    interval_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    # The challenger's interval quantiles after tracking every test session: what it serves with from here on.
    challenger_calibration: IntervalCalibration | None = None
    # The interval method the sessions before the test ones favour (what a naive champion serves), with every
    # candidate's validation scores, and how it scored on the test sessions.
    served_choice: IntervalChoice | None = None
    chosen_metrics: dict[str, float] | None = None

    @property
    def test_days(self) -> list[str]:
        return [day.strftime("%Y-%m-%d") for day in self.target_date]


def forecast_on_test(model: Forecaster, dataset: Dataset, positions: np.ndarray) -> pd.DataFrame:
    """A forecaster's predictions (intervals included if it has them) from the sessions the as-of positions need:
    the model's own lookback before the first (`min_input_rows`, exact by its contract), not the whole history."""
    first = max(0, int(positions.min()) - min_input_rows(model) + 1) if positions.size else 0
    return model.predict(to_model_input(dataset.history.iloc[first:]))


def score(
    dataset: Dataset,
    challenger: LstmForecaster,
    champion: Forecaster,
    blocks: int,
    champion_serves_chosen: bool = False,
) -> Scores:
    """`champion_serves_chosen`: the champion serves the chosen method's intervals (a naive one always does)."""
    test = dataset.test
    closes = dataset.history["Close"].to_numpy("float64")
    positions = as_of_positions(dataset, test.as_of)
    champion_frame = forecast_on_test(champion, dataset, positions)
    forecasts = {
        CHALLENGER: challenger.point_forecasts_at(closes, positions),
        CHAMPION: forecasts_on(champion_frame, test.as_of),
        NAIVE: test.last_close.astype("float64"),
    }
    metrics = {name: point_metrics(test.next_close, values, test.last_close) for name, values in forecasts.items()}
    evidence = gather_evidence(
        test.next_close, forecasts[CHALLENGER], forecasts[CHAMPION], forecasts[NAIVE], blocks, dates=test.target_date
    )
    # The textbook references (EWMA, GARCH-t around "tomorrow = today") beside every model, on the same sessions.
    bounds: dict[str, dict[str, np.ndarray]] = {
        NAIVE: naive_intervals(closes, positions),
        **reference_intervals(closes, positions),
    }
    calibration = None
    if challenger.calibration is not None:
        # Each test session's interval uses only earlier outcomes; the state after the last one is what serves next.
        bounds[CHALLENGER], calibration = tracked_intervals(
            closes, forecasts[CHALLENGER], challenger.calibration, positions
        )
    served_choice = _served_choice(dataset, positions)
    chosen_metrics = None
    if served_choice is not None:
        # The method the validation sessions favour, tracked over the test sessions: what a naive champion serves,
        # and what a promoted challenger serves if its own intervals score worse.
        chosen = served_bounds(dataset.history, served_choice, positions)
        chosen_metrics = score_intervals(test.next_close, chosen, test.last_close)
    if served_choice is not None and (champion.kind == NAIVE_KIND or champion_serves_chosen):
        bounds[CHAMPION] = chosen
    elif own := _own_bounds(champion_frame, test.as_of):
        bounds[CHAMPION] = own
    interval_metrics = {
        name: score_intervals(test.next_close, values, test.last_close) for name, values in bounds.items()
    }
    return Scores(
        test.as_of,
        test.target_date,
        test.next_close,
        test.last_close,
        forecasts,
        metrics,
        evidence,
        bounds,
        interval_metrics,
        calibration,
        served_choice,
        chosen_metrics,
    )


def _own_bounds(frame: pd.DataFrame, as_of: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """The bounds a model's own predictions carry on the test sessions (none for a model without intervals)."""
    columns = [c for level in LEVELS for c in interval_columns(level) if c in frame]
    return {c: forecasts_on(frame, as_of, c) for c in columns}


def _served_choice(dataset: Dataset, positions: np.ndarray) -> IntervalChoice | None:
    """The interval method chosen on the sessions before the test ones; None if the history is too short to choose."""
    if not positions.size:
        return None
    try:
        return choose_intervals(dataset.history, int(positions[0]))
    except ValueError:
        return None
