"""pipeline.models.forecasters and pipeline.models.model_files: the naive and LSTM forecasters on raw OHLCV input,
stored as data (JSON and a .keras file) and loaded back with their SHA-256 fingerprints checked; the MLflow pyfunc
face."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS, TrainingConfig
from pipeline.data.sources import COLUMNS, CsvSource
from pipeline.models import model_files
from pipeline.models.forecasters import LstmForecaster, NaiveForecaster, forecasts_on, min_input_rows, to_model_input
from pipeline.models.windows import build_dataset
from tests.support import fetch

WINDOW = 10
CONFIG = TrainingConfig(window=WINDOW, units=4, epochs=1, batch_size=32, history_years=5.0, eval_sessions=40)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, dt.date(2017, 12, 31)).tail(300).reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset(prices):
    return build_dataset(prices, CONFIG)


@pytest.fixture(scope="module")
def lstm(dataset) -> LstmForecaster:
    """An untrained (seeded) network with the dataset's scaler: enough to check the plumbing."""
    pytest.importorskip("keras")
    from pipeline.models.lstm import build_lstm

    return LstmForecaster(build_lstm(WINDOW, 2, CONFIG), dataset.scaler, WINDOW, shrinkage=0.5)


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
    out = NaiveForecaster().predict(to_model_input(prices))
    assert list(out.columns) == ["as_of", "forecast_close", "lower_80", "upper_80", "lower_95", "upper_95"]
    assert out["as_of"].tolist() == prices["Date"].dt.strftime("%Y-%m-%d").tolist()
    np.testing.assert_array_equal(out["forecast_close"].to_numpy(), prices["Close"].to_numpy())


def test_naive_sorts_unordered_input(prices):
    frame = to_model_input(prices.tail(20))
    out = NaiveForecaster().predict(frame.iloc[::-1])
    assert out["as_of"].tolist() == frame["Date"].tolist()
    np.testing.assert_array_equal(out["forecast_close"].to_numpy(), frame["Close"].to_numpy())


def test_naive_needs_date_and_close():
    with pytest.raises(ValueError, match="needs Date and Close"):
        NaiveForecaster().predict(pd.DataFrame({"Date": ["2020-01-02"], "Open": [1.0]}))


# -- LSTM ----------------------------------------------------------------------------------------


def test_lstm_gives_one_forecast_per_session_with_a_full_window(lstm, prices):
    out = lstm.predict(to_model_input(prices))
    assert list(out.columns) == ["as_of", "forecast_close"], "no calibration, no intervals"
    assert len(out) == len(prices) - WINDOW
    assert out["as_of"].tolist() == prices["Date"].iloc[WINDOW:].dt.strftime("%Y-%m-%d").tolist()
    forecast = out["forecast_close"].to_numpy()
    assert forecast.dtype == np.float64 and np.all(np.isfinite(forecast)) and np.all(forecast > 0)
    # A one-session forecast of a daily stock stays near the last close.
    ratio = forecast / prices["Close"].iloc[WINDOW:].to_numpy()
    assert np.all((ratio > 0.8) & (ratio < 1.25))


def test_lstm_serving_matches_the_training_windows(lstm, dataset, prices):
    """No train/serve skew: forecasts from raw prices equal the network applied to the dataset's test windows."""
    out = lstm.predict(to_model_input(prices))
    served = forecasts_on(out, dataset.test.as_of)
    scaled = np.asarray(lstm.keras_model(dataset.test.x, training=False)).reshape(-1)
    expected = dataset.test.last_close * np.exp(0.5 * dataset.scaler.inverse_target(scaled))
    np.testing.assert_allclose(served, expected, rtol=1e-6)


def test_lstm_uses_only_the_last_window(lstm, prices):
    full = lstm.predict(to_model_input(prices))
    short = lstm.predict(to_model_input(prices.tail(WINDOW + 1)))
    assert len(short) == 1
    assert short["as_of"].iloc[0] == full["as_of"].iloc[-1]
    assert short["forecast_close"].iloc[0] == pytest.approx(full["forecast_close"].iloc[-1], rel=1e-6)


def test_lstm_sorts_unordered_input(lstm, prices):
    frame = to_model_input(prices.tail(40))
    pd.testing.assert_frame_equal(lstm.predict(frame.sample(frac=1.0, random_state=0)), lstm.predict(frame))


def test_lstm_with_too_few_rows_says_how_many_it_needs(lstm, prices):
    with pytest.raises(ValueError, match=rf"at least {WINDOW + 1} sessions of prices, got {WINDOW}"):
        lstm.predict(to_model_input(prices.tail(WINDOW)))


@pytest.mark.parametrize("missing", ["Close", "Date"])
def test_lstm_with_a_missing_column_names_it(lstm, prices, missing):
    frame = to_model_input(prices.tail(30)).drop(columns=[missing])
    with pytest.raises(ValueError, match="needs Date and Close columns"):
        lstm.predict(frame)


