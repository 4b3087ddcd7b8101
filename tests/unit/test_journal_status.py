"""The local cache of outcomes (typed, atomic, rebuilt when broken) and what `status` shows per ticker."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.common.outcome import Decision, TickerOutcome
from pipeline.data.store import PriceStore
from pipeline.registry import journal
from pipeline.registry.tracking import Champion
from pipeline.status import known_tickers, ticker_status
from tests.support import bundled

STATUS_KEYS = {
    "ticker",
    "data_start",
    "data_end",
    "rows",
    "champion_version",
    "champion_kind",
    "champion_test_rmse",
    "challenger_test_rmse",
    "naive_test_rmse",
    "u2",
    "coverage_80",
    "coverage_95",
    "served_coverage_80",
    "served_coverage_95",
    "live_sessions",
    "live_u2_60",
    "live_coverage_80_60",
    "live_coverage_95_60",
    "live_kupiec_p_80",
    "last_decision",
    "last_reason",
    "last_run_id",
    "last_run_at",
    "quarantined_batches",
    "quarantined_bytes",
    "state_bytes",
    "state_bytes_total",
    "problems",
}


def outcome(ticker: str = "MSFT", decision: Decision = Decision.kept, **values) -> TickerOutcome:
    return TickerOutcome(ticker, decision, "a reason", **values)


def test_the_cache_round_trips_typed_outcomes_and_refuses_unsafe_tickers(tmp_path):
    kept = outcome(u2=1.01, timings={"train": 1.5})
    journal.write(tmp_path, kept)
    assert journal.read(tmp_path, "MSFT") == kept
    assert journal.read(tmp_path, "MSFT").decision is Decision.kept
    assert journal.read(tmp_path, "GSPC") is None
    assert journal.tickers(tmp_path) == ["MSFT"]
    assert not list(tmp_path.glob("MSFT/.*.tmp")), "no temporary files left behind"
    assert (tmp_path / "MSFT" / "last_run.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="invalid ticker"):
        journal.path(tmp_path, "../etc")


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"ticker": "MSFT", "decision": "exploded", "reason": ""}',
        '{"ticker": "GSPC", "decision": "kept", "reason": ""}',
    ],
)
def test_a_broken_cache_is_unreadable_and_rebuilt(tmp_path, content):
    (tmp_path / "MSFT").mkdir()
    journal.path(tmp_path, "MSFT").write_text(content)
    with pytest.raises(journal.CacheUnreadable):
        journal.read(tmp_path, "MSFT")
    rebuilt = outcome(decision=Decision.promoted)
    assert journal.last_outcome(tmp_path, "MSFT", lambda: rebuilt) == rebuilt
    assert journal.read(tmp_path, "MSFT") == rebuilt, "written back"


def test_a_missing_cache_with_nothing_recorded_stays_missing(tmp_path):
    assert journal.last_outcome(tmp_path, "MSFT", lambda: None) is None
    assert not journal.path(tmp_path, "MSFT").exists()


def test_status_combines_store_last_outcome_and_champion(tmp_path):
    store = PriceStore(tmp_path / "store", tmp_path / "locks")
    store.write("MSFT", bundled("MSFT", dt.date(2017, 10, 31)))
    last = outcome(
        decision=Decision.promoted,
        challenger_test_rmse=1.0,
        champion_test_rmse=2.0,
        naive_test_rmse=2.0,
        u2=0.5,
        coverage_80=0.8,
        coverage_95=0.96,
        served_coverage_80=0.79,
        served_coverage_95=0.95,
        run_id="abc",
    )
    journal.write(tmp_path / "reports", last)
    journal.write(tmp_path / "reports", outcome("GSPC", Decision.failed))
    assert known_tickers(store, tmp_path / "reports", ["AAPL"]) == ["AAPL", "GSPC", "MSFT"]

    champion = Champion("3", "lstm", "file:///x", "2017-11-10", "{}", "run")
    row = ticker_status("MSFT", store, last, champion, tmp_path / "quarantine")
    assert set(row) == STATUS_KEYS
    assert row["data_start"] == "2017-11-01" and row["data_end"] == "2017-11-10" and row["rows"] == 8
    assert (row["champion_version"], row["champion_kind"]) == ("3", "lstm")
    assert (row["last_decision"], row["challenger_test_rmse"], row["coverage_80"]) == ("promoted", 1.0, 0.8)
    assert (row["served_coverage_80"], row["served_coverage_95"]) == (0.79, 0.95)
    assert row["problems"] == [] and row["quarantined_batches"] == 0


def test_a_broken_store_file_is_one_tickers_problem_in_status(tmp_path):
    store = PriceStore(tmp_path / "store", tmp_path / "locks")
    store.write("MSFT", bundled("MSFT", dt.date(2017, 10, 31)))
    store.path("MSFT").write_bytes(b"PAR1 torn")
    row = ticker_status("MSFT", store, None, None, tmp_path / "quarantine")
    assert row["rows"] == 0 and row["data_end"] is None
    (problem,) = row["problems"]
    assert "MSFT.parquet is unreadable" in problem and "move it aside" in problem
