"""One ticker's day as one plain function: the most important sequence of the product, in one readable place.

    lock -> (market closed? skip) -> settle runs an earlier process left unfinished -> fetch -> admit (contract)
         -> fresh enough? -> same data and settings as the last decision? skip
         -> store -> baseline champion -> open the run -> train (epochs logged live) -> score -> decide
         -> record -> apply -> cache the outcome

Every branch ends in a typed `TickerOutcome`; a failure is this ticker's outcome, never the other tickers'. The I/O is
injected (`DailyContext`), and the stages an orchestrator wants to wrap (retries, task runs) are injected too
(`Stages`): by default they are plain calls, which is how the tests run it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import journal, quarantine
from pipeline.applying import apply
from pipeline.baseline import ensure_baseline
from pipeline.evidence import PromotionPolicy
from pipeline.forecasters import Forecaster
from pipeline.ingest import Admitted, BatchRefused, admit, check_freshness, fetch_batch
from pipeline.outcome import Decision, TickerOutcome, carried_over
from pipeline.promotion import Verdict, decide, describe
from pipeline.recording import (
    CHAMPION_BEFORE,
    SCORING,
    TRAINING,
    admitted_tags,
    outcome_from_run,
    record,
    record_failure,
    run_name,
    start_tags,
    training_params,
)
from pipeline.redact import excerpt
from pipeline.scoring import Scores, score
from pipeline.settings import TrainingConfig
from pipeline.settle import settle_cut_off, settle_run
from pipeline.sources import PriceSource
from pipeline.store import PriceStore
from pipeline.tracking import Champion, Tracker, TrackingUnavailable, epoch_callback, tracking_errors
from pipeline.trading_calendar import is_session, last_session_on_or_before
from pipeline.training import Challenger, train_challenger, warm_start_from

log = logging.getLogger(__name__)


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

    def check_stop(self, stage: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise StopRequested(f"stopped on request while {stage}; nothing was promoted")

    @property
    def source_name(self) -> str:
        return self.source.name


@dataclass(frozen=True)
class Evaluation:
    champion_before: str
    scores: Scores
    verdict: Verdict


def evaluate(
    tracker: Tracker,
    run_id: str,
    *,
    ticker: str,
    challenger: Challenger,
    champion: Forecaster,
    champion_before: str,
    policy: PromotionPolicy,
    blocks: int,
) -> Evaluation:
    """Score the three models on the challenger's test sessions and decide (pure, once the champion is loaded)."""
    with tracking_errors(tracker.tracking_uri, f"tracking {ticker}"):
        tracker.set_tags(run_id, {"stage": SCORING})
    scores = score(challenger.dataset, challenger.forecaster, champion, blocks)
    verdict = decide(scores.evidence, policy)
    log.info("%s: %s (%s)", ticker, verdict.decision.value, verdict.reason)
    return Evaluation(champion_before, scores, verdict)


def publish(
    tracker: Tracker, run_id: str, *, ticker: str, admitted: Admitted, challenger: Challenger, evaluation: Evaluation
) -> str | None:
    """Record the decision in the run, then apply it to the registry; safe to call again after a lost connection."""
    with tracking_errors(tracker.tracking_uri, f"tracking {ticker}"):
        recorded = record(
            tracker,
            run_id,
            ticker=ticker,
            admitted=admitted,
            challenger=challenger,
            scores=evaluation.scores,
            verdict=evaluation.verdict,
            champion_before=evaluation.champion_before,
        )
        description = describe(ticker, evaluation.verdict, evaluation.scores.evidence, evaluation.champion_before)
        return apply(
            tracker,
            run_id,
            ticker=ticker,
            admitted=admitted,
            verdict=evaluation.verdict,
            recorded=recorded,
            description=description,
        )


@dataclass(frozen=True)
class Stages:
    """The steps an orchestrator may wrap; each keeps the signature of the plain function it defaults to."""

    fetch: Callable[..., Any] = fetch_batch
    admit: Callable[..., Any] = admit
    train: Callable[..., Challenger] = train_challenger
    evaluate: Callable[..., Evaluation] = evaluate
    publish: Callable[..., str | None] = publish


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - started, 3)