def test_lstm_ignores_unused_price_columns(lstm, prices):
    frame = to_model_input(prices.tail(30))
    pd.testing.assert_frame_equal(lstm.predict(frame[["Date", "Close"]]), lstm.predict(frame))


def test_forecasts_on_fails_loudly_for_a_missing_session(prices):
    out = NaiveForecaster().predict(to_model_input(prices.tail(5)))
    dates = pd.DatetimeIndex(prices["Date"].tail(5))
    np.testing.assert_array_equal(forecasts_on(out, dates[1:3]), prices["Close"].tail(5).to_numpy()[1:3])
    with pytest.raises(ValueError, match="no forecast for 1 session"):
        forecasts_on(out, dates.append(pd.DatetimeIndex(["2030-01-02"])))


def test_naive_intervals_bracket_the_forecast_once_a_month_of_returns_is_known(prices):
    out = NaiveForecaster().predict(to_model_input(prices))
    known = out.iloc[25:]
    assert out[["lower_80", "upper_80"]].iloc[:15].isna().all().all(), "too few returns yet: no interval"
    assert (known["lower_95"] < known["lower_80"]).all() and (known["lower_80"] < known["forecast_close"]).all()
    assert (known["forecast_close"] < known["upper_80"]).all() and (known["upper_80"] < known["upper_95"]).all()


def test_lstm_with_a_calibration_serves_intervals(lstm, dataset, prices):
    from pipeline.models.training import calibrate_intervals

    calibrated = lstm.with_calibration(calibrate_intervals(lstm, dataset))
    out = calibrated.predict(to_model_input(prices))
    assert {"lower_80", "upper_80", "lower_95", "upper_95"} <= set(out.columns)
    last = out.iloc[-1]
    assert last["lower_95"] < last["lower_80"] < last["forecast_close"] < last["upper_80"] < last["upper_95"]
    assert min_input_rows(calibrated) > WINDOW, "a year of history for the volatility behind the intervals"


def test_forecasts_at_positions_are_the_full_pass_at_those_positions(lstm, prices):
    closes = prices["Close"].to_numpy("float64")
    positions = np.array([WINDOW, WINDOW + 7, len(closes) - 40, len(closes) - 1])
    full = lstm.point_forecasts(closes)[positions - WINDOW]
    np.testing.assert_allclose(lstm.point_forecasts_at(closes, positions), full, rtol=1e-6)
    with pytest.raises(ValueError, match="as-of positions"):
        lstm.point_forecasts_at(closes, np.array([WINDOW - 1]))


def test_training_calibrates_on_the_forecasts_its_validation_pass_gives(lstm, dataset):
    """Training computes the validation windows' forecasts once, from the dataset's windows, for shrinkage and
    calibration alike: the same forecasts the served model makes at those sessions from raw prices."""
    from pipeline.models.training import as_of_positions, calibrate_intervals, validation_returns

    closes = dataset.history["Close"].to_numpy("float64")
    served = lstm.point_forecasts_at(closes, as_of_positions(dataset, dataset.val.as_of))
    shared = dataset.val.last_close * np.exp(lstm.shrinkage * validation_returns(lstm.keras_model, dataset))
    np.testing.assert_allclose(shared, served, rtol=1e-6)
    assert calibrate_intervals(lstm, dataset, shared) == pytest.approx(calibrate_intervals(lstm, dataset))


def test_the_compiled_forward_pass_gives_each_network_its_own_outputs(lstm, dataset):
    """Forecasts go through one compiled network per thread and architecture, loaded with each model's weights: the
    outputs are each model's own, as an eager call gives them, whichever model went before."""
    from pipeline.models.lstm import build_lstm, network_outputs

    other = build_lstm(WINDOW, 2, CONFIG.model_copy(update={"seed": 99}))
    for model in (lstm.keras_model, other, lstm.keras_model, other):
        for x in (dataset.val.x, dataset.test.x[:1]):
            eager = np.asarray(model(x, training=False))
            np.testing.assert_allclose(network_outputs(model, x), eager, rtol=1e-5, atol=1e-7)
    assert not np.allclose(network_outputs(other, dataset.val.x), network_outputs(lstm.keras_model, dataset.val.x))


def test_a_champion_scored_from_its_lookback_forecasts_as_from_the_whole_history(lstm, dataset, prices):
    """Scoring feeds a champion only the sessions its test positions need: forecasts and intervals as from all."""
    from pipeline.evaluation.scoring import forecast_on_test
    from pipeline.models.training import as_of_positions, calibrate_intervals

    positions = as_of_positions(dataset, dataset.test.as_of)
    for model in (lstm.with_calibration(calibrate_intervals(lstm, dataset)), NaiveForecaster()):
        whole = model.predict(to_model_input(dataset.history))
        tail = forecast_on_test(model, dataset, positions)
        assert len(tail) < len(whole)
        for column in [c for c in whole.columns if c != "as_of"]:
            np.testing.assert_allclose(
                forecasts_on(tail, dataset.test.as_of, column),
                forecasts_on(whole, dataset.test.as_of, column),
                rtol=1e-6,
                err_msg=f"{model.kind} {column}",
            )


