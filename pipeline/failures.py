"""A ticker-day that failed: recorded where it belongs (its MLflow run, best effort) and as the ticker's outcome.

The day hands over a `Reached` record, how far it got, instead of the failure path working the day out again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.outcome import Decision, TickerOutcome, carried_over
from pipeline.common.redact import excerpt
from pipeline.data.ingest import Admitted, BatchRefused, StaleData
from pipeline.registry import journal
from pipeline.registry.connection import TrackingUnavailable, tracking_errors
from pipeline.registry.recording import record_failure, run_name, start_tags
from pipeline.registry.settle import settle_run
from pipeline.registry.tracking import Tracker

log = logging.getLogger(__name__)


class StopRequested(RuntimeError):
    """The process was asked to stop (SIGINT or SIGTERM) while this ticker ran."""


@dataclass(frozen=True)
class Reached:
    """How far a ticker-day got before it failed: what recording the failure needs, nothing more."""

    source_name: str
    run_tags: dict[str, str]
    # None until the day is known (working it out can fail too: an unreadable source).
    day: dt.date | None = None
    tracker: Tracker | None = None
    previous: TickerOutcome | None = None
    admitted: Admitted | None = None
    run_id: str | None = None


def failure_reason(exc: BaseException, run_open: bool) -> str:
    reason = f"{type(exc).__name__}: {excerpt(exc, 1500)}"
    if isinstance(exc, TrackingUnavailable) and run_open:
        reason += " (the next run settles the run left unfinished)"
    return reason


def failure_family(exc: BaseException) -> str:
    """What kind of failure this is for whoever hears of it: a refused batch of any cause is `BatchRefused`."""
    for family in (BatchRefused, StaleData):
        if isinstance(exc, family):
            return family.__name__
    return type(exc).__name__


def failed(
    ticker: str, exc: Exception, reached: Reached, reports_dir: Path, today: Callable[[], dt.date]
) -> TickerOutcome:
    """The ticker's failure as its outcome, after recording it in MLflow where the tracker is reachable."""
    reason = failure_reason(exc, reached.run_id is not None)
    log.error("%s: failed: %s", ticker, reason)
    run_id = reached.run_id
    tracker = reached.tracker
    if tracker is not None and not isinstance(exc, TrackingUnavailable):
        try:
            with tracking_errors(tracker.tracking_uri, f"recording {ticker}'s failure"):
                run_id = _record(tracker, ticker, exc, reason, reached.day or today(), reached)
        except Exception as record_exc:
            log.warning("%s: could not record the failure in MLflow: %s", ticker, excerpt(record_exc))
    kept = carried_over(reached.previous or cached(reports_dir, ticker))
    for stale in ("run_id", "run_url", "model_version"):
        kept.pop(stale, None)
    return TickerOutcome(
        ticker,
        Decision.failed,
        reason,
        failure=failure_family(exc),
        **{**kept, "run_id": run_id, "run_url": tracker.run_url(run_id) if tracker and run_id else None},
    )


def cached(reports_dir: Path, ticker: str) -> TickerOutcome | None:
    try:
        return journal.read(reports_dir, ticker)
    except journal.CacheUnreadable:
        return None


def _record(tracker: Tracker, ticker: str, exc: Exception, reason: str, day: dt.date, reached: Reached) -> str:
    """Settle the open run as failed, or open one for a failure before training started (a refused batch, stale or
    unreadable data); returns the run's id."""
    if reached.run_id is not None:
        settle_run(tracker, ticker, tracker.client.get_run(reached.run_id), reason)
        return reached.run_id
    day_value = reached.admitted.data_end if reached.admitted else day.isoformat()
    attempt = tracker.next_attempt(ticker, day_value)
    run_id = tracker.start_run(
        run_name(ticker, day_value, attempt),
        start_tags(ticker, day_value, attempt, day, reached.source_name, reached.run_tags, "failed"),
    )
    refused = exc if isinstance(exc, BatchRefused) else None
    record_failure(
        tracker,
        run_id,
        reason,
        validation_html=_refusal_html(refused),
        validation_json=[r.to_json() for r in refused.reports] if refused else None,
    )
    return run_id


def _refusal_html(refused: BatchRefused | None) -> str | None:
    if refused is None or not refused.reports:
        return None
    from pipeline.contract.html_report import render_html

    return render_html(list(refused.reports), title=f"{refused.ticker}: batch refused")