def already_decided(previous: TickerOutcome | None, data_digest: str, settings_digest: str) -> bool:
    """True when the last decision saw the same data with the same settings."""
    return bool(
        previous
        and previous.succeeded
        and previous.data_digest == data_digest
        and previous.settings_digest == settings_digest
    )


def market_closed(ctx: DailyContext, ticker: str, day: dt.date) -> bool:
    """A day the exchange did not trade, with the store already holding the last session: nothing to fetch."""
    if is_session(day):
        return False
    last = ctx.store.last_date(ticker)
    return last is not None and last >= last_session_on_or_before(day)


def rebuild_outcome(tracker: Tracker, ticker: str) -> TickerOutcome | None:
    """The last decision as MLflow recorded it (for a missing or unreadable local cache)."""
    for run in tracker.runs(ticker, max_results=20):
        outcome = outcome_from_run(run, tracker.champion(ticker), tracker)
        if outcome is not None:
            return outcome
    return None


EpochHook = Callable[[str, int, int], None]


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
    run_tags = dict(run_tags or {})
    timings: dict[str, float] = {}
    state: dict[str, Any] = {"tracker": None, "run_id": None, "admitted": None, "previous": None, "run_tags": run_tags}
    with ctx.store.lock(ticker):
        try:
            outcome = _run(ticker, ctx, as_of, force, warm_start, run_tags, stages, timings, state, on_epoch)
        except Exception as exc:
            outcome = _failed(ticker, ctx, exc, state, as_of)
        if on_epoch is not None:
            with suppress(Exception):
                on_epoch(ticker, ctx.config.epochs, ctx.config.epochs)
        outcome = outcome.replace(timings={**timings, **outcome.timings})
        try:
            journal.write(ctx.reports_dir, outcome)
        except OSError as exc:  # the record is MLflow; a cache that cannot be written is rebuilt next time
            log.warning("%s: could not write the local cache: %s", ticker, exc)
    with suppress(OSError):
        quarantine.prune(ctx.quarantine_dir, ctx.retention)
    return outcome


