"""The MLflow registry conventions on a real SQLite store: baseline first, aliases, rollback, serving."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.forecasters import NAIVE, NaiveForecaster
from pipeline.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS
from pipeline.serving import forecast_next
from pipeline.sources import CsvSource
from pipeline.symbols import registered_model_name
from pipeline.tracking import Tracker

SNAPSHOTS = Path(__file__).resolve().parents[2] / "data" / "snapshots"


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    return CsvSource(SNAPSHOTS).fetch("MSFT", dt.date(2017, 6, 1), dt.date(2017, 11, 10))


@pytest.fixture
def tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stockpipe-test", tmp_path / "artifacts")


def register_naive(tracker: Tracker, ticker: str, history: pd.DataFrame, tag: str) -> str:
    """Another version of the naive model, standing in for a trained challenger."""
    run_id = tracker.start_run(f"{ticker} {tag}", {"ticker": ticker})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=NaiveForecaster())
    tracker.end_run(run_id)
    return str(tracker.register_challenger(ticker, run_id, info.model_uri, {"data_end": tag}).version)


def test_a_new_ticker_starts_with_the_naive_forecaster_as_champion(tracker, history):
    assert tracker.champion("MSFT") is None
    baseline = tracker.ensure_baseline("MSFT", history, {})
    assert (baseline.version, baseline.kind) == ("1", NAIVE)
    assert tracker.ensure_baseline("MSFT", history, {}) == baseline, "idempotent"
    version = tracker.client.get_model_version(registered_model_name("MSFT"), "1")
    assert version.tags["decision"] == "baseline"
    assert tracker.champion_data_end("MSFT") == dt.date(2017, 11, 10)


def test_promotion_keeps_the_previous_champion_and_rollback_swaps_back(tracker, history):
    tracker.ensure_baseline("MSFT", history, {})
    challenger = register_naive(tracker, "MSFT", history, "2017-11-10")
    tracker.promote("MSFT", challenger)
    name = registered_model_name("MSFT")
    assert str(tracker.client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == challenger
    assert str(tracker.client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == "1"

    assert tracker.rollback("MSFT", "bad forecasts") == (challenger, "1")
    assert tracker.champion("MSFT").version == "1"
    assert str(tracker.client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == challenger
    assert tracker.client.get_model_version(name, challenger).tags["rolled_back"] == "bad forecasts"
    assert tracker.rollback("MSFT", "undo") == ("1", challenger), "a second rollback undoes the first"


def test_rollback_needs_a_champion_and_a_previous_version(tracker, history):
    with pytest.raises(LookupError, match="no champion"):
        tracker.rollback("GSPC", "why")
    tracker.ensure_baseline("GSPC", history, {})
    with pytest.raises(LookupError, match="no `previous` version"):
        tracker.rollback("GSPC", "why")


def test_the_champion_forecasts_the_next_session_from_raw_prices(tracker, history):
    champion = tracker.ensure_baseline("MSFT", history, {})
    model = tracker.load(champion.model_uri)
    forecast = forecast_next("MSFT", model, history, champion.version, champion.kind)
    assert forecast.as_of == "2017-11-10" and forecast.forecast_date == "2017-11-13"
    assert forecast.forecast_close == forecast.last_close == pytest.approx(83.87)
    assert forecast.to_dict()["model_kind"] == NAIVE
    with pytest.raises(ValueError, match="no stored prices"):
        forecast_next("MSFT", model, history.iloc[0:0], champion.version, champion.kind)


def test_run_links_point_at_the_ui(tracker):
    assert tracker.run_url("abc").startswith("http://127.0.0.1:5000/#/experiments/")
    server = Tracker.__new__(Tracker)
    server.tracking_uri, server.experiment_id = "http://mlflow:5000/", "7"
    assert server.run_url("abc") == "http://mlflow:5000/#/experiments/7/runs/abc"


def test_processes_opening_one_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    """Opening the store migrates a fresh schema; without the init lock, a second process trips over the first's
    half-done migration (seen: "alembic_version ... 0 found")."""
    import subprocess
    import sys

    script = ("import sys, pathlib; from pipeline.tracking import Tracker; "
              "Tracker(f'sqlite:///{sys.argv[1]}', 'stockpipe', pathlib.Path(sys.argv[1]).parent / 'artifacts')")
    database = tmp_path / "mlflow.db"
    openers = [subprocess.Popen([sys.executable, "-c", script, str(database)], cwd=Path(__file__).resolve().parents[2],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in openers]
    assert [p.returncode for p in openers] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
