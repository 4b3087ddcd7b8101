"""What users do with a state directory after a run: forecast with the champion, roll a promotion back."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.daily import daily_pipeline
from pipeline.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS, PROMOTED
from pipeline.sources import CsvSource
from pipeline.store import PriceStore
from pipeline.symbols import registered_model_name
from pipeline.tracking import Tracker
from tests.integration.planted import BiasedForecaster, install_champion

pytestmark = pytest.mark.integration

AS_OF = dt.date(2017, 11, 10)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def stockpipe(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that inherits the test's STOCKPIPE_* settings (the same state directory)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def test_predict_and_rollback_on_a_promoted_ticker(settings):
    daily_pipeline(tickers=["MSFT"], as_of=AS_OF, return_state=True)
    name = registered_model_name("MSFT")
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    biased = install_champion(settings, "MSFT", BiasedForecaster(), "biased")

    state = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, force=True, return_state=True)
    promoted = state.result()[0]
    assert promoted["decision"] == PROMOTED
    report_path = client.download_artifacts(promoted["run_id"], "promotion/decision.json", str(settings.home))
    report = json.loads(Path(report_path).read_text())
    assert report["verdict"] == PROMOTED and report["champion"].startswith(f"v{biased} ")
    assert report["test_days"] > 0 and report["data_digest"] == promoted["data_digest"]

    lstm = json.loads(stockpipe("predict", "MSFT", "--json").stdout)
    assert lstm["model_version"] == promoted["model_version"] and lstm["model_kind"] == "lstm"
    assert lstm["as_of"] == "2017-11-10" and lstm["forecast_date"] == "2017-11-13"  # Friday -> Monday
    assert lstm["last_close"] == pytest.approx(83.87)

    rolled = stockpipe("rollback", "MSFT", "--reason", "forecasts drifted")
    assert rolled.returncode == 0, rolled.stderr
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == biased
    assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == promoted["model_version"]
    assert client.get_model_version(name, promoted["model_version"]).tags["rolled_back"] == "forecasts drifted"

    restored = json.loads(stockpipe("predict", "MSFT", "--json").stdout)
    assert restored["model_version"] == biased and restored["model_kind"] == "biased"
    last_close = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")["Close"].iloc[-1]
    assert restored["forecast_close"] == pytest.approx(last_close * 1.05)

    status = {row["ticker"]: row for row in json.loads(stockpipe("status", "--json").stdout)}
    assert status["MSFT"]["champion_version"] == biased, "status reads the champion from the registry"


def test_rollback_without_a_previous_version_is_refused(settings):
    history = CsvSource(settings.snapshot_dir).fetch("GSPC", None, dt.date(2018, 12, 31))
    tracker = Tracker(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    baseline = tracker.ensure_baseline("GSPC", history, {})
    result = stockpipe("rollback", "GSPC")
    assert result.returncode == 1
    assert "no `previous` version" in result.stderr
    assert tracker.champion("GSPC") == baseline


def test_warm_start_retrains_from_the_champion_and_records_it(settings):
    daily_pipeline(tickers=["MSFT"], as_of=dt.date(2017, 10, 31), return_state=True)
    install_champion(settings, "MSFT", BiasedForecaster(), "biased")
    from_scratch = daily_pipeline(tickers=["MSFT"], as_of=dt.date(2017, 10, 31), force=True, warm_start=True,
                                  return_state=True).result()[0]
    assert from_scratch["decision"] == PROMOTED
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    assert client.get_run(from_scratch["run_id"]).data.params["warm_start_from"] == "none", "a biased champion has no weights"

    warm = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, warm_start=True, return_state=True).result()[0]
    run = client.get_run(warm["run_id"])
    assert run.data.params["warm_start_from"] == f"v{from_scratch['model_version']}"
    assert run.data.metrics["epochs_run"] <= settings.training.warm_start_epochs
    assert warm["new_rows"] == 8
