"""MLflow pyfunc forecasters that take raw daily prices and return next-session closes.

Input: rows `Date, Open, High, Low, Close, Volume` (Date as YYYY-MM-DD), oldest first.
Output: one row per input session that has enough history: `as_of` (that session) and
`forecast_close` (the forecast for the session after it). The same contract serves the naive
baseline and the LSTM, so a champion of either kind is re-scored on any challenger's test days.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.features import FEATURE_NAMES, Standardizer, window_features
from pipeline.sources import COLUMNS

NAIVE = "naive"
LSTM = "lstm"
KERAS_ARTIFACT = "keras_model"
PREPROCESSING_ARTIFACT = "preprocessing"


def to_model_input(prices: pd.DataFrame) -> pd.DataFrame:
    """Raw prices in the served schema (ISO dates as strings, so JSON clients can send them)."""
    frame = prices[COLUMNS].copy()
    frame["Date"] = pd.to_datetime(frame["Date"]).dt.strftime("%Y-%m-%d")
    # Float so a JSON client may send any number; volume is not a model input.
    frame["Volume"] = frame["Volume"].astype("float64")
    return frame.reset_index(drop=True)


def _closes_and_dates(model_input: pd.DataFrame) -> tuple[np.ndarray, pd.Series]:
    frame = pd.DataFrame(model_input)
    if "Close" not in frame or "Date" not in frame:
        raise ValueError(f"model input needs Date and Close columns, got {list(frame.columns)}")
    frame = frame.assign(Date=pd.to_datetime(frame["Date"])).sort_values("Date", kind="stable")
    return frame["Close"].to_numpy(dtype="float64"), frame["Date"].dt.strftime("%Y-%m-%d").reset_index(drop=True)


def _output(as_of: pd.Series, forecast: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"as_of": as_of.to_numpy(dtype=object), "forecast_close": np.asarray(forecast, dtype="float64")})


class NaiveForecaster(mlflow.pyfunc.PythonModel):
    """Persistence: tomorrow's close is today's close."""

    kind = NAIVE

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        closes, dates = _closes_and_dates(model_input)
        return _output(dates, closes)


class LstmForecaster(mlflow.pyfunc.PythonModel):
    """An LSTM forecasting the next log return from windows normalised by their last close."""

    kind = LSTM

    def __init__(self, keras_model=None, scaler: Standardizer | None = None, window: int | None = None,
                 shrinkage: float = 1.0):
        self._keras_model = keras_model
        self._scaler = scaler
        self._window = window
        # Fraction of the network's predicted return kept (estimated on validation): 0 is "tomorrow = today".
        self._shrinkage = shrinkage

    def __getstate__(self):
        # The network travels as a .keras artifact, not inside the pickle.
        return {}

    def __setstate__(self, state):
        self.__init__()

    @property
    def keras_model(self):
        return self._keras_model

    @property
    def window(self) -> int | None:
        return self._window

    def load_context(self, context) -> None:
        import keras

        spec = json.loads(Path(context.artifacts[PREPROCESSING_ARTIFACT]).read_text())
        self._window = int(spec["window"])
        self._scaler = Standardizer(**spec["scaler"])
        self._shrinkage = float(spec.get("shrinkage", 1.0))
        self._keras_model = keras.models.load_model(context.artifacts[KERAS_ARTIFACT], compile=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        closes, dates = _closes_and_dates(model_input)
        window = self._window
        features = window_features(closes, window)
        if len(features) == 0:
            raise ValueError(f"the LSTM needs at least {window + 1} sessions of prices, got {len(closes)}")
        returns = self._shrinkage * self.network_returns(features)
        last_close = closes[window:]
        return _output(dates.iloc[window:], last_close * np.exp(returns))

    def network_returns(self, features: np.ndarray) -> np.ndarray:
        """The network's next log returns for windows of features, before any shrinkage."""
        # One direct forward pass: `predict` would retrace a tf.function for every new input length.
        scaled = np.asarray(self._keras_model(self._scaler.features(features), training=False))
        return self._scaler.inverse_target(scaled.reshape(-1))

    @staticmethod
    def preprocessing_spec(window: int, scaler: Standardizer, shrinkage: float = 1.0) -> dict:
        return {"window": window, "scaler": scaler.to_dict(), "features": list(FEATURE_NAMES), "shrinkage": shrinkage}

    @property
    def shrinkage(self) -> float:
        return self._shrinkage


def forecasts_on(predictions: pd.DataFrame, as_of_dates: pd.DatetimeIndex) -> np.ndarray:
    """A model's forecasts for the given as-of sessions; fails loudly if any is missing."""
    by_date = predictions.set_index("as_of")["forecast_close"]
    wanted = as_of_dates.strftime("%Y-%m-%d")
    missing = wanted.difference(by_date.index)
    if len(missing):
        raise ValueError(f"model gave no forecast for {len(missing)} session(s), first {missing[0]}")
    return by_date.loc[wanted].to_numpy(dtype="float64")
