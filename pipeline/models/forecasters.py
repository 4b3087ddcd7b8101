"""Forecasters that take raw daily prices and return next-session closes: the naive baseline and the LSTM.

Input: rows `Date, Open, High, Low, Close, Volume` (Date as YYYY-MM-DD), oldest first.
Output: one row per input session that has enough history: `as_of` (that session), `forecast_close` (the forecast for
the session after it) and, where the model has them, interval bounds. Both kinds keep this one contract, so a champion
of either kind is scored on any challenger's test sessions.

A forecaster is data, never code: its `spec()` is plain JSON (and the LSTM's weights a Keras `.keras` file), which
`pipeline.models.model_files` stores and loads back without unpickling anything.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipeline.common import codec
from pipeline.data.sources import COLUMNS
from pipeline.models.conformal import IntervalCalibration, prediction_intervals
from pipeline.models.features import FEATURE_NAMES, Scaling, window_features
from pipeline.models.naive_intervals import NAIVE_INTERVAL_METHOD, NAIVE_LOOKBACK, naive_intervals
from pipeline.models.volatility import EWMA_WINDOW

NAIVE = "naive"
LSTM = "lstm"
# Bumped when a spec's meaning changes, so an old model is refused by name instead of misread.
SPEC_FORMAT = 1


class Forecaster(Protocol):
    kind: str

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame: ...

    def spec(self) -> dict[str, Any]: ...


def to_model_input(prices: pd.DataFrame) -> pd.DataFrame:
    """Raw prices in the served schema (ISO dates as strings, so JSON clients can send them)."""
    frame = prices[COLUMNS].copy()
    frame["Date"] = pd.to_datetime(frame["Date"]).dt.strftime("%Y-%m-%d")
    # Float so a JSON client may send any number; volume is not a model input.
    frame["Volume"] = frame["Volume"].astype("float64")
    return frame.reset_index(drop=True)


def closes_and_dates(model_input: pd.DataFrame) -> tuple[np.ndarray, pd.Series]:
    frame = pd.DataFrame(model_input)
    if "Close" not in frame or "Date" not in frame:
        raise ValueError(f"model input needs Date and Close columns, got {list(frame.columns)[:10]}")
    frame = frame.assign(Date=pd.to_datetime(frame["Date"])).sort_values("Date", kind="stable")
    return frame["Close"].to_numpy(dtype="float64"), frame["Date"].dt.strftime("%Y-%m-%d").reset_index(drop=True)


def forecast_frame(as_of: pd.Series, forecast: np.ndarray, bounds: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(
        {"as_of": as_of.to_numpy(dtype=object), "forecast_close": np.asarray(forecast, dtype="float64")}
    )
    for column, values in (bounds or {}).items():
        frame[column] = np.asarray(values, dtype="float64")
    return frame


class NaiveForecaster:
    """Persistence: tomorrow's close is today's close, with intervals from the empirical quantiles of recent returns
    (so every forecast, even the baseline's, says how sure it is)."""

    kind = NAIVE
    interval_method = NAIVE_INTERVAL_METHOD

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        closes, dates = closes_and_dates(model_input)
        return forecast_frame(dates, closes, naive_intervals(closes))

    def spec(self) -> dict[str, Any]:
        return {"kind": NAIVE, "format": SPEC_FORMAT}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> NaiveForecaster:
        return cls()


class LstmForecaster:
    """An LSTM forecasting the next log return from windows normalised by their last close."""

    kind = LSTM

    def __init__(
        self,
        keras_model: Any,
        scaling: Scaling,
        window: int,
        shrinkage: float = 1.0,
        calibration: IntervalCalibration | None = None,
    ):
        self.keras_model = keras_model
        self.scaling = scaling
        self.window = int(window)
        # Fraction of the network's predicted return kept (estimated on validation): 0 is "tomorrow = today".
        self.shrinkage = float(shrinkage)
        self.calibration = calibration

    @property
    def interval_method(self) -> str | None:
        return None if self.calibration is None else self.calibration.method

    def with_calibration(self, calibration: IntervalCalibration) -> LstmForecaster:
        return LstmForecaster(self.keras_model, self.scaling, self.window, self.shrinkage, calibration)

    def point_forecasts(self, closes: np.ndarray) -> np.ndarray:
        """Forecasts for every close with a full window behind it (close index `window` onwards)."""
        features = window_features(closes, self.window)
        if len(features) == 0:
            raise ValueError(f"the LSTM needs at least {self.window + 1} sessions of prices, got {len(closes)}")
        return closes[self.window :] * np.exp(self.shrinkage * self.network_returns(features))

    def point_forecasts_at(self, closes: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Forecasts made at the given close positions only: the network sees just those windows (scoring and
        calibration need a year of sessions, not the ten years a full pass would push through it)."""
        positions = np.asarray(positions, dtype="int64")
        if positions.size and (positions.min() < self.window or positions.max() >= len(closes)):
            raise ValueError(f"as-of positions must lie in [{self.window}, {len(closes)}), got {positions.min()}..")
        features = window_features(closes, self.window)[positions - self.window]
        return closes[positions] * np.exp(self.shrinkage * self.network_returns(features))

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        closes, dates = closes_and_dates(model_input)
        forecast = self.point_forecasts(closes)
        bounds = None
        if self.calibration is not None:
            positions = np.arange(self.window, len(closes))
            bounds = prediction_intervals(closes, forecast, self.calibration, positions)
        return forecast_frame(dates.iloc[self.window :], forecast, bounds)

    def network_returns(self, features: np.ndarray) -> np.ndarray:
        """The network's next log returns for windows of features, before any shrinkage."""
        # Keras's `predict` would retrace a tf.function for every new input length; this traces once a thread.
        from pipeline.models.lstm import network_outputs

        scaled = network_outputs(self.keras_model, self.scaling.features(features))
        return self.scaling.inverse_target(scaled.reshape(-1))

    def spec(self) -> dict[str, Any]:
        return {
            "kind": LSTM,
            "format": SPEC_FORMAT,
            "window": self.window,
            "features": list(FEATURE_NAMES),
            "scaling": codec.dump(self.scaling),
            "shrinkage": self.shrinkage,
            "intervals": None if self.calibration is None else codec.dump(self.calibration),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], keras_model: Any) -> LstmForecaster:
        if list(spec.get("features", [])) != list(FEATURE_NAMES):
            raise ValueError(
                f"the model was trained on features {spec.get('features')}, this code computes {list(FEATURE_NAMES)}"
            )
        calibration = codec.load(IntervalCalibration, spec["intervals"]) if spec.get("intervals") else None
        return cls(
            keras_model,
            codec.load(Scaling, spec["scaling"]),
            int(spec["window"]),
            float(spec["shrinkage"]),
            calibration,
        )


def forecasts_on(
    predictions: pd.DataFrame, as_of_dates: pd.DatetimeIndex, column: str = "forecast_close"
) -> np.ndarray:
    """A model's forecasts for the given as-of sessions; fails loudly if any is missing."""
    by_date = predictions.set_index("as_of")[column]
    wanted = as_of_dates.strftime("%Y-%m-%d")
    missing = wanted.difference(by_date.index)
    if len(missing):
        raise ValueError(f"model gave no forecast for {len(missing)} session(s), first {missing[0]}")
    return by_date.loc[wanted].to_numpy(dtype="float64")


def min_input_rows(forecaster: Forecaster) -> int:
    """Sessions a served model needs for exact forecasts and intervals (volatility and naive quantiles look back a
    year); fewer still forecast, with wider uncertainty about the volatility."""
    window = getattr(forecaster, "window", 0)
    return max(window, EWMA_WINDOW, NAIVE_LOOKBACK) + 1
