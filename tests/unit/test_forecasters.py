"""pipeline.forecasters: the naive and LSTM pyfunc models on raw OHLCV input, and an MLflow save/load round trip."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.forecasters import (
    KERAS_ARTIFACT,
    PREPROCESSING_ARTIFACT,
    LstmForecaster,
    NaiveForecaster,
    forecasts_on,
    to_model_input,
)
from pipeline.settings import BUNDLED_SNAPSHOTS, TrainingConfig
from pipeline.sources import COLUMNS, CsvSource
from pipeline.windows import build_dataset

WINDOW = 10
CONFIG = TrainingConfig(window=WINDOW, units=4, epochs=1, batch_size=32, history_years=5.0)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return CsvSource(BUNDLED_SNAPSHOTS).fetch("MSFT", None, dt.date(2017, 12, 31)).tail(200).reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset(prices):
    return build_dataset(prices, CONFIG)


@pytest.fixture(scope="module")
def lstm(dataset) -> LstmForecaster:
    """An untrained (seeded) network with the dataset's scaler: enough to check the plumbing."""
    pytest.importorskip("keras")
    from pipeline.model import build_lstm

    return LstmForecaster(build_lstm(WINDOW, 2, CONFIG), dataset.scaler, WINDOW)


# -- input schema --------------------------------------------------------------------------------


def test_to_model_input_is_the_served_schema(prices):
    frame = to_model_input(prices.iloc[5:15])
    assert list(frame.columns) == COLUMNS
    assert frame["Date"].tolist() == prices["Date"].iloc[5:15].dt.strftime("%Y-%m-%d").tolist()
    assert frame["Volume"].dtype == np.float64
    assert frame.index.equals(pd.RangeIndex(10))
    np.testing.assert_array_equal(frame["Close"].to_numpy(), prices["Close"].iloc[5:15].to_numpy())


# -- naive ---------------------------------------------------------------------------------------


def test_naive_forecasts_the_last_close_for_every_session(prices):
    out = NaiveForecaster().predict(None, to_model_input(prices))
    assert list(out.columns) == ["as_of", "forecast_close"]
    assert out["as_of"].tolist() == prices["Date"].dt.strftime("%Y-%m-%d").tolist()
    np.testing.assert_array_equal(out["forecast_close"].to_numpy(), prices["Close"].to_numpy())


def test_naive_sorts_unordered_input(prices):
    frame = to_model_input(prices.tail(20))
    out = NaiveForecaster().predict(None, frame.iloc[::-1])
    assert out["as_of"].tolist() == frame["Date"].tolist()
    np.testing.assert_array_equal(out["forecast_close"].to_numpy(), frame["Close"].to_numpy())


def test_naive_needs_date_and_close():
    with pytest.raises(ValueError, match="needs Date and Close"):
        NaiveForecaster().predict(None, pd.DataFrame({"Date": ["2020-01-02"], "Open": [1.0]}))


# -- LSTM ----------------------------------------------------------------------------------------


def test_lstm_gives_one_forecast_per_session_with_a_full_window(lstm, prices):
    out = lstm.predict(None, to_model_input(prices))
    assert list(out.columns) == ["as_of", "forecast_close"]
    assert len(out) == len(prices) - WINDOW
    assert out["as_of"].tolist() == prices["Date"].iloc[WINDOW:].dt.strftime("%Y-%m-%d").tolist()
    forecast = out["forecast_close"].to_numpy()
    assert forecast.dtype == np.float64 and np.all(np.isfinite(forecast)) and np.all(forecast > 0)
    # A one-session forecast of a daily stock stays near the last close.
    ratio = forecast / prices["Close"].iloc[WINDOW:].to_numpy()
    assert np.all((ratio > 0.8) & (ratio < 1.25))


def test_lstm_serving_matches_the_training_windows(lstm, dataset, prices):
    """No train/serve skew: forecasts from raw prices equal the network applied to the dataset's test windows."""
    out = lstm.predict(None, to_model_input(prices))
    served = forecasts_on(out, dataset.test.as_of)
    scaled = np.asarray(lstm.keras_model(dataset.test.x, training=False)).reshape(-1)
    expected = dataset.test.last_close * np.exp(dataset.scaler.inverse_target(scaled))
    np.testing.assert_allclose(served, expected, rtol=1e-6)


