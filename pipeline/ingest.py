"""Fetching and admitting a ticker's new prices: only what passes the data contract reaches the store.

A refused batch is quarantined as it arrived and the store is left exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import quarantine
from pipeline.fsutil import atomic_write_text
from pipeline.settings import TrainingConfig
from pipeline.sources import PriceSource, Received
from pipeline.store import digest, merge_new_rows, overlap_disagreement, to_store_schema
from pipeline.trading_calendar import sessions_between
from pipeline.validation import ValidationReport, render_data_docs, validate_prices
from pipeline.validation_report import render_html
from pipeline.windows import min_rows_for

log = logging.getLogger(__name__)

# Calendar days re-fetched before the stored end, to notice a provider re-adjusting its history.
OVERLAP_DAYS = 7


class BatchRefused(RuntimeError):
    """New prices were refused and quarantined; the store was left as it was."""

    def __init__(self, ticker: str, message: str, quarantined: Path | None, reports: tuple[ValidationReport, ...] = ()):
        self.ticker = ticker
        self.quarantined = quarantined
        self.reports = reports
        where = f"; batch quarantined in {quarantined}" if quarantined else ""
        super().__init__(f"{message}{where}")


class DataContractViolation(BatchRefused):
    """Prices broke a critical expectation of the data contract."""


class HistoryWouldShrink(BatchRefused):
    """A re-adjusted history does not cover what is stored: replacing it would lose sessions."""


class StaleData(RuntimeError):
    """The newest stored session is too far behind the as-of date to train or decide on."""


@dataclass(frozen=True)
class Fetched:
    """What a source returned: new rows after the stored end, or a full history that replaces the store."""

    received: Received
    replaces_history: bool = False
    note: str = ""

    @property
    def rows(self) -> pd.DataFrame:
        return self.received.rows


@dataclass(frozen=True)
class Admitted:
    """Prices that passed the contract and may be stored and trained on."""

    ticker: str
    history: pd.DataFrame
    new_rows: int
    data_digest: str
    reports: tuple[ValidationReport, ...] = ()
    replaced_history: bool = False
    note: str = ""
    validation_html: str = ""

    @property
    def changed(self) -> bool:
        """Whether the store must be rewritten with `history`."""
        return self.replaced_history or self.new_rows > 0

    @property
    def data_start(self) -> str:
        return self.history["Date"].min().strftime("%Y-%m-%d")

    @property
    def data_end(self) -> str:
        return self.history["Date"].max().strftime("%Y-%m-%d")

    def validation_json(self) -> list[dict[str, Any]]:
        return [report.to_json() for report in self.reports]


def fetch_batch(source: PriceSource, history: pd.DataFrame, ticker: str, as_of: dt.date) -> Fetched:
    """New rows since the stored end; the full history again when the provider re-adjusted what is stored."""
    since = None if history.empty else history["Date"].max().date()
    if since is None:
        received = source.receive(ticker, None, as_of)
        log.info("%s: fetched %d row(s) from %s (full history)", ticker, len(received.rows), source.name)
        return Fetched(received)
    window = source.receive(ticker, since - dt.timedelta(days=OVERLAP_DAYS), as_of)
    rows = window.rows
    changed = overlap_disagreement(history, rows.loc[rows["Date"] <= pd.Timestamp(since)])
    if changed:
        full = source.receive(ticker, None, as_of)
        note = (
            f"history re-adjusted by {source.name} ({changed}): re-fetched {len(full.rows)} row(s) to replace the store"
        )
        log.warning("%s: %s", ticker, note)
        return Fetched(full, replaces_history=True, note=note)
    new = rows.loc[(rows["Date"] > pd.Timestamp(since)) | rows["Date"].isna()].reset_index(drop=True)
    log.info("%s: fetched %d new row(s) from %s since %s", ticker, len(new), source.name, since)
    return Fetched(Received(new, window.raw, window.raw_name))


def missing_sessions(history: pd.DataFrame, replacement: pd.DataFrame) -> list[pd.Timestamp]:
    """Stored dates a replacement history lacks: a re-adjustment may rewrite prices, never drop sessions."""
    stored = pd.DatetimeIndex(history["Date"].dropna())
    offered = pd.DatetimeIndex(replacement["Date"].dropna())
    return list(stored.difference(offered))


def _date_span(dates: list[pd.Timestamp]) -> str:
    first, last = dates[0].strftime("%Y-%m-%d"), dates[-1].strftime("%Y-%m-%d")
    return f"{len(dates)} stored session(s) from {first} to {last}" if len(dates) > 1 else f"the stored session {first}"


# Stored sessions validated with new rows, so every rule that looks back (gaps, returns, volume against its 20-session
# median) sees the rows before them.
CONTEXT_ROWS = 25


def admit(
    ticker: str,
    history: pd.DataFrame,
    fetched: Fetched,
    *,
    suite: dict,
    as_of: dt.date,
    config: TrainingConfig,
    quarantine_dir: Path,
    reports_dir: Path,
    today: dt.date | None = None,
    proven_digest: str | None = None,
) -> Admitted:
    """Validate what is new against the contract; quarantine and raise on any refusal.

    `proven_digest` is the digest of the history the last decision was taken on: it passed the contract then, so when
    the stored history still has it, only the new rows (with the stored sessions just before them) are validated
    again, not thirty years of history. Otherwise the new batch and the whole merged history are.
    """
    batch = fetched.rows
    reports: list[ValidationReport] = []

    def refuse(kind: type[BatchRefused], message: str, failed: list[ValidationReport]) -> BatchRefused:
        html = render_html(failed, title=f"{ticker}: batch refused") if failed else None
        report = {"ticker": ticker, "refused": message, "validation": [r.to_json() for r in failed]}
        folder = quarantine.keep(quarantine_dir, ticker, fetched.received.raw, fetched.received.raw_name, report, html)
        _save_reports(reports_dir, ticker, reports)
        return kind(ticker, message, folder, tuple(failed))

    def check(frame: pd.DataFrame, subject: str, min_rows: int = 1) -> None:
        report = validate_prices(
            frame, subject=subject, suite_definition=suite, as_of=as_of, today=today, min_rows=min_rows
        )
        reports.append(report)
        if not report.passed:
            raise refuse(DataContractViolation, _contract_message(ticker, report), [report])

    whole = min_rows_for(config)
    if fetched.replaces_history or history.empty:
        # The batch is the whole history: one validation, with the minimum length.
        kind = "replacement history" if fetched.replaces_history else "full history"
        check(batch, f"{ticker} {kind}", whole)
        if fetched.replaces_history and (lacking := missing_sessions(history, batch)):
            raise refuse(
                HistoryWouldShrink,
                f"{ticker}: the re-fetched history lacks {_date_span(lacking)}; "
                "refusing to replace the stored history with it",
                [],
            )
        merged = batch.reset_index(drop=True)
    else:
        merged = merge_new_rows(history, batch)
        if proven_digest is not None and digest(history) == proven_digest:
            if not batch.empty:
                check(
                    pd.concat([history.tail(CONTEXT_ROWS), batch], ignore_index=True),
                    f"{ticker} new rows after the stored history",
                )
        else:
            if not batch.empty:
                check(batch, f"{ticker} new batch")
            check(merged, f"{ticker} merged history", whole)
    _save_reports(reports_dir, ticker, reports)
    for report in reports:
        log.info("%s", report.summary())
    admitted = to_store_schema(merged)
    return Admitted(
        ticker,
        admitted,
        len(admitted) - len(history),
        digest(admitted),
        tuple(reports),
        replaced_history=fetched.replaces_history,
        note=fetched.note,
        validation_html=render_html(reports, title=f"{ticker}: data contract"),
    )


def _contract_message(ticker: str, report: ValidationReport) -> str:
    failed = "; ".join(f.describe() for f in report.critical_failures)
    return f"{ticker}: {report.subject} failed the data contract: {failed}"


def _save_reports(reports_dir: Path, ticker: str, reports: list[ValidationReport]) -> None:
    """The last validation of a ticker, beside the store, for a look without MLflow: the JSON result, the small
    report, and GX's full Data Docs site (kept here once, never logged per run: it is mostly static assets)."""
    folder = Path(reports_dir) / ticker
    atomic_write_text(folder / "validation.json", json.dumps([r.to_json() for r in reports], indent=2, default=str))
    atomic_write_text(folder / "validation.html", render_html(reports, title=f"{ticker}: data contract"))
    if reports:
        render_data_docs(reports, folder / "data_docs")


def sessions_behind(history: pd.DataFrame, as_of: dt.date) -> int:
    """Exchange sessions after the newest stored one, up to and including `as_of`."""
    if history.empty:
        return 0
    last = history["Date"].max().date()
    if last >= as_of:
        return 0
    return max(0, len(sessions_between(last, as_of)) - 1)


def check_freshness(ticker: str, history: pd.DataFrame, as_of: dt.date, max_sessions: int) -> None:
    """Refuse to train or decide on data that ends too long before the day the run stands on."""
    behind = sessions_behind(history, as_of)
    if behind > max_sessions:
        last = history["Date"].max().date()
        raise StaleData(
            f"stale data: last price {last}, {behind} sessions before as-of {as_of} "
            f"(at most {max_sessions} allowed: STOCKPIPE_MAX_STALENESS_SESSIONS)"
        )
