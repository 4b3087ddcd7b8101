"""One ticker's day as one plain function: the most important sequence of the product, in one readable place.

    lock -> (market closed? skip) -> settle runs an earlier process left unfinished -> fetch -> admit (contract)
         -> fresh enough? -> same data and settings as the last decision? skip -> room on the disk?
         -> store -> baseline champion -> open the run -> score the champion's matured forecasts (its live record)
         -> train (epochs logged live) -> score -> decide -> record -> apply
         -> keep the forecast now served, for a later day to score -> lost runs' files past the retention go
         -> cache the outcome

Every branch ends in a typed `TickerOutcome`; a failure is this ticker's outcome, never the other tickers'. The I/O is
injected (`DailyContext`), and the stages an orchestrator wants to wrap (retries, task runs) are injected too
(`Stages`): by default they are plain calls, which is how the tests run it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.common.disk import as_disk_full, check_free_space
from pipeline.common.markets import exchange_for
from pipeline.common.outcome import Decision, TickerOutcome, carried_over
from pipeline.common.redact import excerpt
from pipeline.common.settings import DEFAULT_MIN_FREE_MB, OnDegraded, TrainingConfig
from pipeline.common.trading_calendar import is_session, last_session_on_or_before
from pipeline.data import quarantine
from pipeline.data.forecast_log import ForecastLog
from pipeline.data.ingest import Admitted, check_freshness
from pipeline.data.sources import PriceSource
from pipeline.data.store import PriceStore
from pipeline.evaluation.evidence import PromotionPolicy
from pipeline.evaluation.live_record import LiveRecord, degradation, describe_live, record_on
from pipeline.failures import Reached, StopRequested, cached, failed
from pipeline.live import on_the_run, record_served
from pipeline.models.callbacks import EpochHook, epoch_hook, stop_training_on
from pipeline.models.forecasters import Forecaster
from pipeline.models.training import warm_start_from
from pipeline.models.windows import min_rows_for
from pipeline.registry import journal
from pipeline.registry.baseline import ensure_baseline
from pipeline.registry.connection import tracking_errors
from pipeline.registry.live_epochs import epoch_callback
from pipeline.registry.live_runs import log_live_record
from pipeline.registry.recording import (
    CHAMPION_BEFORE,
    FALLBACK,
    TRAINING,
    admitted_tags,
    rebuild_outcome,
    run_name,
    start_tags,
    training_params,
)
from pipeline.registry.retention import RunRetention, prune_ticker
from pipeline.registry.settle import settle_cut_off
from pipeline.registry.tracking import BASELINE_VERSION, Champion, Tracker
from pipeline.stages import Evaluation, Stages, decided_outcome, evaluate, publish

log = logging.getLogger(__name__)

__all__ = ["DailyContext", "Evaluation", "Request", "Stages", "StopRequested", "evaluate", "publish", "run_ticker"]


@dataclass(frozen=True)
class DailyContext:
    """What a ticker-day reads and writes, built from the settings at the edge."""

    store: PriceStore
    source: PriceSource
    connect: Callable[[], Tracker]
    tracking_uri: str
    suite: dict
    config: TrainingConfig
    policy: PromotionPolicy
    reports_dir: Path
    quarantine_dir: Path
    retention: quarantine.Retention
    max_staleness_sessions: int
    today: Callable[[], dt.date] = dt.date.today
    # Set when the process is asked to stop (SIGINT, SIGTERM): the ticker stops at the next safe point.
    stop: threading.Event | None = None
    # Where the served forecasts are kept (default: `forecasts/` beside the price store).
    forecasts_dir: Path | None = None
    on_degraded: OnDegraded = OnDegraded.fallback
    # How many lost runs keep their files, and for how long (STOCKPIPE_KEEP_LOST_RUNS, STOCKPIPE_RETENTION_DAYS).
    lost_runs: RunRetention = field(default_factory=RunRetention)
    # Which exchange's sessions each ticker keeps (STOCKPIPE_EXCHANGES, else its Yahoo symbol's suffix).
    exchanges: Mapping[str, str] = field(default_factory=dict)
    yahoo_symbols: Mapping[str, str] = field(default_factory=dict)
    # Free space under the home the day needs before its first write (STOCKPIPE_MIN_FREE_MB; pipeline.common.disk).
    min_free_mb: float = DEFAULT_MIN_FREE_MB

    @property
    def home(self) -> Path:
        """The state home: the price store's parent, where the day's files, models and databases go."""
        return Path(self.store.root).parent

    @property
    def forecast_log(self) -> ForecastLog:
        return ForecastLog(self.forecasts_dir or self.home / "forecasts")

    def check_stop(self, stage: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise StopRequested(f"stopped on request while {stage}; nothing was promoted")

    @property
    def source_name(self) -> str:
        return self.source.name

    def exchange(self, ticker: str) -> str:
        return exchange_for(ticker, self.exchanges, self.yahoo_symbols.get(ticker))


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        # A step timed twice (the live record is read before training and written after) adds up.
        timings[step] = round(timings.get(step, 0.0) + time.perf_counter() - started, 3)


def already_decided(previous: TickerOutcome | None, data_digest: str, settings_digest: str) -> bool:
    """True when the last decision saw the same data with the same settings."""
    return bool(
        previous
        and previous.succeeded
        and previous.data_digest == data_digest
        and previous.settings_digest == settings_digest
    )


def market_closed(ctx: DailyContext, ticker: str, day: dt.date) -> bool:
    """A day the ticker's exchange did not trade, with the store already holding its last session: nothing to fetch."""
    exchange = ctx.exchange(ticker)
    if is_session(day, exchange):
        return False
    last = ctx.store.last_date(ticker)
    return last is not None and last >= last_session_on_or_before(day, exchange)


