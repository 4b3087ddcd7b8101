"""Integration fixtures: a real Prefect test server, a real MLflow SQLite store, tiny models on bundled data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

SNAPSHOTS = Path(__file__).resolve().parents[2] / "data" / "snapshots"

# Small enough to train in seconds, large enough to exercise every split.
TINY_TRAINING = {
    "STOCKPIPE_TRAINING__EPOCHS": "1",
    "STOCKPIPE_TRAINING__HISTORY_YEARS": "3",
    "STOCKPIPE_TRAINING__WINDOW": "20",
    "STOCKPIPE_TRAINING__UNITS": "8",
}


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh state directory with tiny-model settings, and nothing inherited from the caller's env."""
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    monkeypatch.setenv("STOCKPIPE_HOME", str(state))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in [k for k in os.environ if k.startswith("STOCKPIPE_") and k != "STOCKPIPE_HOME"]:
        monkeypatch.delenv(key)
    for key, value in TINY_TRAINING.items():
        monkeypatch.setenv(key, value)
    return state


@pytest.fixture
def settings(home):
    from pipeline.settings import Settings

    return Settings()


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    """A user's folder of CSV exports: copies of the bundled files they can corrupt."""
    folder = tmp_path / "exports"
    folder.mkdir()
    for name in ("MSFT.csv", "GSPC.csv"):
        shutil.copy(SNAPSHOTS / name, folder / name)
    return folder


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)
