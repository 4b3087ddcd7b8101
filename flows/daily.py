"""The `daily-pipeline` Prefect flow: wires the library's steps per ticker, with retries where failures are transient."""


import datetime as dt
import logging
import time
from contextlib import contextmanager
import warnings

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipeline import journal, steps
from pipeline.promotion import FAILED
from pipeline.settings import DEFAULT_MAX_WORKERS, Settings, SourceKind
from pipeline.sources import TransientSourceError, build_source
from pipeline.store import PriceStore
from pipeline.symbols import Ticker, validate_ticker
from pipeline.tracking import Tracker, TrackingUnavailable, tracking_errors
from pipeline.trading_calendar import is_session, last_session_on_or_before
from pipeline.validation import load_suite_definition

log = logging.getLogger("pipeline.flow")

FETCH_RETRIES = 3
TRACKING_RETRIES = 2


@contextmanager
def tracking(settings: Settings, doing: str):
    """A Tracker on the configured store, with a lost tracking server reported as TrackingUnavailable."""
    uri = settings.tracking_uri()
    with tracking_errors(uri, doing):
        yield Tracker(uri, settings.experiment_name, settings.artifacts_dir)


def _retry_on(*transient: type[BaseException]):
    def should_retry(task, task_run, state) -> bool:
        try:
            state.result()
        except transient:
            return True
        except Exception:  # noqa: BLE001 - any other failure is final
            return False
        return False

    return should_retry


# Rate limits and network errors heal by waiting; an unknown symbol or a broken file will not.
retry_transient_fetch = _retry_on(TransientSourceError)
# A tracking server that went away may come back (a restart); a refused request or a bug will not.
retry_unreachable_tracking = _retry_on(TrackingUnavailable)


# Yahoo's 429s are not retried by yfinance itself; backoff with jitter spreads the retries of many tickers.
@task(retries=FETCH_RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=5),
      retry_jitter_factor=0.5, retry_condition_fn=retry_transient_fetch, cache_policy=NO_CACHE,
      task_run_name="fetch-{ticker}")
def fetch(source, store: PriceStore, ticker: str, as_of: dt.date):
    return steps.fetch_batch(source, store, ticker, as_of)


# Validation failures are facts about the data, not transient: never retried.
@task(cache_policy=NO_CACHE, task_run_name="validate-{ticker}")
def validate(ticker: str, history, batch, settings: Settings, as_of: dt.date, suite: dict):
    return steps.admit(
        ticker, history, batch, suite=suite, as_of=as_of, config=settings.training,
        quarantine_dir=settings.quarantine_dir, reports_dir=settings.reports_dir,
    )


@task(cache_policy=NO_CACHE, task_run_name="train-{ticker}")
def train(ticker: str, history, settings: Settings, warm_start: bool):
    start = None
    if warm_start:
        with tracking(settings, f"loading {ticker}'s champion to warm-start from") as tracker:
            start = steps.warm_start_from_champion(tracker, ticker, settings.training)
    return steps.train_challenger(history, settings.training, ticker, start)


# Retries resume the challenger's MLflow run (steps.track_and_promote), so a retry never tracks it twice.
@task(retries=TRACKING_RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=3), retry_jitter_factor=0.5,
      retry_condition_fn=retry_unreachable_tracking, cache_policy=NO_CACHE, task_run_name="track-and-promote-{ticker}")
def track_and_promote(ticker: str, admitted, challenger, settings: Settings, run_tags: dict[str, str],
                      unsettled: str | None = None):
    with tracking(settings, f"tracking {ticker}") as tracker:
        if unsettled:
            steps.close_interrupted(tracker, ticker, unsettled)
        return steps.track_and_promote(
            tracker, admitted, challenger, config=settings.training, margin=settings.promotion_margin,
            source=settings.source.value, run_tags=run_tags,
        )


# Creating the tracking store (SQLite schema migrations, the experiment) once, before tickers fan out,
# keeps parallel tickers from racing to migrate a fresh database; it also fails fast on an unreachable server.
@task(retries=TRACKING_RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=3), retry_jitter_factor=0.5,
      retry_condition_fn=retry_unreachable_tracking, cache_policy=NO_CACHE)
def connect_tracking(settings: Settings) -> None:
    with tracking(settings, "connecting"):
        pass


