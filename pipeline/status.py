"""What `stockpipe status` reports per ticker: the stored data, the champion, the last decision, the quarantine.

A broken file of one ticker is shown as that ticker's problem, with how to recover; the others are unaffected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import state_size
from pipeline.common.outcome import TickerOutcome
from pipeline.data import quarantine
from pipeline.data.forecast_log import ForecastLog, ForecastLogUnreadable
from pipeline.data.store import PriceStore, StoreUnreadable
from pipeline.evaluation.live_record import STATUS_FIELDS, LiveRecord, record_on
from pipeline.registry import journal
from pipeline.registry.tracking import Champion


def ticker_status(
    ticker: str,
    store: PriceStore,
    last: TickerOutcome | None,
    champion: Champion | None,
    quarantine_dir: Path,
    problems: list[str] | None = None,
    forecasts: ForecastLog | None = None,
    state_bytes: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """`champion` is the registry's current champion (the last outcome may predate a rollback). Its live record is
    computed here, from the forecasts it served and the prices stored now. `state_bytes` is what the ticker holds
    in the home, by kind (pipeline.state_size)."""
    problems = list(problems or [])
    live: LiveRecord | None = None
    try:
        prices = store.read(ticker)
        start = None if prices.empty else prices["Date"].min().strftime("%Y-%m-%d")
        end = None if prices.empty else prices["Date"].max().strftime("%Y-%m-%d")
        rows = len(prices)
    except StoreUnreadable as exc:
        problems.append(str(exc))
        prices, start, end, rows = None, None, None, 0
    if forecasts is not None and champion is not None and prices is not None:
        try:
            live = record_on(forecasts.read(ticker), prices, champion.version)
        except ForecastLogUnreadable as exc:
            problems.append(str(exc))
    kept = quarantine.usage(quarantine_dir, ticker)
    return {
        "ticker": ticker,
        "data_start": start,
        "data_end": end,
        "rows": rows,
        "champion_version": champion.version if champion else None,
        "champion_kind": champion.kind if champion else None,
        "champion_test_rmse": last.champion_test_rmse if last else None,
        "challenger_test_rmse": last.challenger_test_rmse if last else None,
        "naive_test_rmse": last.naive_test_rmse if last else None,
        "u2": last.u2 if last else None,
        "coverage_80": last.coverage_80 if last else None,
        "coverage_95": last.coverage_95 if last else None,
        "served_coverage_80": last.served_coverage_80 if last else None,
        "served_coverage_95": last.served_coverage_95 if last else None,
        **(live.status_fields() if live else dict.fromkeys(STATUS_FIELDS)),
        "last_decision": last.decision.value if last else None,
        "last_reason": last.reason if last else None,
        "last_run_id": last.run_id if last else None,
        "last_run_at": last.finished_at if last else None,
        "quarantined_batches": kept.batches,
        "quarantined_bytes": kept.bytes,
        "state_bytes": state_bytes,
        "state_bytes_total": state_size.total(state_bytes) if state_bytes is not None else None,
        "problems": problems,
    }


def known_tickers(store: PriceStore, reports_dir: Path, registered: list[str]) -> list[str]:
    return sorted(set(store.tickers()) | set(journal.tickers(reports_dir)) | set(registered))
