"""pipeline.registry.tracking and .connection on a real SQLite store: the registry conventions, errors that are not
absence, models loaded only when their files match their fingerprints, and a lost server recognised as such."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from pipeline.common import codec
from pipeline.common.settings import Settings
from pipeline.common.symbols import registered_model_name
from pipeline.evaluation.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS
from pipeline.models.forecasters import NAIVE
from pipeline.models.model_files import ModelRefused
from pipeline.registry.baseline import ensure_baseline
from pipeline.registry.connection import TrackingUnavailable, tracking_errors, unreachable_reason
from pipeline.registry.tracking import Tracker
from pipeline.serving import forecast_next
from tests.support import (
    FailingOnce,
    bundled,
    closed_port,
    migrated_tracking_store,
    plant_lstm_champion,
    server_error,
    tiny_config,
)

NAME = registered_model_name("MSFT")


@pytest.fixture(scope="module")
def history():
    import datetime as dt

    return bundled("MSFT", dt.date(2015, 6, 1))


@pytest.fixture
def tracker(tmp_path) -> Tracker:
    return Tracker.connect(migrated_tracking_store(tmp_path / "mlflow.db"), "stockpipe-test", tmp_path / "artifacts")


def test_a_new_ticker_starts_with_the_naive_forecaster_as_champion(tracker, history):
    assert tracker.champion("MSFT") is None
    baseline = ensure_baseline(tracker, "MSFT", history, {})
    assert (baseline.version, baseline.kind, baseline.data_end) == ("1", NAIVE, "2017-11-10")
    assert ensure_baseline(tracker, "MSFT", history, {}) == baseline, "idempotent"
    version = tracker.client.get_model_version(NAME, "1")
    assert version.tags["decision"] == "baseline" and version.tags["model_files_sha256"].startswith("{")


def test_only_not_found_means_no_champion(tracker, history):
    """A busy or failing server must never read as "no champion": that would register a second baseline."""
    ensure_baseline(tracker, "MSFT", history, {})
    FailingOnce(tracker.client, "get_registered_model", server_error("get_registered_model"))
    with pytest.raises(MlflowException, match="busy"):
        tracker.champion("MSFT")
    FailingOnce(tracker.client, "get_registered_model", server_error("get_registered_model"))
    with pytest.raises(MlflowException):
        ensure_baseline(tracker, "MSFT", history, {})
    assert [v.version for v in tracker.versions("MSFT")] == [1], "no second baseline"
    assert tracker.champion("GSPC") is None, "an unknown model is not found: None"


def test_a_baseline_registered_before_a_cut_is_crowned_not_registered_again(tracker, history):
    FailingOnce(tracker, "make_champion", server_error("set_registered_model_alias"))
    with pytest.raises(MlflowException):
        ensure_baseline(tracker, "MSFT", history, {})
    assert tracker.champion("MSFT") is None and len(tracker.versions("MSFT")) == 1
    assert ensure_baseline(tracker, "MSFT", history, {}).version == "1"
    assert len(tracker.versions("MSFT")) == 1


def test_a_new_champion_keeps_the_previous_one_and_rollback_swaps_back(tracker, history):
    config = tiny_config()
    planted = plant_lstm_champion(tracker, "MSFT", history, config, return_bias=0.05)
    assert str(tracker.client.get_model_version_by_alias(NAME, CHAMPION_ALIAS).version) == planted == "2"
    assert str(tracker.client.get_model_version_by_alias(NAME, PREVIOUS_ALIAS).version) == "1"
    assert tracker.rollback("MSFT", "bad forecasts") == ("2", "1")
    assert tracker.champion("MSFT").version == "1"
    assert str(tracker.client.get_model_version_by_alias(NAME, PREVIOUS_ALIAS).version) == "2"
    assert tracker.client.get_model_version(NAME, "2").tags["rolled_back"] == "bad forecasts"
    assert tracker.rollback("MSFT", "undo") == ("1", "2"), "a second rollback undoes the first"


def test_rollback_needs_a_champion_and_a_previous_version(tracker, history):
    with pytest.raises(LookupError, match="no champion"):
        tracker.rollback("GSPC", "why")
    ensure_baseline(tracker, "GSPC", history, {})
    with pytest.raises(LookupError, match="no `previous` version"):
        tracker.rollback("GSPC", "why")


def test_the_champion_loads_as_data_and_forecasts_the_next_session_with_intervals(tracker, history):
    champion = ensure_baseline(tracker, "MSFT", history, {})
    model = tracker.load(champion, "MSFT")
    forecast = forecast_next("MSFT", model, history, champion.version)
    assert forecast.as_of == "2017-11-10" and forecast.forecast_date == "2017-11-13"
    assert forecast.forecast_close == forecast.last_close == pytest.approx(83.87)
    assert forecast.lower_95 < forecast.lower_80 < forecast.forecast_close < forecast.upper_80 < forecast.upper_95
    assert codec.dump(forecast)["model_kind"] == NAIVE
    with pytest.raises(ValueError, match="no stored prices"):
        forecast_next("MSFT", model, history.iloc[0:0], champion.version)


def artifact_folder(tracker: Tracker, version: str) -> Path:
    source = tracker.client.get_model_version(NAME, version).source
    return Path(source.removeprefix("file://"))


@pytest.mark.parametrize("tamper", ["replace spec", "add a pickle", "swap the keras file"])
def test_a_champion_whose_files_changed_is_refused_by_name(tracker, history, tamper, tmp_path):
    version = plant_lstm_champion(tracker, "MSFT", history, tiny_config(), return_bias=0.0)
    folder = artifact_folder(tracker, version)
    if tamper == "replace spec":
        spec = folder / "artifacts" / "spec.json"
        spec.write_text(spec.read_text().replace('"shrinkage": 1.0', '"shrinkage": 0.5'))
    elif tamper == "add a pickle":
        (folder / "python_model.pkl").write_bytes(b"\x80\x04N.")
    else:
        (folder / "artifacts" / "model.keras").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelRefused, match=rf"stockpipe-MSFT v{version}: files differ"):
        tracker.load(tracker.champion("MSFT"), "MSFT")


def test_run_links_point_at_the_configured_ui_or_the_server(tracker):
    assert tracker.run_url("abc").startswith("http://127.0.0.1:5000/#/experiments/")
    server = Tracker(tracker.client, "7", "http://user:secret@mlflow:5000/", None)
    assert server.run_url("abc") == "http://user:***@mlflow:5000/#/experiments/7/runs/abc", "never the password"
    configured = Tracker(tracker.client, "7", "sqlite:///x.db", "http://ui.internal:8080/")
    assert configured.run_url("abc") == "http://ui.internal:8080/#/experiments/7/runs/abc"


def test_the_tracker_from_settings_opens_their_experiment_and_links_to_their_ui(tmp_path):
    settings = Settings(
        home=tmp_path,
        mlflow_tracking_uri=migrated_tracking_store(tmp_path / "mlflow.db"),
        experiment_name="stockpipe-settings",
        mlflow_ui_url="http://ui.internal:8080/",
    )
    tracker = Tracker.from_settings(settings)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.name == "stockpipe-settings"
    assert experiment.artifact_location == settings.artifacts_dir.as_uri()
    assert tracker.run_url("abc") == f"http://ui.internal:8080/#/experiments/{tracker.experiment_id}/runs/abc"


def test_the_experiment_is_marked_as_classic_model_training(tracker):
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


# -- recognising a lost server ----------------------------------------------------------------------


def test_a_server_that_is_not_there_is_reported_as_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingUnavailable) as raised, tracking_errors(uri, "connecting"):
        Tracker.connect(uri, "stockpipe-test", tmp_path)
    message = str(raised.value)
    assert message.startswith(f"MLflow tracking server {uri} unreachable while connecting: ")
    assert "Connection refused" in message and len(message) < 200, message


def test_errors_the_server_answered_are_not_unavailability(tracker):
    with pytest.raises(MlflowException) as raised, tracking_errors(tracker.tracking_uri, "reading"):
        tracker.client.get_registered_model("no-such-model")
    assert not isinstance(raised.value, TrackingUnavailable)
    assert unreachable_reason(ValueError("bad input")) is None


def test_a_password_in_the_tracking_uri_never_reaches_the_message():
    import requests

    with (
        pytest.raises(TrackingUnavailable) as raised,
        tracking_errors("http://admin:hunter2secret@mlflow:5000", "tracking MSFT"),
    ):
        raise MlflowException("API request failed") from requests.ConnectionError("Connection refused")
    assert "hunter2secret" not in str(raised.value) and "admin:***@mlflow" in str(raised.value)
