"""The next session's forecast from the champion, fed with raw stored prices, with its intervals."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.common.codec import KEEP_NON_FINITE
from pipeline.common.trading_calendar import DEFAULT_EXCHANGE, next_session
from pipeline.evaluation.served_intervals import choose_intervals, served_bounds
from pipeline.models.forecasters import NAIVE, Forecaster, min_input_rows, to_model_input


@dataclass(frozen=True)
class Forecast:
    """What `predict --json` prints, as `pipeline.common.codec.dump` gives it; a bound is None where none was given."""

    # The printed JSON has always shown a non-finite forecast as NaN (the bounds are None before they get there).
    __pydantic_config__ = KEEP_NON_FINITE

    ticker: str
    as_of: str
    last_close: float
    forecast_date: str
    forecast_close: float
    lower_80: float | None
    upper_80: float | None
    lower_95: float | None
    upper_95: float | None
    model_version: str
    model_kind: str
    # How the bounds were made (None when the model gives none).
    interval_method: str | None = None


def _bound(row: pd.Series, column: str) -> float | None:
    value = row.get(column)
    return None if value is None or not math.isfinite(float(value)) else float(value)


def forecast_next(
    ticker: str,
    model: Forecaster,
    history: pd.DataFrame,
    model_version: str,
    chosen_intervals: bool = False,
    exchange: str = DEFAULT_EXCHANGE,
) -> Forecast:
    """Forecast the session after the last stored one (`exchange`'s next). A naive model, or one crowned with
    `chosen_intervals` (its own intervals scored worse at promotion), serves the intervals of the method the latest
    validation sessions favour."""
    if history.empty:
        raise ValueError(f"{ticker}: no stored prices; run `stockpipe run` first")
    recent = history.tail(min_input_rows(model))
    predictions = model.predict(to_model_input(recent))
    if predictions.empty:
        raise ValueError(f"{ticker}: the model needs more history than the {len(recent)} stored session(s)")
    last = predictions.iloc[-1]
    interval_method = getattr(model, "interval_method", None)
    if model.kind == NAIVE or chosen_intervals:
        served = _chosen_served(history)
        if served is not None:
            last = last.copy()
            for column, value in served[0].items():
                last[column] = value
            interval_method = served[1]
    as_of = dt.date.fromisoformat(str(last["as_of"]))
    last_close = float(recent.loc[pd.to_datetime(recent["Date"]).dt.date == as_of, "Close"].iloc[-1])
    return Forecast(
        ticker=ticker,
        as_of=as_of.isoformat(),
        last_close=last_close,
        forecast_date=next_session(as_of, exchange).isoformat(),
        forecast_close=float(last["forecast_close"]),
        lower_80=_bound(last, "lower_80"),
        upper_80=_bound(last, "upper_80"),
        lower_95=_bound(last, "lower_95"),
        upper_95=_bound(last, "upper_95"),
        model_version=str(model_version),
        model_kind=model.kind,
        interval_method=interval_method,
    )


def _chosen_served(history: pd.DataFrame) -> tuple[dict[str, float], str] | None:
    """The next session's bounds around the last close from the interval method the latest validation sessions
    favour, and its description; None when the history is too short to choose (the model's own bounds serve)."""
    prices = history.reset_index(drop=True)
    last = len(prices) - 1
    try:
        choice = choose_intervals(prices, last)
    except ValueError:
        return None
    bounds = served_bounds(prices, choice, np.array([last]))
    return {column: float(values[0]) for column, values in bounds.items()}, choice.description