@dataclass(frozen=True)
class Request:
    """What was asked of one ticker's day."""

    ticker: str
    as_of: dt.date | None = None
    force: bool = False
    warm_start: bool = False
    run_tags: dict[str, str] = field(default_factory=dict)
    stages: Stages = field(default_factory=Stages)
    on_epoch: EpochHook | None = None


class _Progress:
    """The day's `Reached` record, replaced at each step, so that a failure anywhere sees how far the day got."""

    def __init__(self, reached: Reached):
        self.reached = reached

    def advance(self, **changes: Any) -> None:
        self.reached = dataclasses.replace(self.reached, **changes)


@dataclass(frozen=True)
class _OpenRun:
    """The day's MLflow run and the champion the challenger is judged against."""

    run_id: str
    champion: Champion
    champion_before: str
    champion_model: Forecaster
    # The live record of the champion that served until today, and the fallback it caused, if any.
    live: LiveRecord | None = None
    fallback: str | None = None
    rolled_back: bool = False


def run_ticker(
    ticker: str,
    ctx: DailyContext,
    *,
    as_of: dt.date | None = None,
    force: bool = False,
    warm_start: bool = False,
    run_tags: dict[str, str] | None = None,
    stages: Stages = Stages(),
    on_epoch: EpochHook | None = None,
) -> TickerOutcome:
    """One ticker end to end; any failure is reported as this ticker's outcome.

    `on_epoch(ticker, epochs_done, epochs_planned)` follows training (e.g. a progress bar), and is called once more
    with epochs_done == epochs_planned when the ticker is done, however it ended.
    """
    request = Request(ticker, as_of, force, warm_start, dict(run_tags or {}), stages, on_epoch)
    timings: dict[str, float] = {}
    progress = _Progress(Reached(ctx.source_name, request.run_tags, day=as_of))
    with ctx.store.lock(ticker):
        try:
            outcome = _run(request, ctx, timings, progress)
        except Exception as exc:
            # A full disk, however deep it was met (MLflow's SQL, an artifact, the store), is told as one DiskFull.
            exc = as_disk_full(exc, ctx.home) or exc
            outcome = failed(ticker, exc, progress.reached, ctx.reports_dir, ctx.today)
        if on_epoch is not None:
            with suppress(Exception):
                on_epoch(ticker, ctx.config.epochs, ctx.config.epochs)
        if outcome.succeeded and progress.reached.tracker is not None:
            with _timed(timings, "retention"):
                _prune_lost_runs(ctx, progress.reached.tracker, ticker)
        outcome = outcome.replace(timings={**timings, **outcome.timings})
        try:
            journal.write(ctx.reports_dir, outcome)
        except OSError as exc:  # the record is MLflow; a cache that cannot be written is rebuilt next time
            log.warning("%s: could not write the local cache: %s", ticker, exc)
    with suppress(OSError):
        quarantine.prune(ctx.quarantine_dir, ctx.retention)
    return outcome