# -- stored as data -------------------------------------------------------------------------------


@pytest.fixture
def saved_lstm(lstm, tmp_path):
    model_files.save(lstm, tmp_path / "model")
    return tmp_path / "model"


def test_a_stored_lstm_is_json_and_a_keras_file_and_forecasts_the_same(lstm, saved_lstm, prices):
    assert sorted(p.name for p in saved_lstm.iterdir()) == ["model.keras", "spec.json"]
    spec = json.loads((saved_lstm / "spec.json").read_text())
    assert spec["kind"] == "lstm" and spec["window"] == WINDOW and spec["shrinkage"] == 0.5
    loaded = model_files.load(saved_lstm)
    pd.testing.assert_frame_equal(loaded.predict(to_model_input(prices)), lstm.predict(to_model_input(prices)))


def test_the_naive_baseline_is_stored_as_data(tmp_path):
    model_files.save(NaiveForecaster(), tmp_path)
    assert json.loads((tmp_path / "spec.json").read_text()) == {"format": 1, "kind": "naive"}
    assert isinstance(model_files.load(tmp_path), NaiveForecaster)


@pytest.mark.parametrize(
    "spec, complaint",
    [
        ("not json {", "not JSON"),
        ('{"format": 99, "kind": "lstm"}', "unknown model format"),
        ('{"format": 1, "kind": "pickle"}', "unknown model kind"),
        ('["a list"]', "unknown model format"),
    ],
)
def test_an_unreadable_spec_is_refused_by_name(tmp_path, spec, complaint):
    (tmp_path / "spec.json").write_text(spec)
    with pytest.raises(model_files.ModelRefused, match=complaint):
        model_files.load(tmp_path)


def test_a_keras_file_with_code_in_it_is_refused(saved_lstm):
    """safe_mode: a Lambda layer (arbitrary Python) in a .keras file is refused, not deserialised."""
    import keras

    unsafe = keras.Sequential(
        [
            keras.Input((WINDOW, 2)),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    unsafe.save(saved_lstm / "model.keras")
    with pytest.raises(model_files.ModelRefused, match="not a loadable Keras model"):
        model_files.load(saved_lstm)


def test_fingerprints_name_every_changed_missing_or_added_file(saved_lstm):
    recorded = model_files.manifest_text(model_files.manifest(saved_lstm))
    model_files.verify(saved_lstm, recorded, "MSFT v2")  # untouched: fine
    (saved_lstm / "spec.json").write_text((saved_lstm / "spec.json").read_text().replace("0.5", "0.9"))
    (saved_lstm / "python_model.pkl").write_bytes(b"\x80\x04payload")
    (saved_lstm / "model.keras").unlink()
    with pytest.raises(model_files.ModelRefused) as refused:
        model_files.verify(saved_lstm, recorded, "stockpipe-MSFT v2")
    message = str(refused.value)
    assert message.startswith("stockpipe-MSFT v2: files differ")
    assert "changed: spec.json" in message and "missing: model.keras" in message
    assert "unexpected: python_model.pkl" in message


def test_a_model_without_recorded_fingerprints_is_refused(saved_lstm):
    with pytest.raises(model_files.ModelRefused, match="no recorded file digest"):
        model_files.verify(saved_lstm, None, "stockpipe-MSFT v7")


def test_symbolic_links_in_a_model_are_refused(saved_lstm, tmp_path):
    (saved_lstm / "extra").symlink_to(tmp_path)
    with pytest.raises(model_files.ModelRefused, match="symbolic link"):
        model_files.manifest(saved_lstm)


# -- the MLflow pyfunc face -----------------------------------------------------------------------


def test_the_pyfunc_face_forecasts_like_the_forecaster_without_any_pickle(
    lstm, saved_lstm, prices, tmp_path, monkeypatch
):
    import mlflow.pyfunc

    from pipeline.registry.logged_models import MODEL_CODE

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    code = tmp_path / "stockpipe_model.py"
    code.write_text(MODEL_CODE)
    model_dir = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        path=str(model_dir),
        python_model=str(code),
        artifacts={"spec": str(saved_lstm / "spec.json"), "keras_model": str(saved_lstm / "model.keras")},
        pip_requirements=["mlflow", "keras"],
    )
    assert not list(model_dir.rglob("*.pkl")), "models-from-code: nothing pickled"
    raw = to_model_input(prices)
    got = mlflow.pyfunc.load_model(str(model_dir)).predict(raw)
    expected = lstm.predict(raw)
    assert got["as_of"].tolist() == expected["as_of"].tolist()
    np.testing.assert_allclose(got["forecast_close"].to_numpy(), expected["forecast_close"].to_numpy(), rtol=1e-6)