def test_lstm_uses_only_the_last_window(lstm, prices):
    full = lstm.predict(None, to_model_input(prices))
    short = lstm.predict(None, to_model_input(prices.tail(WINDOW + 1)))
    assert len(short) == 1
    assert short["as_of"].iloc[0] == full["as_of"].iloc[-1]
    assert short["forecast_close"].iloc[0] == pytest.approx(full["forecast_close"].iloc[-1], rel=1e-6)


def test_lstm_sorts_unordered_input(lstm, prices):
    frame = to_model_input(prices.tail(40))
    pd.testing.assert_frame_equal(lstm.predict(None, frame.sample(frac=1.0, random_state=0)), lstm.predict(None, frame))


def test_lstm_with_too_few_rows_says_how_many_it_needs(lstm, prices):
    with pytest.raises(ValueError, match=rf"at least {WINDOW + 1} sessions of prices, got {WINDOW}"):
        lstm.predict(None, to_model_input(prices.tail(WINDOW)))


@pytest.mark.parametrize("missing", ["Close", "Date"])
def test_lstm_with_a_missing_column_names_it(lstm, prices, missing):
    frame = to_model_input(prices.tail(30)).drop(columns=[missing])
    with pytest.raises(ValueError, match="needs Date and Close columns"):
        lstm.predict(None, frame)


def test_lstm_ignores_unused_price_columns(lstm, prices):
    frame = to_model_input(prices.tail(30))
    pd.testing.assert_frame_equal(lstm.predict(None, frame[["Date", "Close"]]), lstm.predict(None, frame))


def test_forecasts_on_fails_loudly_for_a_missing_session(prices):
    out = NaiveForecaster().predict(None, to_model_input(prices.tail(5)))
    dates = pd.DatetimeIndex(prices["Date"].tail(5))
    np.testing.assert_array_equal(forecasts_on(out, dates[1:3]), prices["Close"].tail(5).to_numpy()[1:3])
    with pytest.raises(ValueError, match="no forecast for 1 session"):
        forecasts_on(out, dates.append(pd.DatetimeIndex(["2030-01-02"])))


# -- MLflow round trip ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*An input example was not provided")
def test_lstm_round_trips_through_mlflow_pyfunc(lstm, dataset, prices, tmp_path):
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    keras_path = tmp_path / "model.keras"
    lstm.keras_model.save(keras_path)
    spec_path = tmp_path / "preprocessing.json"
    spec_path.write_text(json.dumps(LstmForecaster.preprocessing_spec(WINDOW, dataset.scaler)))
    raw = to_model_input(prices)
    expected = lstm.predict(None, raw)

    model_dir = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        path=str(model_dir),
        python_model=LstmForecaster(),  # the pickle carries nothing: the network and scaler are artifacts
        artifacts={KERAS_ARTIFACT: str(keras_path), PREPROCESSING_ARTIFACT: str(spec_path)},
        signature=infer_signature(raw.head(WINDOW + 1), expected.head(1)),
        pip_requirements=["mlflow", "keras"],
    )
    loaded = mlflow.pyfunc.load_model(str(model_dir))
    got = loaded.predict(raw)

    assert got["as_of"].tolist() == expected["as_of"].tolist()
    np.testing.assert_allclose(got["forecast_close"].to_numpy(), expected["forecast_close"].to_numpy(), rtol=1e-6)

    # The loaded model enforces the logged schema on what clients send.
    from mlflow.exceptions import MlflowException

    for column in ("Close", "Open"):
        with pytest.raises(MlflowException, match=column):
            loaded.predict(raw.drop(columns=[column]))


def test_lstm_pickle_does_not_carry_the_network(lstm):
    import pickle

    restored = pickle.loads(pickle.dumps(lstm))
    assert restored.keras_model is None and restored.window is None
