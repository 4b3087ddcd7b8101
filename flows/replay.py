"""The `replay` flow: the daily pipeline once per trading session between two dates, as the schedule would have run."""

from __future__ import annotations

import datetime as dt
import logging

from prefect import flow
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.daily import daily_pipeline, resolve_settings
from pipeline.common.outcome import TickerOutcome
from pipeline.common.settings import Settings, SourceKind
from pipeline.data.store import PriceStore
from pipeline.registry.tracking import Tracker
from pipeline.replay import replay_sessions

log = logging.getLogger("pipeline.flow")


def plan_replay(settings: Settings, start: dt.date, end: dt.date) -> list[dt.date]:
    """The sessions to run, or ReplayRefused when the state already covers days after `start`."""
    store = PriceStore(settings.store_dir, settings.locks_dir)
    tracker = Tracker.from_settings(settings)
    data_ends = {}
    for ticker in settings.tickers:
        champion = tracker.champion(ticker)
        champion_end = dt.date.fromisoformat(champion.data_end) if champion and champion.data_end else None
        known = [d for d in (store.last_date(ticker), champion_end) if d is not None]
        data_ends[ticker] = max(known) if known else None
    return replay_sessions(start, end, data_ends, {settings.exchange(t) for t in settings.tickers})


@flow(name="replay", flow_run_name="replay {start}..{end}")
def replay_pipeline(
    start: dt.date,
    end: dt.date,
    tickers: list[str] | None = None,
    source: SourceKind | None = None,
    csv_dir: str | None = None,
    epochs: int | None = None,
    warm_start: bool = False,
    sessions: list[dt.date] | None = None,
) -> State:
    """Run `daily-pipeline` for each session from `start` to `end`; returns (session, outcomes) per session.

    `sessions`, when the caller has already planned (and so checked) them, saves planning twice.
    """
    settings = resolve_settings(tickers=tickers, source=source, csv_dir=csv_dir, epochs=epochs)
    if settings.source is SourceKind.yahoo:
        raise ValueError("replay needs --source snapshot or csv: live Yahoo data cannot be seen as of a past day")
    planned = sessions or plan_replay(settings, start, end)
    log.info(
        "replaying %d session(s) from %s to %s for %s",
        len(planned),
        planned[0],
        planned[-1],
        ", ".join(settings.tickers),
    )
    days = [(session, _one_session(settings, session, csv_dir, epochs, warm_start)) for session in planned]
    failed = [f"{day} {o.ticker}" for day, outcomes in days for o in outcomes if not o.succeeded]
    if failed:
        return Failed(message=f"{len(failed)} ticker-session(s) failed: {', '.join(failed)}", data=days)
    return Completed(message=f"{len(planned)} session(s) replayed", data=days)


def _one_session(
    settings: Settings, session: dt.date, csv_dir: str | None, epochs: int | None, warm_start: bool
) -> list[TickerOutcome]:
    state = daily_pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=settings.max_workers))(
        tickers=settings.tickers,
        source=settings.source,
        csv_dir=csv_dir,
        as_of=session,
        epochs=epochs,
        warm_start=warm_start,
        return_state=True,
    )
    outcomes = state.result(raise_on_failure=False)
    if not isinstance(outcomes, list):
        raise RuntimeError(f"daily run for {session} failed before any ticker ran: {outcomes}")
    return outcomes
