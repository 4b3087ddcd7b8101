"""Fetching and admitting a ticker's new prices: only what passes the data contract reaches the store.

A refused batch is quarantined as it arrived and the store is left exactly as it was, whether the contract refused
its rows or its file could not be read as prices at all.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common.files import atomic_write_text
from pipeline.common.trading_calendar import DEFAULT_EXCHANGE, sessions_between
from pipeline.contract.data_docs import render_data_docs
from pipeline.contract.html_report import render_html
from pipeline.contract.report import ValidationReport
from pipeline.contract.runner import validate_prices
from pipeline.data import quarantine
from pipeline.data.sources import COLUMNS, PriceSource, Received, UnreadablePrices, normalize
from pipeline.data.store import digest, merge_new_rows, overlap_disagreement, to_store_schema

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


class UnreadableBatch(BatchRefused):
    """The source's answer could not be read as prices (its columns, delimiter, dates): no row reached the contract."""


class StaleData(RuntimeError):
    """The newest stored session is too far behind the as-of date to train or decide on."""


@dataclass(frozen=True)
class Fetched:
    """What a source returned: new rows after the stored end, or a full history that replaces the store; or, with
    `unreadable` set, an answer that could not be read as prices, kept for `admit` to quarantine."""

    received: Received
    replaces_history: bool = False
    note: str = ""
    unreadable: str = ""

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
    # How the source derived the rows from what it received (an `Adj Close` applied): noted on the run.
    source_notes: tuple[str, ...] = ()

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
    """New rows since the stored end; the full history again when the provider re-adjusted what is stored. An
    answer that cannot be read as prices is returned, not raised: `admit` quarantines it like any refused batch."""
    try:
        return _fetch(source, history, ticker, as_of)
    except UnreadablePrices as exc:
        empty = normalize(pd.DataFrame(columns=COLUMNS))
        return Fetched(Received(empty, exc.raw, exc.raw_name), unreadable=str(exc))


def _fetch(source: PriceSource, history: pd.DataFrame, ticker: str, as_of: dt.date) -> Fetched:
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
    return Fetched(replace(window, rows=new))


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


@dataclass
class _Checks:
    """The contract checks of one batch, and its refusal: quarantined as received, with every report so far."""

    ticker: str
    fetched: Fetched
    suite: dict
    as_of: dt.date
    today: dt.date | None
    quarantine_dir: Path
    reports_dir: Path
    exchange: str = DEFAULT_EXCHANGE
    reports: list[ValidationReport] = field(default_factory=list)

    def refuse(self, kind: type[BatchRefused], message: str, failed: list[ValidationReport]) -> BatchRefused:
        html = render_html(failed, title=f"{self.ticker}: batch refused") if failed else None
        report = {"ticker": self.ticker, "refused": message, "validation": [r.to_json() for r in failed]}
        received = self.fetched.received
        folder = quarantine.keep(self.quarantine_dir, self.ticker, received.raw, received.raw_name, report, html)
        _save_reports(self.reports_dir, self.ticker, self.reports)
        return kind(self.ticker, message, folder, tuple(failed))

    def check(self, frame: pd.DataFrame, subject: str, min_rows: int = 1) -> None:
        report = validate_prices(
            frame,
            subject=subject,
            suite_definition=self.suite,
            as_of=self.as_of,
            today=self.today,
            min_rows=min_rows,
            exchange=self.exchange,
        )
        self.reports.append(report)
        if not report.passed:
            raise self.refuse(DataContractViolation, _contract_message(self.ticker, report), [report])


def admit(
    ticker: str,
    history: pd.DataFrame,
    fetched: Fetched,
    *,
    suite: dict,
    as_of: dt.date,
    min_rows: int,
    quarantine_dir: Path,
    reports_dir: Path,
    today: dt.date | None = None,
    proven_digest: str | None = None,
    exchange: str = DEFAULT_EXCHANGE,
) -> Admitted:
    """Validate what is new against the contract; quarantine and raise on any refusal. `min_rows` is the shortest
    history that can be trained on; `exchange` the calendar whose sessions the prices are held to.

    `proven_digest` is the digest of the history the last decision was taken on: it passed the contract then, so when
    the stored history still has it, only the new rows (with the stored sessions just before them) are validated
    again, not thirty years of history. Otherwise the new batch and the whole merged history are.
    """
    checks = _Checks(ticker, fetched, suite, as_of, today, quarantine_dir, reports_dir, exchange)
    if fetched.unreadable:
        raise checks.refuse(UnreadableBatch, f"{ticker}: {fetched.unreadable}", [])
    merged = _checked_merge(checks, history, min_rows, proven_digest)
    _save_reports(reports_dir, ticker, checks.reports)
    for report in checks.reports:
        log.log(logging.WARNING if report.warnings else logging.INFO, "%s", report.summary())
    admitted = to_store_schema(merged)
    return Admitted(
        ticker,
        admitted,
        len(admitted) - len(history),
        digest(admitted),
        tuple(checks.reports),
        replaced_history=fetched.replaces_history,
        note=fetched.note,
        validation_html=render_html(checks.reports, title=f"{ticker}: data contract"),
        source_notes=fetched.received.notes,
    )


def _checked_merge(checks: _Checks, history: pd.DataFrame, min_rows: int, proven_digest: str | None) -> pd.DataFrame:
    """The history with the batch merged in, each part checked against the contract as much as it needs."""
    ticker, fetched, batch = checks.ticker, checks.fetched, checks.fetched.rows
    if fetched.replaces_history or history.empty:
        # The batch is the whole history: one validation, with the minimum length.
        kind = "replacement history" if fetched.replaces_history else "full history"
        checks.check(batch, f"{ticker} {kind}", min_rows)
        if fetched.replaces_history and (lacking := missing_sessions(history, batch)):
            raise checks.refuse(
                HistoryWouldShrink,
                f"{ticker}: the re-fetched history lacks {_date_span(lacking)}; "
                "refusing to replace the stored history with it",
                [],
            )
        return batch.reset_index(drop=True)
    merged = merge_new_rows(history, batch)
    if proven_digest is not None and digest(history) == proven_digest:
        if not batch.empty:
            checks.check(
                pd.concat([history.tail(CONTEXT_ROWS), batch], ignore_index=True),
                f"{ticker} new rows after the stored history",
            )
    else:
        if not batch.empty:
            checks.check(batch, f"{ticker} new batch")
        checks.check(merged, f"{ticker} merged history", min_rows)
    return merged


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


def sessions_behind(history: pd.DataFrame, as_of: dt.date, exchange: str = DEFAULT_EXCHANGE) -> int:
    """`exchange`'s sessions after the newest stored one, up to and including `as_of`."""
    if history.empty:
        return 0
    last = history["Date"].max().date()
    if last >= as_of:
        return 0
    return max(0, len(sessions_between(last, as_of, exchange)) - 1)


def check_freshness(
    ticker: str, history: pd.DataFrame, as_of: dt.date, max_sessions: int, exchange: str = DEFAULT_EXCHANGE
) -> None:
    """Refuse to train or decide on data that ends too long before the day the run stands on."""
    behind = sessions_behind(history, as_of, exchange)
    if behind > max_sessions:
        last = history["Date"].max().date()
        raise StaleData(
            f"stale data: last price {last}, {behind} {exchange} sessions before as-of {as_of} "
            f"(at most {max_sessions} allowed: STOCKPIPE_MAX_STALENESS_SESSIONS)"
        )