def _run(
    ticker: str,
    ctx: DailyContext,
    as_of: dt.date | None,
    force: bool,
    warm_start: bool,
    run_tags: dict[str, str],
    stages: Stages,
    timings: dict[str, float],
    state: dict[str, Any],
    on_epoch: EpochHook | None,
) -> TickerOutcome:
    day = as_of or ctx.source.default_as_of(ticker) or ctx.today()
    state["day"] = day
    if market_closed(ctx, ticker, day):
        previous = _cached(ctx, ticker)
        return TickerOutcome(
            ticker, Decision.skipped, f"market closed on {day}: no new session to fetch", **carried_over(previous)
        )
    unreachable = tracking_errors
    with unreachable(ctx.tracking_uri, f"opening {ticker}'s records"):
        tracker = state["tracker"] = ctx.connect()
        if settle_cut_off(tracker, ticker):
            # What was settled changed the record: the cache must follow it, not say what it said before.
            rebuilt = rebuild_outcome(tracker, ticker)
            if rebuilt is not None:
                journal.write(ctx.reports_dir, rebuilt)
        previous = state["previous"] = journal.last_outcome(
            ctx.reports_dir, ticker, lambda: rebuild_outcome(tracker, ticker)
        )
    history = ctx.store.read(ticker)
    ctx.check_stop("fetching")
    with _timed(timings, "fetch"):
        fetched = stages.fetch(ctx.source, history, ticker, day)
    with _timed(timings, "validate"):
        admitted = state["admitted"] = stages.admit(
            ticker,
            history,
            fetched,
            suite=ctx.suite,
            as_of=day,
            config=ctx.config,
            quarantine_dir=ctx.quarantine_dir,
            reports_dir=ctx.reports_dir,
            today=ctx.today(),
            proven_digest=previous.data_digest if previous is not None and previous.succeeded else None,
        )
    check_freshness(ticker, admitted.history, day, ctx.max_staleness_sessions)
    ctx.check_stop("validating")
    settings_digest = ctx.config.digest()
    if not force and already_decided(previous, admitted.data_digest, settings_digest):
        return TickerOutcome(
            ticker,
            Decision.skipped,
            f"no new data since {admitted.data_end} and the same settings: model is up to date "
            "(use --force to retrain)",
            **{
                **carried_over(previous),
                "data_start": admitted.data_start,
                "data_end": admitted.data_end,
                "rows": len(admitted.history),
                "data_digest": admitted.data_digest,
                "settings_digest": settings_digest,
            },
        )
    if admitted.changed:
        ctx.store.write(ticker, admitted.history)

    with unreachable(ctx.tracking_uri, f"opening {ticker}'s run"):
        champion = ensure_baseline(tracker, ticker, admitted.history, run_tags)
        champion_before = f"v{champion.version} ({champion.kind})"
        attempt = tracker.next_attempt(ticker, admitted.data_end)
        run_id = state["run_id"] = tracker.start_run(
            run_name(ticker, admitted.data_end, attempt),
            {
                **start_tags(ticker, admitted.data_end, attempt, day, ctx.source_name, run_tags, TRAINING),
                **admitted_tags(admitted, settings_digest),
                CHAMPION_BEFORE: champion_before,
            },
            description=f"Training a challenger for {ticker} on data to {admitted.data_end}…",
        )
        tracker.log_params(
            run_id, training_params(ctx.config, ctx.policy.min_relative_gain, ctx.policy.promotion_alpha)
        )
        tracker.log_dataset(
            run_id, admitted.history, name=f"{ticker}-prices", source=ctx.source_name, digest=admitted.data_digest
        )
        champion_model = _load_champion(tracker, ticker, champion)
    start = warm_start_from(champion_model, champion.version, ctx.config) if warm_start else None
    callbacks = [epoch_callback(run_id), *([_epoch_hook(ticker, on_epoch, ctx.config)] if on_epoch else [])]
    if ctx.stop is not None:
        callbacks.append(_stop_training_on(ctx.stop))
    with _timed(timings, "train"):
        challenger = stages.train(admitted.history, ctx.config, ticker, start, callbacks)
    ctx.check_stop("training")
    with _timed(timings, "evaluate"):
        evaluation = stages.evaluate(
            tracker,
            run_id,
            ticker=ticker,
            challenger=challenger,
            champion=champion_model,
            champion_before=champion_before,
            policy=ctx.policy,
            blocks=ctx.config.eval_blocks,
        )
    ctx.check_stop("scoring")
    with _timed(timings, "track"):
        version = stages.publish(
            tracker, run_id, ticker=ticker, admitted=admitted, challenger=challenger, evaluation=evaluation
        )
    with unreachable(ctx.tracking_uri, f"reading {ticker}'s champion"):
        current = tracker.champion(ticker)
    scores = evaluation.scores
    return TickerOutcome(
        ticker=ticker,
        decision=evaluation.verdict.decision,
        reason=evaluation.verdict.reason,
        data_start=admitted.data_start,
        data_end=admitted.data_end,
        rows=len(admitted.history),
        new_rows=admitted.new_rows,
        data_digest=admitted.data_digest,
        settings_digest=settings_digest,
        run_id=run_id,
        run_url=tracker.run_url(run_id),
        model_version=version,
        champion_version=current.version if current else None,
        champion_kind=current.kind if current else None,
        challenger_test_rmse=scores.evidence.challenger_rmse,
        champion_test_rmse=scores.evidence.champion_rmse,
        naive_test_rmse=scores.evidence.naive_rmse,
        u2=scores.evidence.u2,
        coverage_80=scores.interval_metrics.get("challenger", {}).get("coverage_80"),
        coverage_95=scores.interval_metrics.get("challenger", {}).get("coverage_95"),
        timings=dict(challenger.timings),
    )


