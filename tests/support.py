"""What tests share, written once: bundled-data slices, tiny training settings, the CLI as a subprocess, a planted
champion, a tracker that loses its connection on cue, and the Docker stack's example settings."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.common.settings import BUNDLED_SNAPSHOTS, BUNDLED_SUITE, TrainingConfig
from tests.servers import clean_env, free_port

if TYPE_CHECKING:
    from pipeline.daily import DailyContext
    from pipeline.data.sources import PriceSource

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DOCKER = PROJECT_ROOT / "docker"
SNAPSHOTS = BUNDLED_SNAPSHOTS
# The bundled MSFT history ends on this session.
MSFT_LAST_SESSION = dt.date(2017, 11, 10)
GSPC_LAST_SESSION = dt.date(2018, 12, 31)
# The column types every source and the store must produce (written out here, not imported: the test is the spec).
PRICE_SCHEMA = {
    "Date": "datetime64[ns]",
    "Open": "float64",
    "High": "float64",
    "Low": "float64",
    "Close": "float64",
    "Volume": "int64",
}

# Small enough to train in seconds, large enough to exercise every split and the default 250-session test span.
TINY_TRAINING = {
    "STOCKPIPE_TRAINING__EPOCHS": "1",
    "STOCKPIPE_TRAINING__HISTORY_YEARS": "3",
    "STOCKPIPE_TRAINING__WINDOW": "20",
    "STOCKPIPE_TRAINING__UNITS": "8",
}


# A TCP port on 127.0.0.1 that nothing listens on right now (for a server that is not there).
closed_port = free_port

_STORE_TEMPLATE: list[Path] = []


def migrated_tracking_store(database: Path) -> str:
    """A copy of an empty, fully migrated MLflow SQLite store at `database`; returns its URI. MLflow's schema
    migrations take seconds for every fresh file, and every test that tracks would pay them again."""
    if not _STORE_TEMPLATE:
        from pipeline.registry.connection import open_client

        folder = Path(tempfile.mkdtemp(prefix="stockpipe-mlflow-template-"))
        open_client(f"sqlite:///{folder / 'mlflow.db'}")
        _STORE_TEMPLATE.append(folder / "mlflow.db")
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE[0], database)
    return f"sqlite:///{database}"


def tiny_config(**overrides: Any) -> TrainingConfig:
    """A few-second training for unit tests: 2 years, window 10, 4 units, a 60-session test span in 3 blocks."""
    values: dict[str, Any] = {
        "window": 10,
        "units": 4,
        "epochs": 1,
        "batch_size": 32,
        "history_years": 2.0,
        "patience": 2,
        "eval_sessions": 60,
        "eval_blocks": 3,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def msft_exports(folder: Path) -> Path:
    """Three years of the bundled MSFT history as a user's export in `folder`: enough for the tiny windows, small
    enough to validate fast."""
    folder.mkdir(parents=True, exist_ok=True)
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv")
    prices[prices["Date"] >= "2014-11-01"].to_csv(folder / "MSFT.csv", index=False)
    return folder


def tiny_daily_context(
    home: Path, exports: Path, *, today: dt.date, experiment: str = "stockpipe-test", **overrides: Any
) -> DailyContext:
    """A ticker-day's I/O as the edge builds it, on real components: `<TICKER>.csv` exports read from `exports`, and
    under `home` the store, a migrated MLflow SQLite registry, its artifacts, reports and quarantine; tiny training."""
    import mlflow

    from pipeline.contract.inputs import load_suite_definition
    from pipeline.daily import DailyContext
    from pipeline.data.quarantine import Retention
    from pipeline.data.sources import CsvSource
    from pipeline.data.store import PriceStore
    from pipeline.evaluation.evidence import PromotionPolicy
    from pipeline.registry.tracking import Tracker

    uri = migrated_tracking_store(home / "mlflow.db")
    # MLflow's Keras callback logs through the fluent API: the edge points it at the store (see flows/daily.py).
    mlflow.set_tracking_uri(uri)
    fields: dict[str, Any] = dict(
        store=PriceStore(home / "store", home / "locks"),
        source=CsvSource(exports, name="csv"),
        connect=lambda: Tracker.connect(uri, experiment, home / "artifacts"),
        tracking_uri=uri,
        suite=load_suite_definition(BUNDLED_SUITE),
        config=tiny_config(),
        policy=PromotionPolicy(0.002, 0.10),
        reports_dir=home / "reports",
        quarantine_dir=home / "quarantine",
        retention=Retention(30, 10**9),
        max_staleness_sessions=3,
        today=lambda: today,
    )
    return DailyContext(**{**fields, **overrides})


def tiny_lstm_config(**overrides: Any) -> TrainingConfig:
    """The LSTM tests' few-second training: 5 years, window 10, 4 units, 2 epochs, a 40-session test span."""
    values: dict[str, Any] = {
        "window": 10,
        "units": 4,
        "epochs": 2,
        "batch_size": 32,
        "history_years": 5.0,
        "patience": 2,
        "eval_sessions": 40,
    }
    values.update(overrides)
    return TrainingConfig(**values)


