"""The `stockpipe` console script as users and other tooling call it: exit codes, messages, `status --json`, and
hostile or unlucky input that must end in a clear message (never a traceback) with nothing lost or leaked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tests.support import TINY_TRAINING, migrated_tracking_store, stockpipe

pytestmark = pytest.mark.integration

STATUS_FIELDS = {
    "ticker", "data_start", "data_end", "rows", "champion_version", "champion_kind", "champion_test_rmse",
    "challenger_test_rmse", "naive_test_rmse", "u2", "coverage_80", "coverage_95", "served_coverage_80",
    "served_coverage_95", "live_sessions", "live_u2_60", "live_coverage_80_60", "live_coverage_95_60",
    "live_kupiec_p_80", "last_decision", "last_reason",
    "last_run_id", "last_run_at", "quarantined_batches", "quarantined_bytes", "state_bytes", "state_bytes_total",
    "problems",
}  # fmt: skip


def cli(*args: str, home: Path, cwd: Path, **settings: str):
    if not (home / "mlflow.db").exists() and args[0] == "run":
        migrated_tracking_store(home / "mlflow.db")
    return stockpipe(*args, cwd=cwd, **{**TINY_TRAINING, "STOCKPIPE_HOME": str(home), **settings})


def run_csv(csv_dir: Path, *tickers_and_options: str, home: Path, cwd: Path, **settings: str):
    """`stockpipe run` on a folder of CSV exports."""
    return cli("run", "--source", "csv", "--csv-dir", str(csv_dir), "--tickers", *tickers_and_options, home=home,
               cwd=cwd, **settings)  # fmt: skip


def no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]


def test_bad_arguments_and_settings_are_refused_before_any_work(tmp_path):
    home = tmp_path / "state"
    for args, complaint in [
        (["run", "--tickers", "../x"], "invalid ticker '../x'"),
        (["run", "--tickers", "ﬀ"], "invalid ticker 'ﬀ'"),  # folds to "FF": checked before case folding
        (["run", "--as-of", "2017-13-01"], "YYYY-MM-DD"),
        (["run", "--epochs", "0"], "greater than or equal to 1"),
        (["run", "--source", "csv"], "--csv-dir"),
        (["run", "--source", "csv", "--csv-dir", str(tmp_path / "missing")], "not a directory"),
        (["predict", "MSFT/../x"], "invalid ticker"),
    ]:
        result = cli(*args, home=home, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert complaint in result.stderr, (args, result.stderr)
        no_traceback(result)
    bad_setting = cli("run", home=home, cwd=tmp_path, STOCKPIPE_TRAINING__EPOCHS="-5")
    assert bad_setting.returncode == 2 and "STOCKPIPE_TRAINING__EPOCHS" in bad_setting.stderr
    no_traceback(bad_setting)
    assert not (home / "store").exists(), "nothing may be written for refused arguments"


def test_status_on_an_empty_home_is_an_empty_list(tmp_path):
    result = cli("status", "--json", home=tmp_path / "state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_a_bad_csv_fails_its_ticker_naming_the_expectation_and_others_go_on(tmp_path, csv_dir):
    home = tmp_path / "state"
    prices = pd.read_csv(csv_dir / "MSFT.csv")
    prices.loc[100, "High"] = prices.loc[100, "Low"] / 2  # High below Low
    prices.to_csv(csv_dir / "MSFT.csv", index=False)

    # A folder of exports stands on today unless told otherwise; these end in 2017 and 2018.
    as_of = ("--as-of", "2017-11-10")
    result = run_csv(csv_dir, "msft", "GSPC", *as_of, home=home, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "expect_column_pair_values_a_to_be_greater_than_b" in result.stdout
    assert prices.loc[100, "Date"] in result.stdout, "the failing row is named by its date"
    assert not (home / "store" / "MSFT.parquet").exists(), "a rejected first batch must not create a store"
    assert list((home / "quarantine" / "MSFT").glob("*/MSFT.csv"))

    status = json.loads(cli("status", "--json", home=home, cwd=tmp_path).stdout)
    rows = {row["ticker"]: row for row in status}
    assert set(rows) == {"MSFT", "GSPC"}
    for row in rows.values():
        assert set(row) == STATUS_FIELDS, set(row) ^ STATUS_FIELDS
    assert rows["MSFT"]["last_decision"] == "failed" and "High" in rows["MSFT"]["last_reason"]
    assert rows["MSFT"]["quarantined_batches"] == 1 and rows["MSFT"]["quarantined_bytes"] > 0
    assert rows["GSPC"]["last_decision"] in ("promoted", "kept"), rows["GSPC"]["last_reason"]
    assert rows["GSPC"]["champion_version"] in ("1", "2")
    assert rows["GSPC"]["challenger_test_rmse"] > 0 and rows["GSPC"]["naive_test_rmse"] > 0
    assert 0 < rows["GSPC"]["coverage_80"] < rows["GSPC"]["coverage_95"] <= 1
    assert 0 < rows["GSPC"]["served_coverage_80"] < rows["GSPC"]["served_coverage_95"] <= 1
    assert rows["GSPC"]["live_sessions"] == 0 and rows["GSPC"]["live_u2_60"] is None, "nothing served has matured"
    assert rows["MSFT"]["live_sessions"] is None, "no champion, no record"
    # What each ticker holds in the home, by kind: GSPC's logged models and site; MSFT's refused batch.
    assert rows["GSPC"]["state_bytes"]["logged_models"] > 0 and rows["GSPC"]["state_bytes"]["data_docs"] > 0
    assert rows["GSPC"]["state_bytes_total"] == sum(v or 0 for v in rows["GSPC"]["state_bytes"].values())
    assert rows["MSFT"]["state_bytes"]["quarantine"] == rows["MSFT"]["quarantined_bytes"]


def test_an_input_that_is_a_link_out_of_its_folder_is_refused_without_echoing_it(tmp_path, csv_dir):
    home = tmp_path / "state"
    (csv_dir / "MSFT.csv").unlink()
    (csv_dir / "MSFT.csv").symlink_to("/proc/self/environ")
    secret = "sk-live-4f9a8b7c6d5e"
    result = run_csv(csv_dir, "MSFT", home=home, cwd=tmp_path, MY_API_TOKEN=secret)
    assert result.returncode == 1
    assert "leads outside" in result.stdout and "MSFT.csv" in result.stdout
    status = cli("status", "--json", home=home, cwd=tmp_path, MY_API_TOKEN=secret)
    for text in (result.stdout, result.stderr, status.stdout):
        assert secret not in text and "MY_API_TOKEN" not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    no_traceback(result)


def test_a_future_row_quarantines_the_batch_and_a_partial_export_never_shrinks_history(tmp_path, csv_dir):
    home = tmp_path / "state"

    def run_msft(as_of: str):
        return run_csv(csv_dir, "MSFT", "--as-of", as_of, home=home, cwd=tmp_path)

    first = run_msft("2017-11-03")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stored = (home / "store" / "MSFT.parquet").read_bytes()
    prices = pd.read_csv(csv_dir / "MSFT.csv")

    future = pd.concat([prices, prices.tail(1).assign(Date="2099-01-05")])
    future.to_csv(csv_dir / "MSFT.csv", index=False)
    result = run_msft("2017-11-10")
    assert result.returncode == 1 and "2099-01-05" in result.stdout, result.stdout[-2000:]
    assert (home / "store" / "MSFT.parquet").read_bytes() == stored

    # A partial download: only the last 2,600 rows, one overlapping close 0.5% off (looks like a re-adjustment).
    partial = prices.tail(2600).copy()
    partial.loc[partial["Date"] == "2017-11-01", "Close"] *= 1.005
    partial.to_csv(csv_dir / "MSFT.csv", index=False)
    result = run_msft("2017-11-10")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "lacks" in result.stdout and "stored session(s) from 1986-03-13" in result.stdout
    assert (home / "store" / "MSFT.parquet").read_bytes() == stored, "history is never replaced by a slice"
    no_traceback(result)


def test_tickers_run_on_a_local_dask_cluster(tmp_path):
    home = tmp_path / "state"
    result = cli("run", "--tickers", "MSFT", "--as-of", "2017-11-10", "--task-runner", "dask", home=home, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "distributed.scheduler" in result.stdout + result.stderr, "the work went through a Dask scheduler"
    assert "Error logging to API" not in result.stdout + result.stderr, "workers log to the run's Prefect API"
    (row,) = json.loads(cli("status", "--json", home=home, cwd=tmp_path).stdout)
    assert row["last_decision"] in ("promoted", "kept") and row["challenger_test_rmse"] > 0


def test_status_and_predict_survive_broken_files(tmp_path):
    home = tmp_path / "state"
    assert (
        cli(
            "run",
            "--as-of",
            "2017-11-10",
            home=home,
            cwd=tmp_path,
            STOCKPIPE_TICKERS='["MSFT", "GSPC"]',
            STOCKPIPE_MAX_STALENESS_SESSIONS="1000",
        ).returncode
        == 0
    )
    (home / "reports" / "GSPC" / "last_run.json").write_text("")
    (home / "store" / "MSFT.parquet").write_bytes(b"PAR1 torn")
    status = cli("status", "--json", home=home, cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    rows = {row["ticker"]: row for row in json.loads(status.stdout)}
    assert rows["GSPC"]["last_decision"] in ("promoted", "kept"), "the cache is rebuilt from MLflow"
    assert "MSFT.parquet is unreadable" in rows["MSFT"]["problems"][0]
    predicted = cli("predict", "MSFT", home=home, cwd=tmp_path)
    assert predicted.returncode == 1 and "MSFT.parquet is unreadable" in predicted.stderr
    assert cli("predict", "GSPC", "--json", home=home, cwd=tmp_path).returncode == 0
    no_traceback(predicted)
    assert os.path.getsize(home / "store" / "GSPC.parquet") > 0
