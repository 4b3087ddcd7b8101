"""The `daily-pipeline` Prefect flow: Prefect's concerns only (typed parameters, task runs with retries, fan-out,
logs, artifacts); the ticker-day itself is `pipeline.daily.run_ticker`."""

# No `from __future__ import annotations` here: a deployment's worker validates the flow's parameters against their
# annotations, and when it loads this module from the entrypoint, string annotations cannot be resolved.
import contextlib
import datetime as dt
import logging
import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Annotated, Any

from prefect import flow, task
from prefect.artifacts import (
    create_link_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import rate_limit
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff
from pydantic import Field

from flows import environment
from flows.alerts import AlertNotDelivered, raise_alerts
from pipeline import daily
from pipeline.common.disk import DiskFull, DiskFullTracebacks, DiskSpaceLow, disk_full_cause
from pipeline.common.files import UnsafeInput, within
from pipeline.common.outcome import TickerOutcome
from pipeline.common.settings import DEFAULT_MAX_WORKERS, Settings, SourceKind
from pipeline.common.symbols import Ticker, validate_ticker
from pipeline.contract.inputs import load_suite_definition
from pipeline.daily import DailyContext, Stages, StopRequested, run_ticker
from pipeline.data import ingest
from pipeline.data.ingest import BatchRefused, StaleData
from pipeline.data.quarantine import Retention
from pipeline.data.sources import SourceError, TransientSourceError, build_source
from pipeline.data.store import PriceStore, StoreUnreadable
from pipeline.evaluation.evidence import PromotionPolicy
from pipeline.failures import failure_family, failure_reason
from pipeline.models import training
from pipeline.models.model_files import ModelRefused
from pipeline.registry.connection import TrackingUnavailable, tracking_errors
from pipeline.registry.retention import RunRetention
from pipeline.registry.tracking import Tracker

log = logging.getLogger("pipeline.flow")

FETCH_RETRIES = 3
TRACKING_RETRIES = 2
SUMMARY_KEY = "daily-pipeline-summary"
PROGRESS_KEY = "daily-pipeline-progress"


class ParameterRefused(ValueError):
    """A flow parameter (set by whoever can trigger a run) asks for something the settings do not allow."""


def _retry_on(*transient: type[BaseException]):
    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except transient:
            return True
        except Exception:
            return False
        return False

    return should_retry


# Rate limits and network errors heal by waiting; an unknown symbol or a broken file will not.
retry_transient_fetch = _retry_on(TransientSourceError)
# A tracking server that went away may come back (a restart); a refused request or a bug will not.
retry_unreachable_tracking = _retry_on(TrackingUnavailable)


def _tracking_task(stage: Callable, name: str):
    """A stage that talks to the tracking server: retried with backoff while the server is unreachable."""
    return task(
        stage,
        name=name,
        task_run_name=f"{name}-{{ticker}}",
        retries=TRACKING_RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=3),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_unreachable_tracking,
        cache_policy=NO_CACHE,
    )


# Yahoo requests of every ticker (and every worker process) share this Prefect global concurrency limit: its slots
# decay at STOCKPIPE_FETCH_RATE_PER_SECOND, so a night of hundreds of tickers fetches at a pace Yahoo tolerates.
YAHOO_RATE_LIMIT = "stockpipe-yahoo-requests"


def polite_fetch(source: Any, history: Any, ticker: str, day: dt.date) -> Any:
    if source.name == SourceKind.yahoo.value:
        rate_limit(YAHOO_RATE_LIMIT, occupy=1)
    return ingest.fetch_batch(source, history, ticker, day)


def ensure_fetch_rate(settings: Settings) -> None:
    """Create (or set) the Yahoo rate limit on the API in use; without it, fetches run unpaced with a warning."""
    if settings.source is not SourceKind.yahoo:
        return
    rate = settings.fetch_rate_per_second
    try:
        with get_client(sync_client=True) as client:
            client.upsert_global_concurrency_limit_by_name(
                YAHOO_RATE_LIMIT, limit=max(1, math.ceil(rate)), slot_decay_per_second=rate
            )
    except Exception as exc:
        log.warning("the Yahoo rate limit could not be set (%s): fetches are not paced", type(exc).__name__)


