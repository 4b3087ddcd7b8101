"""Integration fixtures: a real Prefect test server, a real MLflow SQLite store, tiny models on bundled data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support import SNAPSHOTS, TINY_TRAINING, migrated_tracking_store


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh state directory with tiny-model settings, and nothing inherited from the caller's env."""
    monkeypatch.chdir(tmp_path)
    state = tmp_path / "state"
    for key in [k for k in os.environ if k.startswith("STOCKPIPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("STOCKPIPE_HOME", str(state))
    # Flow parameters may only name CSV folders inside this root (they come from whoever triggers a run).
    monkeypatch.setenv("STOCKPIPE_CSV_ROOT", str(tmp_path))
    for key, value in TINY_TRAINING.items():
        monkeypatch.setenv(key, value)
    migrated_tracking_store(state / "mlflow.db")
    return state


@pytest.fixture
def settings(home):
    from pipeline.common.settings import Settings

    return Settings()


@pytest.fixture
def csv_dir(tmp_path) -> Path:
    """A user's folder of CSV exports: copies of the bundled files they can corrupt."""
    folder = tmp_path / "exports"
    folder.mkdir()
    for name in ("MSFT.csv", "GSPC.csv"):
        shutil.copy(SNAPSHOTS / name, folder / name)
    return folder
