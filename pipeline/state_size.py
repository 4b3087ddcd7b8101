"""How many bytes `STOCKPIPE_HOME` holds, by kind of file, and how many of them are one ticker's.

Kinds follow the home's layout (pipeline.common.settings): `run_artifacts` (artifacts/<run id>/: plots, reports,
decisions), `logged_models` (artifacts/models/: each logged model's files), `data_docs` (reports/<T>/data_docs),
`reports` (the rest of reports/), `store`, `forecasts`, `quarantine` and `mlflow_db` (the local SQLite tracking
store). Prefect's own database (prefect/) is the orchestrator's, not a ticker's: `home_bytes` reports it aside and no
total includes it.

A ticker's share of the tracking database is estimated as the database's size times the ticker's share of its runs
(rows are per run, and every run names its ticker); a ticker's files are counted in the home only, whatever a store
row says they are, so a location edited to point elsewhere cannot make this read anything outside it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from mlflow.entities import ViewType

from pipeline.common.files import tree_size
from pipeline.common.settings import Settings
from pipeline.data import quarantine
from pipeline.data.forecast_log import ForecastLog
from pipeline.data.store import PriceStore
from pipeline.registry.tracking import Tracker

KINDS = (
    "run_artifacts",
    "logged_models",
    "data_docs",
    "reports",
    "store",
    "forecasts",
    "quarantine",
    "mlflow_db",
)
PREFECT = "prefect"
MODELS_FOLDER = "models"
_RUN_ID = re.compile(r"^run_id:\s*['\"]?([\w-]+)", re.M)


def as_settings(settings_or_home: Settings | Path | str) -> Settings:
    if isinstance(settings_or_home, Settings):
        return settings_or_home
    return Settings(home=Path(settings_or_home))


def total(usage: dict[str, int | None]) -> int:
    """The bytes of every kind counted (Prefect's database never is)."""
    return sum(value or 0 for kind, value in usage.items() if kind in KINDS)


def home_bytes(settings_or_home: Settings | Path | str) -> dict[str, int | None]:
    """Bytes per kind in the whole home; `other` is what no kind names (locks, caches), `prefect` stands aside."""
    settings = as_settings(settings_or_home)
    artifacts, reports = settings.artifacts_dir, settings.reports_dir
    models = tree_size(artifacts / MODELS_FOLDER)
    docs = sum(tree_size(folder) for folder in reports.glob("*/data_docs"))
    database = _database(settings)
    usage: dict[str, int | None] = {
        "run_artifacts": tree_size(artifacts) - models,
        "logged_models": models,
        "data_docs": docs,
        "reports": tree_size(reports) - docs,
        "store": tree_size(settings.store_dir),
        "forecasts": tree_size(settings.forecasts_dir),
        "quarantine": tree_size(settings.quarantine_dir),
        "mlflow_db": _database_bytes(database) if database is not None else None,
    }
    prefect = tree_size(settings.home / PREFECT)
    usage["other"] = max(0, tree_size(settings.home) - total(usage) - prefect)
    usage[PREFECT] = prefect
    return usage


def ticker_bytes(
    settings_or_home: Settings | Path | str, ticker: str, tracker: Tracker | None = None
) -> dict[str, int | None]:
    """Bytes per kind that `ticker` holds; with no tracker given, one is connected from the settings."""
    settings = as_settings(settings_or_home)
    return tickers_bytes(settings, [ticker], tracker or Tracker.from_settings(settings))[ticker]


def tickers_bytes(
    settings: Settings, tickers: Iterable[str], tracker: Tracker | None
) -> dict[str, dict[str, int | None]]:
    """`ticker_bytes` for several tickers, reading the logged models' folders and the database's size once. Without
    a tracker (MLflow unreachable) the kinds that need its runs are None."""
    tickers = list(tickers)
    models = _logged_model_bytes_by_run(settings.artifacts_dir)
    database = _database(settings)
    db_bytes = _database_bytes(database) if database is not None else None
    all_runs = _run_count(database) if database is not None else None
    out = {}
    for ticker in tickers:
        usage = _files_of(settings, ticker)
        runs = _run_ids(tracker, ticker) if tracker is not None else None
        if runs is not None:
            usage["run_artifacts"] = sum(tree_size(settings.artifacts_dir / run) for run in runs)
            usage["logged_models"] = sum(models.get(run, 0) for run in runs)
        share = len(runs) / all_runs if runs is not None and all_runs else None
        usage["mlflow_db"] = round(db_bytes * share) if db_bytes is not None and share is not None else None
        out[ticker] = usage
    return out


def _files_of(settings: Settings, ticker: str) -> dict[str, int | None]:
    folder = settings.reports_dir / ticker
    docs = tree_size(folder / "data_docs")
    return {
        "run_artifacts": None,
        "logged_models": None,
        "data_docs": docs,
        "reports": tree_size(folder) - docs,
        "store": _file_bytes(PriceStore(settings.store_dir, settings.locks_dir).path(ticker)),
        "forecasts": _file_bytes(ForecastLog(settings.forecasts_dir).path(ticker)),
        "quarantine": quarantine.usage(settings.quarantine_dir, ticker).bytes,
        "mlflow_db": None,
    }


def _run_ids(tracker: Tracker, ticker: str) -> set[str]:
    """Every run of the ticker, deleted ones too (their files stay until `mlflow gc`)."""
    ids: set[str] = set()
    token = None
    while True:
        page = tracker.client.search_runs(
            [tracker.experiment_id],
            f"tags.ticker = '{ticker}'",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        ids.update(run.info.run_id for run in page)
        token = page.token
        if not token:
            return ids


def _logged_model_bytes_by_run(artifacts: Path) -> dict[str, int]:
    """Bytes of each run's logged models, attributed by the run id their MLmodel file names (a model whose files
    retention removed has no MLmodel, and no bytes to attribute)."""
    by_run: dict[str, int] = {}
    for folder in (artifacts / MODELS_FOLDER).glob("*/artifacts"):
        mlmodel = folder / "MLmodel"
        match = _RUN_ID.search(mlmodel.read_text(errors="replace")) if mlmodel.is_file() else None
        if match:
            by_run[match.group(1)] = by_run.get(match.group(1), 0) + tree_size(folder)
    return by_run


def _database(settings: Settings) -> Path | None:
    """The SQLite file of a local tracking store; None for a tracking server or a database elsewhere."""
    uri = settings.tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    return path if path.is_file() else None


def _database_bytes(path: Path) -> int:
    return sum(_file_bytes(path.with_name(path.name + suffix)) for suffix in ("", "-wal", "-shm", "-journal"))


def _run_count(path: Path) -> int | None:
    """Runs in the store, read-only (MLflow has no count; its `runs` table has one row per run)."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            return int(connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return None


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0