def prefect_stages(settings: Settings) -> Stages:
    """The ticker-day's stages as task runs. Yahoo's 429s are not retried by yfinance itself; backoff (from
    STOCKPIPE_FETCH_BACKOFF_SECONDS, doubling) with jitter spreads the retries of many tickers. Validation and
    training failures are facts, never retried. Tracking retries resume the same MLflow run
    (pipeline.registry.recording), so a retry never records anything twice."""
    return Stages(
        fetch=task(
            polite_fetch,
            name="fetch",
            task_run_name="fetch-{ticker}",
            retries=FETCH_RETRIES,
            retry_delay_seconds=exponential_backoff(backoff_factor=settings.fetch_backoff_seconds),
            retry_jitter_factor=0.5,
            retry_condition_fn=retry_transient_fetch,
            cache_policy=NO_CACHE,
        ),
        admit=task(ingest.admit, name="validate", task_run_name="validate-{ticker}", cache_policy=NO_CACHE),
        train=task(training.train_challenger, name="train", task_run_name="train-{ticker}", cache_policy=NO_CACHE),
        evaluate=_tracking_task(daily.evaluate, "evaluate"),
        publish=_tracking_task(daily.publish, "track-and-promote"),
    )


# Set by SIGINT or SIGTERM while a flow runs: every ticker of this process stops at its next safe point (between
# stages, or after the current epoch), records its run as failed, and promotes nothing.
STOP = threading.Event()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the flow runs, SIGINT and SIGTERM first ask the tickers to stop, then do what they did before (Prefect's
    own handling ends the flow; the tickers' threads no longer hold it up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    STOP.clear()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: Any) -> None:
        STOP.set()
        log.warning("%s received: stopping every ticker at its next safe point", signal.Signals(signum).name)
        handler = previous[signal.Signals(signum)]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            raise KeyboardInterrupt if signum == signal.SIGINT else SystemExit(128 + signum)

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# How often the main thread wakes while the tickers run. Python runs a signal's handler in the main thread, between
# bytecodes; the kernel may hand SIGINT to any thread (TensorFlow's, Prefect's), and then a main thread blocked in a
# wait with no timeout hears of it only when the wait ends: after every ticker trained to the end.
SIGNAL_POLL_SECONDS = 0.5


def results_hearing_signals(futures: list[Any]) -> list[Any]:
    """Each future's result, waiting in short slices so that a signal is handled while they run."""
    finished = threading.Semaphore(0)
    for future in futures:
        future.add_done_callback(lambda _: finished.release())
    for _ in futures:
        while not finished.acquire(timeout=SIGNAL_POLL_SECONDS):
            pass
    return [future.result() for future in futures]


def daily_context(settings: Settings) -> DailyContext:
    """The ticker-day's I/O, from the settings (built inside each task: on Dask that is another process)."""
    uri = settings.tracking_uri()
    return DailyContext(
        store=PriceStore(settings.store_dir, settings.locks_dir),
        source=build_source(
            settings.source.value,
            folder=settings.price_folder(),
            yahoo_symbols=settings.yahoo_symbols,
            max_bytes=settings.max_input_bytes,
        ),
        connect=lambda: Tracker.from_settings(settings),
        tracking_uri=uri,
        suite=load_suite_definition(settings.suite_path),
        config=settings.training,
        policy=PromotionPolicy(settings.min_relative_gain, settings.promotion_alpha),
        reports_dir=settings.reports_dir,
        quarantine_dir=settings.quarantine_dir,
        forecasts_dir=settings.forecasts_dir,
        on_degraded=settings.on_degraded,
        retention=Retention(settings.quarantine_max_age_days, settings.quarantine_max_bytes),
        lost_runs=RunRetention.from_settings(settings),
        exchanges=settings.exchanges,
        yahoo_symbols=settings.yahoo_symbols,
        max_staleness_sessions=settings.max_staleness_sessions,
        min_free_mb=settings.min_free_mb,
        stop=STOP,
    )


class EpochProgress:
    """Epochs trained across the run's tickers, as one progress artifact (thread-safe: tickers train in threads)."""

    def __init__(self, artifact_id: Any, tickers: list[str], epochs: int):
        self.artifact_id = artifact_id
        self.planned = {t: epochs for t in tickers}
        self.done = {t: 0 for t in tickers}
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Sent to Dask workers with the task: a lock does not travel; each process counts its own tickers.
        return {k: v for k, v in self.__dict__.items() if k != "lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()

    def __call__(self, ticker: str, done: int, planned: int) -> None:
        with self.lock:
            self.done[ticker] = max(self.done.get(ticker, 0), min(done, planned))
            share = 100 * sum(self.done.values()) / max(1, sum(self.planned.values()))
        try:
            update_progress_artifact(self.artifact_id, share)
        except Exception as exc:
            log.debug("progress update failed: %s", exc)


@task(cache_policy=NO_CACHE, task_run_name="{ticker}")
def ticker_day(
    ticker: str,
    settings: Settings,
    as_of: dt.date | None,
    force: bool,
    warm_start: bool,
    progress: EpochProgress | None = None,
) -> TickerOutcome:
    """One ticker end to end; any failure is reported as this ticker's outcome and never stops the others."""
    quiet_third_party_logs()  # again here: on a Dask worker this is a fresh process
    environment.in_flow_process(settings)
    run_tags = {"prefect_flow_run_id": str(flow_run.get_id() or "")}
    try:
        ctx = daily_context(settings)
    except Exception as exc:
        from pipeline.common.outcome import Decision

        reason = failure_reason(exc, run_open=False)
        return raise_alerts(TickerOutcome(ticker, Decision.failed, reason, failure=failure_family(exc)), settings)
    outcome = run_ticker(
        ticker,
        ctx,
        as_of=as_of,
        force=force,
        warm_start=warm_start,
        run_tags=run_tags,
        stages=prefect_stages(settings),
        on_epoch=progress,
    )
    return raise_alerts(outcome, settings)


# Creating the tracking store (SQLite schema migrations, the experiment) once, before tickers fan out,
# keeps parallel tickers from racing to migrate a fresh database; it also fails fast on an unreachable server.
@task(
    retries=TRACKING_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=3),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unreachable_tracking,
    cache_policy=NO_CACHE,
)
def connect_tracking(settings: Settings) -> None:
    uri = settings.tracking_uri()
    with tracking_errors(uri, "connecting"):
        Tracker.from_settings(settings)


def summary_rows(outcomes: list[TickerOutcome]) -> list[dict[str, Any]]:
    def number(value: float | None, digits: int = 4) -> float | None:
        return None if value is None else round(float(value), digits)

    return [
        {
            "ticker": o.ticker,
            "decision": o.decision.value,
            "data end": o.data_end,
            "challenger RMSE": number(o.challenger_test_rmse),
            "champion RMSE": number(o.champion_test_rmse),
            "naive RMSE": number(o.naive_test_rmse),
            "U2": number(o.u2),
            "coverage 80%": number(o.coverage_80, 3),
            "coverage 95%": number(o.coverage_95, 3),
            "served coverage 80%": number(o.served_coverage_80, 3),
            "live sessions": o.live_sessions,
            "live U2 (60)": number(o.live_u2_60, 3),
            "live coverage 80% (60)": number(o.live_coverage_80_60, 3),
            "live coverage 95% (60)": number(o.live_coverage_95_60, 3),
            "live Kupiec p 80%": number(o.live_kupiec_p_80, 3),
            "champion": f"v{o.champion_version}" if o.champion_version else "",
            "reason": o.reason,
            "alerts": o.alert_note or "",
        }
        for o in outcomes
    ]


def publish_summary(outcomes: list[TickerOutcome], as_of: dt.date | None) -> None:
    create_table_artifact(
        key=SUMMARY_KEY,
        table=summary_rows(outcomes),
        description=f"stockpipe daily run{f' as of {as_of}' if as_of else ''}: one row per ticker",
    )
    for o in outcomes:
        if o.run_url:
            create_link_artifact(
                key=f"mlflow-run-{o.ticker.lower().replace('.', '-')}",
                link=o.run_url,
                link_text=f"{o.ticker}: {o.decision.value} (MLflow run)",
                description=f"The MLflow run behind {o.ticker}'s decision",
            )


# Failures that are facts about the input or the state, each already explained in one line: their tracebacks would
# only bury that line (a refused batch is the contract doing its job, not a crash). Anything else keeps its traceback.
EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    BatchRefused,
    StaleData,
    SourceError,
    StoreUnreadable,
    ModelRefused,
    UnsafeInput,
    ParameterRefused,
    TrackingUnavailable,
    StopRequested,
    AlertNotDelivered,
    DiskSpaceLow,
    DiskFull,
)
# The loggers that log a failed write's traceback before raising it: on a full disk, the ticker's line says it all.
DISK_FULL_LOGGERS = ("mlflow.store.db.utils",)


class ExpectedFailureTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, EXPECTED_FAILURES) or disk_full_cause(error) is not None):
            record.exc_info, record.exc_text = None, None
        return True


def quiet_third_party_logs() -> None:
    """Keep the run log to what a person follows: our steps at INFO, libraries' chatter at WARNING, and no
    traceback for a failure that is a fact about the data (its one-line reason says everything)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, ExpectedFailureTracebacks) for f in logger.filters):
            logger.addFilter(ExpectedFailureTracebacks())
    for name in DISK_FULL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DiskFullTracebacks) for f in logger.filters):
            logger.addFilter(DiskFullTracebacks())
    logging.getLogger("pipeline").setLevel(logging.INFO)
    for noisy in ("great_expectations", "mlflow", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Dask's nanny reports killing workers that TensorFlow's threads keep alive at shutdown: expected, not actionable.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")


# Settings the CLI has read and completed with the user's own choices (a --csv-dir typed by the user is trusted; the
# same folder as a flow parameter is not). They reach the flow in-process, never as a parameter: parameters are
# stored on the Prefect server and set by anyone who can trigger a run.
_GIVEN_SETTINGS: ContextVar[Settings | None] = ContextVar("stockpipe_given_settings", default=None)


@contextlib.contextmanager
def given_settings(settings: Settings) -> Iterator[None]:
    """Flows started inside this block start from `settings` instead of reading the environment."""
    token = _GIVEN_SETTINGS.set(settings)
    try:
        yield
    finally:
        _GIVEN_SETTINGS.reset(token)


def resolve_settings(
    tickers: list[str] | None = None,
    source: SourceKind | str | None = None,
    csv_dir: str | None = None,
    epochs: int | None = None,
) -> Settings:
    """The given settings (or the environment's), with the flow's parameters on top; parameters are untrusted (anyone
    who can trigger a run sets them), so a csv folder must lie inside STOCKPIPE_CSV_ROOT, links followed."""
    settings = _GIVEN_SETTINGS.get() or Settings()
    updates: dict[str, Any] = {}
    if tickers:
        updates["tickers"] = [validate_ticker(t) for t in tickers]
    if source:
        updates["source"] = SourceKind(source)
    if csv_dir:
        if not within(csv_dir, settings.csv_root):
            raise ParameterRefused(
                f"csv_dir {csv_dir!r} is outside STOCKPIPE_CSV_ROOT ({settings.csv_root}); "
                "refused before reading anything"
            )
        updates["csv_dir"] = csv_dir
    if epochs:
        updates["training"] = settings.training.model_copy(update={"epochs": int(epochs)})
    merged = Settings.model_validate({**settings.model_dump(), **updates})
    merged.price_folder()  # a csv source without a folder, or a missing folder, is refused here, once
    return merged


# More tickers than this are named by their first and last and their count: 64 names make a title the UI cuts off.
TICKERS_NAMED = 6


def daily_run_name() -> str:
    """`daily 2017-11-10 MSFT,GSPC`, or `daily 2017-11-10 SYN001..SYN064 (64 tickers)`: what the run is about,
    readable in the runs list."""
    parameters = flow_run.parameters or {}
    day = parameters.get("as_of") or "latest"
    tickers = parameters.get("tickers") or "default tickers"
    if isinstance(tickers, list) and len(tickers) > TICKERS_NAMED:
        return f"daily {day} {tickers[0]}..{tickers[-1]} ({len(tickers)} tickers)"
    return f"daily {day} {','.join(tickers) if isinstance(tickers, list) else tickers}"


# A calendar date, checked by the server before a run is created (its JSON-schema check ignores `format: date`).
ISO_DATE = r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"


# `stockpipe run` and `serve` apply the configured Settings.max_workers; deployments get its default.
@flow(
    name="daily-pipeline",
    flow_run_name=daily_run_name,
    log_prints=True,
    task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS),
)
def daily_pipeline(
    tickers: Annotated[list[Ticker] | None, Field(max_length=500)] = None,
    source: SourceKind | None = None,
    csv_dir: Annotated[str | None, Field(max_length=4096)] = None,
    as_of: Annotated[dt.date | None, Field(json_schema_extra={"pattern": ISO_DATE})] = None,
    epochs: Annotated[int | None, Field(ge=1, le=1000)] = None,
    force: bool = False,
    warm_start: bool = False,
) -> State:
    """Fetch, validate, window, retrain, track and promote, for every ticker in parallel.

    Args:
        tickers: Tickers to run, e.g. ["MSFT", "GSPC"] (upper-case symbols); empty: the configured STOCKPIPE_TICKERS.
        source: Where prices come from: snapshot (the bundled data), csv (a folder of exports) or yahoo (live);
            empty: STOCKPIPE_SOURCE.
        csv_dir: For source csv: a folder of <TICKER>.csv files inside STOCKPIPE_CSV_ROOT.
        as_of: Run as if today were this date (YYYY-MM-DD; later rows are hidden); empty: today, or the bundled
            snapshot's last session.
        epochs: Training epochs, 1 to 1000 (early stopping may end sooner); empty: the configured 30.
        force: Retrain even when the data and settings are unchanged since the last decision.
        warm_start: Start from the champion's weights and train warm_start_epochs only.
    """
    quiet_third_party_logs()
    settings = resolve_settings(tickers=tickers, source=source, csv_dir=csv_dir, epochs=epochs)
    environment.in_flow_process(settings)
    ensure_fetch_rate(settings)
    connect_tracking(settings)
    progress_id = create_progress_artifact(
        progress=0.0, key=PROGRESS_KEY, description="Epochs trained across the run's tickers"
    )
    progress = EpochProgress(progress_id, settings.tickers, settings.training.epochs)
    with stop_on_signals():
        futures = [ticker_day.submit(t, settings, as_of, force, warm_start, progress) for t in settings.tickers]
        outcomes: list[TickerOutcome] = results_hearing_signals(futures)
    publish_summary(outcomes, as_of)
    failed = [o.ticker for o in outcomes if not o.succeeded]
    unheard = sum(1 for o in outcomes if o.alert_note)
    note = f"; alerts of {unheard} ticker(s) not delivered" if unheard else ""
    if failed:
        message = f"{len(failed)} of {len(outcomes)} ticker(s) failed: {', '.join(failed)}{note}"
        return Failed(message=message, data=outcomes)
    return Completed(message=f"{len(outcomes)} ticker(s) done{note}", data=outcomes)
