"""The served forecast, wired to the store and the run: record what the champion serves for the next session, as
`predict` serves it, so a later day can score it (`pipeline.evaluation.live_record`)."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from pipeline.common.outcome import utc_now
from pipeline.common.trading_calendar import DEFAULT_EXCHANGE
from pipeline.data.forecast_log import BOUNDS, ForecastLog, ServedForecast
from pipeline.models.forecasters import Forecaster
from pipeline.serving import forecast_next


def record_served(
    log: ForecastLog,
    ticker: str,
    model: Forecaster,
    history: pd.DataFrame,
    model_version: str,
    chosen_intervals: bool,
    exchange: str = DEFAULT_EXCHANGE,
) -> ServedForecast:
    """The champion's forecast for the session after the last stored one, exactly as `predict` serves it, recorded."""
    served = forecast_next(ticker, model, history, model_version, chosen_intervals, exchange)
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
