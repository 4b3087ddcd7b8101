"""What `status` reports comes from the journal beside the store and the registry's current champion."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipeline import journal
from pipeline.sources import CsvSource
from pipeline.status import known_tickers, ticker_status
from pipeline.store import PriceStore
from pipeline.tracking import Champion

SNAPSHOTS = Path(__file__).resolve().parents[2] / "data" / "snapshots"


def test_journal_round_trip_and_refuses_unsafe_tickers(tmp_path):
    journal.write(tmp_path, "MSFT", {"decision": "kept", "u2": 1.01})
    assert journal.read(tmp_path, "MSFT") == {"decision": "kept", "u2": 1.01}
    assert journal.read(tmp_path, "GSPC") is None
    assert journal.tickers(tmp_path) == ["MSFT"]
    assert not list(tmp_path.glob("MSFT/.last_run.*")), "no temporary files left behind"
    with pytest.raises(ValueError, match="invalid ticker"):
        journal.write(tmp_path, "../etc", {})


def test_status_combines_store_journal_and_champion(tmp_path):
    store = PriceStore(tmp_path / "store", tmp_path / "locks")
    store.write("MSFT", CsvSource(SNAPSHOTS).fetch("MSFT", dt.date(2017, 10, 31), dt.date(2017, 11, 10)))
    journal.write(tmp_path / "reports", "MSFT", {"decision": "promoted", "reason": "lower", "challenger_test_rmse": 1.0,
                                                 "champion_test_rmse": 2.0, "naive_test_rmse": 2.0, "u2": 0.5})
    journal.write(tmp_path / "reports", "GSPC", {"decision": "failed", "reason": "contract"})
    assert known_tickers(store, tmp_path / "reports") == ["GSPC", "MSFT"]

    row = ticker_status("MSFT", store, tmp_path / "reports", Champion("3", "lstm", "models:/x@champion"))
    assert row["data_start"] == "2017-11-01" and row["data_end"] == "2017-11-10" and row["rows"] == 8
    assert (row["champion_version"], row["champion_kind"]) == ("3", "lstm")
    assert (row["last_decision"], row["challenger_test_rmse"], row["naive_test_rmse"]) == ("promoted", 1.0, 2.0)

    failed = ticker_status("GSPC", store, tmp_path / "reports", None)
    assert failed["rows"] == 0 and failed["data_end"] is None and failed["champion_version"] is None
    assert failed["last_decision"] == "failed"
