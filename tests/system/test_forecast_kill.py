"""The served forecasts' file through a real kill: `stockpipe run` SIGKILLed while the day's forecast is being
written leaves the previous file whole (the new one was never renamed into place), and the next run records the
day once and scores each matured forecast once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data.forecast_log import ForecastLog
from tests.kill_at import MARKER
from tests.support import PROJECT_ROOT, SNAPSHOTS, TINY_TRAINING, clean_env

pytestmark = pytest.mark.system

DAY_ONE, DAY_TWO = "2017-11-09", "2017-11-10"


def run(home: Path, exports: Path, as_of: str, *kill: str) -> subprocess.CompletedProcess:
    env = clean_env(STOCKPIPE_HOME=str(home), PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300", **TINY_TRAINING)
    args = ["run", "--tickers", "MSFT", "--as-of", as_of, "--source", "csv", "--csv-dir", str(exports)]
    command = (
        [sys.executable, "-m", "tests.kill_at", *kill, "--", *args]
        if kill
        else [sys.executable, "-m", "flows.cli", *args]
    )
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=home.parent)


def test_a_kill_while_the_forecast_is_written_leaves_the_last_file_whole_and_the_next_run_records_it_once(tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv")
    prices[prices["Date"] >= "2014-11-01"].to_csv(exports / "MSFT.csv", index=False)
    home = tmp_path / "state"
    first = run(home, exports, DAY_ONE)
    assert first.returncode == 0, first.stderr[-2000:]
    log = ForecastLog(home / "forecasts")
    before = log.read("MSFT")
    assert before["target"].dt.strftime("%Y-%m-%d").tolist() == [DAY_TWO]

    # Day two writes Parquet twice: the price store's new row, then the forecast file. The second write_table has
    # filled the forecast's temporary file when the kill comes; it was never renamed over the real one.
    killed = run(home, exports, DAY_TWO, "pyarrow.parquet.write_table", "after", "--call", "2")
    assert killed.returncode == -signal.SIGKILL and MARKER in killed.stderr, killed.stderr[-2000:]
    pd.testing.assert_frame_equal(log.read("MSFT"), before)
    torn = [p.name for p in (home / "forecasts").iterdir() if p.name.startswith(".MSFT.parquet.")]
    assert len(torn) == 1, "the kill came inside the forecast's write, its temporary file not yet renamed"

    again = run(
        home,
        exports,
        DAY_TWO,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    after = log.read("MSFT")
    assert after["target"].dt.strftime("%Y-%m-%d").tolist() == [DAY_TWO, "2017-11-13"], "one row per session"
    assert sorted(p.name for p in (home / "forecasts").iterdir()) == ["MSFT.parquet"], "the dead writer's file is gone"