@task(cache_policy=NO_CACHE, task_run_name="{ticker}")
def ticker_pipeline(ticker: str, settings: Settings, as_of: dt.date, force: bool, warm_start: bool, suite: dict) -> dict:
    """One ticker end to end; any failure is reported as this ticker's outcome and never stops the others."""
    quiet_third_party_logs()  # again here: on a Dask worker this is a fresh process
    store = PriceStore(settings.store_dir, settings.locks_dir)
    run_tags = {"prefect_flow_run_id": str(flow_run.get_id() or ""), "as_of": as_of.isoformat()}
    challenger = None
    try:
        source = build_source(settings.source.value, folder=None if settings.source is SourceKind.yahoo else settings.price_folder(),
                              yahoo_symbols=settings.yahoo_symbols)
        # The lock makes concurrent runs of one ticker take turns: the second sees the first's data and skips.
        timings: dict[str, float] = {}
        with store.lock(ticker):
            history = store.read(ticker)
            with stopwatch(timings, "fetch"):
                backoff = exponential_backoff(backoff_factor=settings.fetch_backoff_seconds)
                batch = fetch.with_options(retry_delay_seconds=backoff)(source, store, ticker, as_of)
            with stopwatch(timings, "validate"):
                admitted = validate(ticker, history, batch, settings, as_of, suite)
            previous = journal.read(settings.reports_dir, ticker)
            settings_digest = settings.training.digest()
            if not force and steps.already_trained(settings.reports_dir, ticker, admitted.data_digest, settings_digest):
                outcome = steps.skipped(admitted, settings_digest, previous)
            else:
                if admitted.changed:
                    store.write(ticker, admitted.history)
                with stopwatch(timings, "window_train_evaluate"):
                    challenger = train(ticker, admitted.history, settings, warm_start)
                with stopwatch(timings, "track_and_promote"):
                    outcome = track_and_promote(ticker, admitted, challenger, settings, run_tags,
                                                challenger_left_unsettled(previous))
                timings.update(challenger.timings)
            outcome.timings = timings
            journal.write(settings.reports_dir, ticker, outcome.to_dict())
    except Exception as exc:  # noqa: BLE001 - reported per ticker, the flow state reflects it below
        log.error("%s: failed: %s", ticker, exc)
        if isinstance(exc, steps.DataContractViolation):
            record_rejection(settings, exc, as_of, run_tags)
        last = journal.read(settings.reports_dir, ticker) or {}
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, TrackingUnavailable) and challenger is not None:  # raised by the retried tracking task
            reason += f" (gave up after {TRACKING_RETRIES + 1} attempts; the next run settles the run left unfinished)"
        outcome = steps.TickerOutcome(
            ticker=ticker, decision=FAILED, reason=reason,
            champion_version=last.get("champion_version"), champion_kind=last.get("champion_kind"),
            challenger_id=challenger.challenger_id if challenger is not None else None,
        )
        journal.write(settings.reports_dir, ticker, {**last, **{k: v for k, v in outcome.to_dict().items() if v is not None}})
    return outcome.to_dict()


def challenger_left_unsettled(previous: dict | None) -> str | None:
    """The challenger whose tracking the last run gave up on, for this run to settle first."""
    if previous and previous.get("decision") == FAILED:
        return previous.get("challenger_id")
    return None


def record_rejection(settings: Settings, violation, as_of: dt.date, run_tags: dict[str, str]) -> None:
    """Best effort: the rejection is already on disk (reports, quarantine) if the tracking server is down."""
    try:
        with tracking(settings, f"recording {violation.ticker}'s rejection") as tracker:
            steps.record_rejection(tracker, violation, as_of=as_of, source=settings.source.value, run_tags=run_tags)
    except Exception as exc:  # noqa: BLE001 - never mask the ticker's real failure
        log.warning("%s: could not record the rejection in MLflow: %s", violation.ticker, exc)