def _run(request: Request, ctx: DailyContext, timings: dict[str, float], progress: _Progress) -> TickerOutcome:
    ticker = request.ticker
    day = request.as_of or ctx.source.default_as_of(ticker) or ctx.today()
    progress.advance(day=day)
    if market_closed(ctx, ticker, day):
        previous = cached(ctx.reports_dir, ticker)
        return TickerOutcome(
            ticker,
            Decision.skipped,
            f"market closed on {day} ({ctx.exchange(ticker)}): no new session to fetch",
            **carried_over(previous),
        )
    with tracking_errors(ctx.tracking_uri, f"opening {ticker}'s records"):
        tracker = ctx.connect()
        progress.advance(tracker=tracker)
        previous = _previous_outcome(ctx, tracker, ticker)
        progress.advance(previous=previous)
    admitted = _fetch_and_admit(request, ctx, day, previous, timings)
    progress.advance(admitted=admitted)
    check_freshness(ticker, admitted.history, day, ctx.max_staleness_sessions, ctx.exchange(ticker))
    ctx.check_stop("validating")
    settings_digest = ctx.config.digest()
    if not request.force and already_decided(previous, admitted.data_digest, settings_digest):
        return _unchanged(ticker, previous, admitted, settings_digest)
    # The day's first write is next (the store, then the run and training): refused here, it leaves all as it was.
    check_free_space(ctx.home, ctx.min_free_mb)
    if admitted.changed:
        ctx.store.write(ticker, admitted.history)
    opened = _open_run(request, ctx, tracker, admitted, day, settings_digest, progress, timings)
    return _train_and_decide(request, ctx, tracker, admitted, opened, settings_digest, timings)


def _previous_outcome(ctx: DailyContext, tracker: Tracker, ticker: str) -> TickerOutcome | None:
    """The last decision, after settling what an earlier process left unfinished."""
    if settle_cut_off(tracker, ticker):
        # What was settled changed the record: the cache must follow it, not say what it said before.
        rebuilt = rebuild_outcome(tracker, ticker)
        if rebuilt is not None:
            journal.write(ctx.reports_dir, rebuilt)
    return journal.last_outcome(ctx.reports_dir, ticker, lambda: rebuild_outcome(tracker, ticker))


def _fetch_and_admit(
    request: Request, ctx: DailyContext, day: dt.date, previous: TickerOutcome | None, timings: dict[str, float]
) -> Admitted:
    history = ctx.store.read(request.ticker)
    ctx.check_stop("fetching")
    with _timed(timings, "fetch"):
        fetched = request.stages.fetch(ctx.source, history, request.ticker, day)
    with _timed(timings, "validate"):
        return request.stages.admit(
            request.ticker,
            history,
            fetched,
            suite=ctx.suite,
            as_of=day,
            min_rows=min_rows_for(ctx.config),
            quarantine_dir=ctx.quarantine_dir,
            reports_dir=ctx.reports_dir,
            today=ctx.today(),
            proven_digest=previous.data_digest if previous is not None and previous.succeeded else None,
            exchange=ctx.exchange(request.ticker),
        )