def fetch(source: PriceSource, ticker: str, since: dt.date | None, as_of: dt.date) -> pd.DataFrame:
    """The rows a source answers with, without the raw bytes the pipeline keeps for a refused batch."""
    return source.receive(ticker, since, as_of).rows


def bundled(ticker: str, since: dt.date | None = None, as_of: dt.date = MSFT_LAST_SESSION) -> pd.DataFrame:
    """Rows of a bundled snapshot after `since` up to `as_of`, in the store schema."""
    from pipeline.data.sources import CsvSource

    return fetch(CsvSource(SNAPSHOTS), ticker, since, as_of)


def stockpipe(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600, **settings: str
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, as a person runs it: `env` (default: nothing inherited but the basics) plus
    `settings`; a wide terminal keeps Typer's error box from wrapping the message being checked."""
    base = clean_env() if env is None else dict(env)
    base.update(settings, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300")
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout
    )


def lost_connection(where: str) -> Exception:
    """What MLflow raises when the tracking server went away mid-request: its own exception, the transport error
    in the chain."""
    import requests
    from mlflow.exceptions import MlflowException

    error = MlflowException(f"API request to http://tracking:5000 failed ({where})")
    error.__cause__ = requests.ConnectionError("Connection refused")
    return error


def server_error(where: str) -> Exception:
    """A refusal that is neither "not found" nor a lost server (e.g. a 503 the client surfaced, a bad request)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    return MlflowException(f"{where}: the server is busy", error_code=TEMPORARILY_UNAVAILABLE)


class FailingOnce:
    """Wraps one method of an object so that its next call raises `error` (then behaves again)."""

    def __init__(self, target: Any, method: str, error: Exception):
        self.target, self.method, self.error = target, method, error
        self.original = getattr(target, method)
        setattr(target, method, self)
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        setattr(self.target, self.method, self.original)
        raise self.error


def plant_lstm_champion(
    tracker: Any,
    ticker: str,
    history: pd.DataFrame,
    config: TrainingConfig,
    return_bias: float,
    shrinkage: float = 1.0,
    calibration: Any = None,
) -> str:
    """Register a (seeded, untrained) LSTM whose every forecast is `return_bias` above the last close, as the
    ticker's champion, through the pipeline's own logging and registration: a champion any trained challenger
    beats (a large bias) or one that ties the naive forecast (zero shrinkage: exactly the last close). With a
    `calibration` it serves intervals of its own."""
    from pipeline.models.forecasters import LstmForecaster, min_input_rows
    from pipeline.models.lstm import build_lstm
    from pipeline.models.windows import build_dataset
    from pipeline.registry.baseline import ensure_baseline

    ensure_baseline(tracker, ticker, history, {})
    dataset = build_dataset(history, config)
    network = build_lstm(config.window, 2, config)
    dense = network.layers[-1]
    kernel, _ = dense.get_weights()
    target = dataset.scaler.target(np.array([np.log1p(return_bias)]))[0]
    dense.set_weights([np.zeros_like(kernel), np.array([target], dtype="float32")])
    forecaster = LstmForecaster(network, dataset.scaler, config.window, shrinkage, calibration)
    run_id = tracker.start_run(f"{ticker} planted", {"ticker": ticker, "role": "planted"})
    logged = tracker.log_forecaster(run_id, forecaster, history, min_input_rows(forecaster))
    version = tracker.register(ticker, logged, run_id, tags={"decision": "planted"}, description="planted for a test")
    tracker.make_champion(ticker, str(version.version))
    tracker.client.set_terminated(run_id)
    return str(version.version)


def only(items: list, what: str = "item") -> Any:
    assert len(items) == 1, f"expected one {what}, got {len(items)}"
    return items[0]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout:.0f}s")
        time.sleep(0.2)


# -- the Docker stack (read by the compose-file checks and by the scripts' runs) ---------------------------------


def env_example() -> dict[str, str]:
    """docker/.env.example as compose reads it: NAME=value lines, comments and blank lines skipped."""
    return dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )


def is_secret(name: str) -> bool:
    """What docker/check-secrets.sh holds to its strength rules."""
    return name.endswith(("_PASSWORD", "_SECRET_KEY"))
