"""The `stockpipe` console script as users and other tooling call it: exit codes, messages, `status --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.conftest import TINY_TRAINING

pytestmark = pytest.mark.integration

STOCKPIPE = [sys.executable, "-m", "flows.cli"]
PROJECT_ROOT = Path(__file__).resolve().parents[2]
STATUS_FIELDS = {
    "ticker",
    "data_start",
    "data_end",
    "rows",
    "champion_version",
    "champion_kind",
    "champion_test_rmse",
    "challenger_test_rmse",
    "naive_test_rmse",
    "last_decision",
    "last_reason",
}


def stockpipe(*args: str, home: Path | str | None, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI as a newcomer runs it: nothing inherited, and STOCKPIPE_HOME unset when `home` is None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "MLFLOW_", "PREFECT_"))}
    # A wide terminal keeps Typer's error box from wrapping the message being checked.
    env.update(TINY_TRAINING, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300")
    if home is not None:
        env["STOCKPIPE_HOME"] = str(home)
    return subprocess.run([*STOCKPIPE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    home = tmp_path / "state"
    for args, complaint in [
        (["run", "--tickers", "../x"], "invalid ticker '../X'"),
        (["run", "--as-of", "2017-13-01"], "YYYY-MM-DD"),
        (["run", "--source", "csv"], "--csv-dir"),
        (["run", "--source", "csv", "--csv-dir", str(tmp_path / "missing")], "not a directory"),
    ]:
        result = stockpipe(*args, home=home, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert complaint in result.stderr, (args, result.stderr)
    assert not (home / "store").exists(), "nothing may be written for refused arguments"


def test_status_on_an_empty_home_is_an_empty_list(tmp_path):
    result = stockpipe("status", "--json", home=tmp_path / "state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_bad_csv_exits_non_zero_naming_the_expectation_and_others_go_on(tmp_path, csv_dir):
    home = tmp_path / "state"
    prices = pd.read_csv(csv_dir / "MSFT.csv")
    prices.loc[100, "High"] = prices.loc[100, "Low"] / 2  # High below Low
    prices.to_csv(csv_dir / "MSFT.csv", index=False)

    result = stockpipe(
        "run", "--source", "csv", "--csv-dir", str(csv_dir), "--tickers", "MSFT", "GSPC", home=home, cwd=tmp_path
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "expect_column_pair_values_a_to_be_greater_than_b" in result.stdout
    assert not (home / "store" / "MSFT.parquet").exists(), "a rejected first batch must not create a store"
    assert list((home / "quarantine" / "MSFT").glob("*/batch.csv"))

    status = json.loads(stockpipe("status", "--json", home=home, cwd=tmp_path).stdout)
    rows = {row["ticker"]: row for row in status}
    assert set(rows) == {"MSFT", "GSPC"}
    for row in rows.values():
        assert set(row) >= STATUS_FIELDS, STATUS_FIELDS - set(row)
    assert rows["MSFT"]["last_decision"] == "failed"
    assert "High" in rows["MSFT"]["last_reason"]
    assert rows["GSPC"]["last_decision"] in ("promoted", "kept")
    assert rows["GSPC"]["champion_version"] in ("1", "2")
    assert rows["GSPC"]["challenger_test_rmse"] > 0 and rows["GSPC"]["naive_test_rmse"] > 0


def test_tickers_run_on_a_local_dask_cluster(tmp_path):
    home = tmp_path / "state"
    result = stockpipe(
        "run", "--tickers", "MSFT", "--as-of", "2017-11-10", "--task-runner", "dask", home=home, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed.scheduler" in result.stdout + result.stderr, "the work went through a Dask scheduler"
    assert "Error logging to API" not in result.stdout + result.stderr, "workers log to the run's Prefect server"
    (row,) = json.loads(stockpipe("status", "--json", home=home, cwd=tmp_path).stdout)
    assert row["last_decision"] in ("promoted", "kept") and row["challenger_test_rmse"] > 0