def _unchanged(ticker: str, previous: TickerOutcome | None, admitted: Admitted, settings_digest: str) -> TickerOutcome:
    return TickerOutcome(
        ticker,
        Decision.skipped,
        f"no new data since {admitted.data_end} and the same settings: model is up to date (use --force to retrain)",
        **{
            **carried_over(previous),
            "data_start": admitted.data_start,
            "data_end": admitted.data_end,
            "rows": len(admitted.history),
            "data_digest": admitted.data_digest,
            "settings_digest": settings_digest,
        },
    )


def _open_run(
    request: Request,
    ctx: DailyContext,
    tracker: Tracker,
    admitted: Admitted,
    day: dt.date,
    settings_digest: str,
    progress: _Progress,
    timings: dict[str, float],
) -> _OpenRun:
    """The champion (the naive baseline on a ticker's first day) and a new run for the challenger."""
    ticker = request.ticker
    with tracking_errors(ctx.tracking_uri, f"opening {ticker}'s run"):
        champion = ensure_baseline(tracker, ticker, admitted.history, request.run_tags)
        with _timed(timings, "live"):
            live = _live_record(ctx, ticker, admitted, champion)
            fallback = _act_on_degradation(ctx, tracker, ticker, champion, live, admitted.data_end)
        served_until_today = champion.version
        if fallback is not None:
            champion = tracker.champion(ticker) or champion
        champion_before = f"v{champion.version} ({champion.kind})"
        attempt = tracker.next_attempt(ticker, admitted.data_end)
        run_id = tracker.start_run(
            run_name(ticker, admitted.data_end, attempt),
            {
                **start_tags(ticker, admitted.data_end, attempt, day, ctx.source_name, request.run_tags, TRAINING),
                **admitted_tags(admitted, settings_digest),
                CHAMPION_BEFORE: champion_before,
                **({FALLBACK: excerpt(fallback, 1000)} if fallback else {}),
            },
            description=f"Training a challenger for {ticker} on data to {admitted.data_end}…",
        )
        progress.advance(run_id=run_id)
        if live is not None:
            with _timed(timings, "live"):
                tracker.log_metrics(run_id, live.metrics())
                log_live_record(tracker, ticker, live)
        tracker.log_params(
            run_id, training_params(ctx.config, ctx.policy.min_relative_gain, ctx.policy.promotion_alpha)
        )
        tracker.log_dataset(
            run_id, admitted.history, name=f"{ticker}-prices", source=ctx.source_name, digest=admitted.data_digest
        )
        # Checked against its recorded digests: a mismatch fails the ticker, naming the version.
        champion_model = tracker.load(champion, ticker)
    rolled_back = champion.version != served_until_today
    return _OpenRun(run_id, champion, champion_before, champion_model, live, fallback, rolled_back)


def _train_and_decide(
    request: Request,
    ctx: DailyContext,
    tracker: Tracker,
    admitted: Admitted,
    opened: _OpenRun,
    settings_digest: str,
    timings: dict[str, float],
) -> TickerOutcome:
    ticker, stages = request.ticker, request.stages
    start = warm_start_from(opened.champion_model, opened.champion.version, ctx.config) if request.warm_start else None
    with _timed(timings, "train"):
        challenger = stages.train(admitted.history, ctx.config, ticker, start, _callbacks(request, ctx, opened.run_id))
    ctx.check_stop("training")
    with _timed(timings, "evaluate"):
        evaluation = stages.evaluate(
            tracker,
            opened.run_id,
            ticker=ticker,
            challenger=challenger,
            champion=opened.champion_model,
            champion_before=opened.champion_before,
            policy=ctx.policy,
            blocks=ctx.config.eval_blocks,
            champion_serves_chosen=opened.champion.serves_chosen_intervals,
        )
    ctx.check_stop("scoring")
    with _timed(timings, "track"):
        version = stages.publish(
            tracker,
            opened.run_id,
            ticker=ticker,
            admitted=admitted,
            challenger=challenger,
            evaluation=evaluation,
            live=describe_live(opened.live, opened.fallback) if opened.live is not None else None,
        )
    with tracking_errors(ctx.tracking_uri, f"reading {ticker}'s champion"):
        current = tracker.champion(ticker)
    with _timed(timings, "live"):
        _record_served(ctx, tracker, ticker, admitted, opened, current)
    outcome = decided_outcome(ticker, admitted, settings_digest, tracker, opened.run_id, version, current, evaluation)
    reason = outcome.reason if opened.fallback is None else f"{opened.fallback}; {outcome.reason}"
    return outcome.replace(
        timings=dict(challenger.timings),
        reason=reason,
        degradation=opened.fallback,
        rolled_back=opened.rolled_back,
        **(opened.live.status_fields() if opened.live else {}),
    )


