"""What the home holds by kind of file, and a ticker's part of it, on a home laid out by hand."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

from pipeline.common.settings import Settings
from pipeline.state_size import KINDS, home_bytes, tickers_bytes, total


def put(path: Path, size: int, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "x" * (size - len(text)))


class Page(list):
    token = None


def tracker_with(runs: dict[str, list[str]]) -> SimpleNamespace:
    """A tracker whose search answers each ticker's run ids, as MLflow's paged search does."""

    def search_runs(experiments, filter_string, **kwargs):
        ticker = filter_string.split("'")[1]
        return Page(SimpleNamespace(info=SimpleNamespace(run_id=run_id)) for run_id in runs.get(ticker, []))

    return SimpleNamespace(experiment_id="1", client=SimpleNamespace(search_runs=search_runs))


def home(tmp_path: Path) -> Settings:
    settings = Settings(home=tmp_path / "state", mlflow_tracking_uri=None)
    root = settings.home
    put(root / "artifacts" / "r1" / "artifacts" / "plots" / "forecast.png", 1000)
    put(root / "artifacts" / "r2" / "artifacts" / "decision.json", 300)
    put(root / "artifacts" / "models" / "m-1" / "artifacts" / "MLmodel", 400, "run_id: r1\n")
    put(root / "artifacts" / "models" / "m-1" / "artifacts" / "model.keras", 5000)
    (root / "artifacts" / "models" / "m-2" / "artifacts").mkdir(parents=True)  # pruned: no files left
    put(root / "reports" / "MSFT" / "data_docs" / "index.html", 700)
    put(root / "reports" / "MSFT" / "last_run.json", 50)
    put(root / "reports" / "GSPC" / "last_run.json", 60)
    put(root / "store" / "MSFT.parquet", 2000)
    put(root / "forecasts" / "MSFT.parquet", 80)
    put(root / "prefect" / "prefect.db", 9999)
    put(root / "locks" / "MSFT.lock", 1)
    with sqlite3.connect(root / "mlflow.db") as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT)")
        db.executemany("INSERT INTO runs VALUES (?)", [("r1",), ("r2",), ("r3",), ("r4",)])
    return settings


def test_the_home_by_kind_keeps_prefects_database_aside(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = home(tmp_path)
    usage = home_bytes(settings)
    database = (settings.home / "mlflow.db").stat().st_size
    assert usage == {
        "run_artifacts": 1300,
        "logged_models": 5400,
        "data_docs": 700,
        "reports": 110,
        "store": 2000,
        "forecasts": 80,
        "quarantine": 0,
        "mlflow_db": database,
        "other": 1,
        "prefect": 9999,
    }
    assert total(usage) == 1300 + 5400 + 700 + 110 + 2000 + 80 + database, "neither `other` nor Prefect counts"
    assert home_bytes(settings.home) == usage, "a home's path will do"


def test_a_ticker_holds_its_runs_files_its_models_and_its_share_of_the_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = home(tmp_path)
    database = (settings.home / "mlflow.db").stat().st_size
    sizes = tickers_bytes(settings, ["MSFT", "GSPC"], tracker_with({"MSFT": ["r1"], "GSPC": ["r2", "r3"]}))
    assert set(sizes["MSFT"]) == set(KINDS)
    assert sizes["MSFT"] == {
        "run_artifacts": 1000,
        "logged_models": 5400,
        "data_docs": 700,
        "reports": 50,
        "store": 2000,
        "forecasts": 80,
        "quarantine": 0,
        "mlflow_db": round(database / 4),
    }
    assert (sizes["GSPC"]["run_artifacts"], sizes["GSPC"]["logged_models"]) == (300, 0)
    assert sizes["GSPC"]["mlflow_db"] == round(database / 2)
    offline = tickers_bytes(settings, ["MSFT"], None)["MSFT"]
    assert offline["run_artifacts"] is offline["logged_models"] is offline["mlflow_db"] is None
    assert offline["store"] == 2000
