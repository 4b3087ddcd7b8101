"""The next session's forecast from the registered champion, fed with raw stored prices."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass

import pandas as pd

from pipeline.forecasters import to_model_input
from pipeline.trading_calendar import next_session

# Enough sessions for any window the settings allow; the model picks what it needs from them.
DEFAULT_INPUT_ROWS = 400


@dataclass(frozen=True)
class Forecast:
    ticker: str
    as_of: str
    last_close: float
    forecast_date: str
    forecast_close: float
    model_version: str
    model_kind: str

    def to_dict(self) -> dict:
        return asdict(self)


def input_rows(model) -> int:
    """Rows of history the served model needs, from the metadata it was logged with."""
    metadata = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    return int(metadata.get("min_input_rows", DEFAULT_INPUT_ROWS))


def forecast_next(ticker: str, model, history: pd.DataFrame, model_version: str, model_kind: str) -> Forecast:
    """Forecast the session after the last stored one."""
    if history.empty:
        raise ValueError(f"{ticker}: no stored prices; run `stockpipe run` first")
    recent = history.tail(input_rows(model))
    predictions = model.predict(to_model_input(recent))
    if predictions.empty:
        raise ValueError(f"{ticker}: the model needs more history than the {len(recent)} stored session(s)")
    last = predictions.iloc[-1]
    as_of = dt.date.fromisoformat(str(last["as_of"]))
    last_close = float(recent.loc[pd.to_datetime(recent["Date"]).dt.date == as_of, "Close"].iloc[-1])
    return Forecast(
        ticker=ticker,
        as_of=as_of.isoformat(),
        last_close=last_close,
        forecast_date=next_session(as_of).isoformat(),
        forecast_close=float(last["forecast_close"]),
        model_version=str(model_version),
        model_kind=model_kind,
    )
