"""The served forecasts' live record, wired to the stores: record what the champion serves for the next session,
and score what it served before once the prices show how it turned out."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipeline.common.outcome import utc_now
from pipeline.data.forecast_log import BOUNDS, ForecastLog, ServedForecast
from pipeline.evaluation.live_record import LiveRecord, live_record, score_matured
from pipeline.models.forecasters import Forecaster
from pipeline.serving import forecast_next


def record_served(
    log: ForecastLog,
    ticker: str,
    model: Forecaster,
    history: pd.DataFrame,
    model_version: str,
    chosen_intervals: bool,
) -> ServedForecast:
    """The champion's forecast for the session after the last stored one, exactly as `predict` serves it, recorded."""
    served = forecast_next(ticker, model, history, model_version, chosen_intervals)
    forecast = ServedForecast(
        as_of=dt.date.fromisoformat(served.as_of),
        target=dt.date.fromisoformat(served.forecast_date),
        model_version=served.model_version,
        last_close=served.last_close,
        point=served.forecast_close,
        lower_80=served.lower_80,
        upper_80=served.upper_80,
        lower_95=served.lower_95,
        upper_95=served.upper_95,
        interval_method=served.interval_method,
    )
    log.record(ticker, forecast, utc_now())
    return forecast


def on_the_run(forecast: ServedForecast) -> tuple[dict[str, float], dict[str, str]]:
    """The served forecast as the day's MLflow run keeps it: the point and bounds as metrics (a bound not given is
    left out), the target session, version and interval method as tags."""
    figures = {
        "served_forecast_close": forecast.point,
        **{f"served_forecast_{bound}": getattr(forecast, bound) for bound in BOUNDS},
    }
    metrics = {name: float(value) for name, value in figures.items() if value is not None}
    tags = {
        "served_forecast_date": forecast.target.isoformat(),
        "served_forecast_version": forecast.model_version,
        "served_forecast_interval_method": forecast.interval_method or "none",
    }
    return metrics, tags


def record_of(log: ForecastLog, ticker: str, prices: pd.DataFrame, model_version: str) -> LiveRecord:
    """The version's live record from what the log holds and the prices now stored (raises ForecastLogUnreadable)."""
    return live_record(score_matured(log.read(ticker), prices), model_version)