def _live_record(ctx: DailyContext, ticker: str, admitted: Admitted, champion: Champion) -> LiveRecord | None:
    """The serving champion's record on the forecasts it served that have now matured."""
    try:
        return record_on(ctx.forecast_log.read(ticker), admitted.history, champion.version)
    except Exception as exc:  # the live record informs; it must not cost the ticker its day
        log.warning("%s: no live record today: %s", ticker, exc)
        return None


def _act_on_degradation(
    ctx: DailyContext, tracker: Tracker, ticker: str, champion: Champion, live: LiveRecord | None, data_end: str
) -> str | None:
    """Tag a champion gone bad on its live record, and with `fallback` (the default) replace it before the day's
    challenger is judged, so the challenger is compared with what serves now. Returns what was done, or None."""
    verdict = degradation(live) if live is not None else None
    if verdict is None or not verdict.degraded:
        return None
    if ctx.on_degraded == OnDegraded.alert or champion.version == BASELINE_VERSION:
        tracker.mark_degraded(ticker, champion.version, verdict.reason)
        return f"v{champion.version} degraded ({verdict.reason}); it still serves"
    demoted, restored = tracker.fall_back(ticker, verdict.reason, by=f"the daily run on data to {data_end}")
    return f"v{demoted} degraded ({verdict.reason}); fell back to v{restored}"


def _record_served(
    ctx: DailyContext, tracker: Tracker, ticker: str, admitted: Admitted, opened: _OpenRun, current: Champion | None
) -> None:
    """Keep the forecast the champion now serves for the next session, to score it when that session's close comes,
    in the forecast file and on the day's run."""
    if current is None:
        return
    try:
        same = current.version == opened.champion.version
        model = opened.champion_model if same else tracker.load(current, ticker)
        served = record_served(
            ctx.forecast_log,
            ticker,
            model,
            admitted.history,
            current.version,
            current.serves_chosen_intervals,
            ctx.exchange(ticker),
        )
        metrics, tags = on_the_run(served)
        tracker.log_metrics(opened.run_id, metrics)
        tracker.set_tags(opened.run_id, tags)
    except Exception as exc:  # the decision is already applied; a forecast not kept only leaves a gap in the record
        log.warning("%s: the served forecast was not recorded: %s", ticker, exc)


def _prune_lost_runs(ctx: DailyContext, tracker: Tracker, ticker: str) -> None:
    """Once the day's decision is recorded, the files of lost runs past the retention go (under the ticker's lock:
    no run of the ticker is recording meanwhile)."""
    try:
        prune_ticker(tracker, ticker, ctx.lost_runs.keep_lost_runs, ctx.lost_runs.retention_days)
    except Exception as exc:  # files kept one more day cost disk, not the day's decision
        log.warning("%s: retention did not run: %s: %s", ticker, type(exc).__name__, excerpt(exc, 300))


def _callbacks(request: Request, ctx: DailyContext, run_id: str) -> list[Any]:
    callbacks = [epoch_callback(run_id)]
    if request.on_epoch is not None:
        callbacks.append(epoch_hook(request.ticker, request.on_epoch, ctx.config.epochs))
    if ctx.stop is not None:
        callbacks.append(stop_training_on(ctx.stop))
    return callbacks
