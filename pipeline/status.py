"""What `stockpipe status` reports: per ticker, the stored data, the champion and the last decision."""

from __future__ import annotations

from typing import Any

from pipeline import journal
from pipeline.store import PriceStore


def ticker_status(ticker: str, store: PriceStore, reports_dir, champion) -> dict[str, Any]:
    """`champion` is the registry's current champion (or None): the journal may predate a rollback."""
    prices = store.read(ticker)
    last = journal.read(reports_dir, ticker) or {}
    return {
        "ticker": ticker,
        "data_start": None if prices.empty else prices["Date"].min().strftime("%Y-%m-%d"),
        "data_end": None if prices.empty else prices["Date"].max().strftime("%Y-%m-%d"),
        "rows": int(len(prices)),
        "champion_version": champion.version if champion else None,
        "champion_kind": champion.kind if champion else None,
        "champion_test_rmse": last.get("champion_test_rmse"),
        "challenger_test_rmse": last.get("challenger_test_rmse"),
        "naive_test_rmse": last.get("naive_test_rmse"),
        "u2": last.get("u2"),
        "last_decision": last.get("decision"),
        "last_reason": last.get("reason"),
        "last_run_id": last.get("run_id"),
        "last_run_at": last.get("finished_at"),
    }


def known_tickers(store: PriceStore, reports_dir) -> list[str]:
    return sorted(set(store.tickers()) | set(journal.tickers(reports_dir)))