@contextmanager
def stopwatch(timings: dict[str, float], step: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[step] = round(time.perf_counter() - started, 3)


def summary_markdown(outcomes: list[dict]) -> str:
    def fmt(value, digits=4):
        return "" if value is None else f"{value:.{digits}f}"

    def run_link(outcome: dict) -> str:
        return f"[{outcome['run_id'][:8]}]({outcome['run_url']})" if outcome.get("run_url") else ""

    rows = ["| ticker | data end | challenger RMSE | champion RMSE | naive RMSE | U2 | decision | MLflow run |",
            "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        rows.append(
            f"| {o['ticker']} | {o.get('data_end') or ''} | {fmt(o.get('challenger_test_rmse'))} | "
            f"{fmt(o.get('champion_test_rmse'))} | {fmt(o.get('naive_test_rmse'))} | {fmt(o.get('u2'), 3)} | "
            f"{o['decision']} | {run_link(o)} |"
        )
    reasons = [f"- **{o['ticker']}**: {o['reason']}" for o in outcomes]
    return "\n".join(["# Daily pipeline", "", *rows, "", *reasons])


# `stockpipe run` and `serve` apply the configured Settings.max_workers; deployments get its default.
@flow(name="daily-pipeline", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_MAX_WORKERS))
def daily_pipeline(
    tickers: list[Ticker] | None = None,
    source: SourceKind | None = None,
    csv_dir: str | None = None,
    as_of: dt.date | None = None,
    epochs: int | None = None,
    force: bool = False,
    warm_start: bool = False,
):
    """Fetch, validate, window, retrain, track and promote, for every ticker in parallel."""
    quiet_third_party_logs()
    settings = resolve_settings(tickers=tickers, source=source, csv_dir=csv_dir, epochs=epochs)
    as_of = as_of or dt.date.today()
    closed = market_closed_outcomes(settings, as_of)
    if closed is not None:
        return Completed(message=f"market closed on {as_of}: nothing to do", data=closed)
    suite = load_suite_definition(settings.suite_path)
    connect_tracking(settings)
    futures = [ticker_pipeline.submit(t, settings, as_of, force, warm_start, suite) for t in settings.tickers]
    outcomes = [f.result() for f in futures]
    create_markdown_artifact(key="daily-pipeline-summary", markdown=summary_markdown(outcomes),
                             description=f"stockpipe daily run as of {as_of}")
    failed = [o["ticker"] for o in outcomes if o["decision"] == FAILED]
    if failed:
        return Failed(message=f"{len(failed)} of {len(outcomes)} ticker(s) failed: {', '.join(failed)}", data=outcomes)
    return Completed(message=f"{len(outcomes)} ticker(s) done", data=outcomes)


def market_closed_outcomes(settings: Settings, as_of: dt.date) -> list[dict] | None:
    """On a weekend or holiday with every store already current, the run is a quick no-op; None otherwise."""
    if is_session(as_of):
        return None
    store = PriceStore(settings.store_dir, settings.locks_dir)
    last_session = last_session_on_or_before(as_of)
    if any((store.last_date(t) or dt.date.min) < last_session for t in settings.tickers):
        return None  # something is behind: catch up even though the exchange is closed today
    log.info("market closed on %s and every store holds %s: nothing to do", as_of, last_session)
    outcomes = []
    for ticker in settings.tickers:
        outcome = steps.market_closed(ticker, as_of, journal.read(settings.reports_dir, ticker)).to_dict()
        journal.write(settings.reports_dir, ticker, outcome)
        outcomes.append(outcome)
    return outcomes


def quiet_third_party_logs() -> None:
    """Keep the run log to what a person follows: our steps at INFO, libraries' chatter at WARNING."""
    logging.getLogger("pipeline").setLevel(logging.INFO)
    # GX pins one module's logger at INFO when it is imported, so import it first and then quiet it.
    import great_expectations.data_context.types.base  # noqa: F401

    for noisy in ("great_expectations", "great_expectations.data_context.types.base", "mlflow", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Logging our own PythonModel classes is intended; MLflow warns about pickling them on every log.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    # Dask's nanny reports killing workers that TensorFlow's threads keep alive at shutdown: expected, not actionable.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")


def resolve_settings(**overrides) -> Settings:
    """Settings from the environment, with the flow's parameters (when given) on top; checked before any work."""
    settings = Settings()
    updates = {}
    if overrides.get("tickers"):
        updates["tickers"] = [validate_ticker(t) for t in overrides["tickers"]]
    if overrides.get("source"):
        updates["source"] = SourceKind(overrides["source"])
    if overrides.get("csv_dir"):
        updates["csv_dir"] = overrides["csv_dir"]
    if overrides.get("epochs"):
        updates["training"] = settings.training.model_copy(update={"epochs": int(overrides["epochs"])})
    merged = Settings.model_validate({**settings.model_dump(), **updates})
    if merged.source is not SourceKind.yahoo:
        folder = merged.price_folder()
        if not folder.is_dir():
            raise ValueError(f"price folder {folder} does not exist")
    return merged