class StopRequested(RuntimeError):
    """The process was asked to stop (SIGINT or SIGTERM) while this ticker ran."""


def _stop_training_on(stop: threading.Event) -> Any:
    """Ends training after the current epoch once a stop is requested (the check after training then fails the
    ticker), so a stop never waits for the remaining epochs."""
    import keras

    class StopTraining(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if stop.is_set():
                self.model.stop_training = True

    return StopTraining()


def _epoch_hook(ticker: str, on_epoch: EpochHook, config: TrainingConfig) -> Any:
    import keras

    return keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch(ticker, epoch + 1, config.epochs))


def _load_champion(tracker: Tracker, ticker: str, champion: Champion) -> Forecaster:
    """The champion as data, checked against its recorded digests; a mismatch fails the ticker, naming the version."""
    return tracker.load(champion, ticker)


def _cached(ctx: DailyContext, ticker: str) -> TickerOutcome | None:
    try:
        return journal.read(ctx.reports_dir, ticker)
    except journal.CacheUnreadable:
        return None


def failure_reason(exc: BaseException, run_open: bool) -> str:
    reason = f"{type(exc).__name__}: {excerpt(exc, 1500)}"
    if isinstance(exc, TrackingUnavailable) and run_open:
        reason += " (the next run settles the run left unfinished)"
    return reason


def _failed(
    ticker: str, ctx: DailyContext, exc: Exception, state: dict[str, Any], as_of: dt.date | None
) -> TickerOutcome:
    """The ticker's failure, recorded where it can be: its MLflow run (best effort) and the cache."""
    tracker: Tracker | None = state.get("tracker")
    run_id: str | None = state.get("run_id")
    reason = failure_reason(exc, run_id is not None)
    log.error("%s: failed: %s", ticker, reason)
    if tracker is not None and not isinstance(exc, TrackingUnavailable):
        try:
            with tracking_errors(ctx.tracking_uri, f"recording {ticker}'s failure"):
                if run_id is None:
                    run_id = _failure_run(tracker, ticker, ctx, state, as_of)
                    refused = exc if isinstance(exc, BatchRefused) else None
                    record_failure(
                        tracker,
                        run_id,
                        reason,
                        validation_html=_refusal_html(refused),
                        validation_json=[r.to_json() for r in refused.reports] if refused else None,
                    )
                else:
                    settle_run(tracker, ticker, tracker.get_run(run_id), reason)
        except Exception as record_exc:
            log.warning("%s: could not record the failure in MLflow: %s", ticker, excerpt(record_exc))
    previous = state.get("previous") or _cached(ctx, ticker)
    kept = carried_over(previous)
    for stale in ("run_id", "run_url", "model_version"):
        kept.pop(stale, None)
    return TickerOutcome(
        ticker,
        Decision.failed,
        reason,
        **{**kept, "run_id": run_id, "run_url": tracker.run_url(run_id) if tracker and run_id else None},
    )


def _failure_run(tracker: Tracker, ticker: str, ctx: DailyContext, state: dict[str, Any], as_of: dt.date | None) -> str:
    """A run for a failure before training started (a refused batch, stale or unreadable data)."""
    admitted: Admitted | None = state.get("admitted")
    day_value = admitted.data_end if admitted else (state.get("day") or as_of or ctx.today()).isoformat()
    attempt = tracker.next_attempt(ticker, day_value)
    day = state.get("day") or as_of or ctx.today()
    return tracker.start_run(
        run_name(ticker, day_value, attempt),
        start_tags(ticker, day_value, attempt, day, ctx.source_name, state["run_tags"], "failed"),
    )


def _refusal_html(refused: BatchRefused | None) -> str | None:
    if refused is None or not refused.reports:
        return None
    from pipeline.validation_report import render_html

    return render_html(list(refused.reports), title=f"{refused.ticker}: batch refused")
