"""Real exports through `stockpipe run --source csv` (issue 25): Yahoo's download is read with its `Adj Close`
applied and said so in the run's log, storing every session with the adjusted close; files that cannot be read fail
their ticker with exit 1, a message naming the problem, no traceback, and the file quarantined byte for byte.
One run for all three keeps it to one training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.data.sources import CsvSource
from tests.fixtures.exports import bundled_text, no_volume, space_separated, yahoo_download
from tests.integration.test_cli import cli, no_traceback, run_csv
from tests.support import SNAPSHOTS

pytestmark = pytest.mark.system


def test_an_export_is_read_and_unreadable_ones_are_refused_and_quarantined(tmp_path):
    home, exports = tmp_path / "state", tmp_path / "exports"
    exports.mkdir()
    files = {
        "MSFT": yahoo_download(bundled_text("MSFT")),
        "GSPC": no_volume(bundled_text("GSPC")),
        "SPACED": space_separated(bundled_text("MSFT")),
    }
    for ticker, content in files.items():
        (exports / f"{ticker}.csv").write_bytes(content)

    result = run_csv(exports, *files, "--as-of", "2017-11-10", home=home, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    no_traceback(result)
    assert "lacks column(s) ['Volume']" in result.stdout and "GSPC.csv" in result.stdout
    assert "SPACED.csv: the header is separated by a space" in result.stdout
    assert "<unreadable>" not in output
    assert "MSFT: Adj Close applied as --source yahoo applies it" in output, "the policy is said on the run"
    for ticker in ("GSPC", "SPACED"):
        (kept,) = (home / "quarantine" / ticker).glob(f"*/{ticker}.csv")
        assert kept.read_bytes() == files[ticker], f"{ticker}: quarantined as received"
        assert not (home / "store" / f"{ticker}.parquet").exists()

    stored = pd.read_parquet(home / "store" / "MSFT.parquet")
    want = CsvSource(SNAPSHOTS).read("MSFT")[0]
    assert stored["Date"].tolist() == want["Date"].tolist(), "every session, oldest first"
    assert stored["Close"].tolist() == pytest.approx(want["Close"].tolist(), rel=1e-12), "Adj Close, as Yahoo serves"
    status = {row["ticker"]: row for row in json.loads(cli("status", "--json", home=home, cwd=tmp_path).stdout)}
    assert status["MSFT"]["last_decision"] in ("promoted", "kept")
    assert status["GSPC"]["last_decision"] == "failed" and status["GSPC"]["quarantined_batches"] == 1
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (noted,) = client.search_runs(experiments, "tags.source_notes LIKE '%Adj Close applied%'")
    assert noted.data.tags["ticker"] == "MSFT", "and the run keeps it"
