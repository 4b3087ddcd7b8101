"""`stockpipe`: the command line. Reads settings at the edge and hands them to the flow or the library."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from flows import environment
from flows.alerts_cli import app as alerts_app
from pipeline.common.settings import Settings, SourceKind
from pipeline.common.symbols import InvalidTicker, parse_ticker

if TYPE_CHECKING:
    from pipeline.common.outcome import TickerOutcome

app = typer.Typer(
    help="Scheduled next-day stock price forecasting: Prefect + Great Expectations + Keras + MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(alerts_app, name="alerts")


class ReplaySourceKind(StrEnum):
    """Yahoo cannot be seen as of a past day, so a replay reads files only."""

    snapshot = "snapshot"
    csv = "csv"


class TaskRunnerKind(StrEnum):
    thread = "thread"
    dask = "dask"


def load_settings() -> Settings:
    """The settings, or one clear line and exit code 2 when the environment or `.env` holds a bad value."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"STOCKPIPE_{'__'.join(str(p).upper() for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        typer.secho(f"invalid settings: {problems}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def iso_date(value: Any) -> dt.date:
    """Typer's parser for a YYYY-MM-DD option: a bad date exits with code 2 and one plain line."""
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


def _parse_tickers(values: list[str], hint: str = "--tickers") -> list[str]:
    """Tickers as typed: each checked against the strict pattern as given, before any case folding or path."""
    try:
        return [parse_ticker(t) for v in values for t in v.replace(",", " ").split() if t]
    except InvalidTicker as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None


def settings_for(source: Optional[SourceKind], csv_dir: Optional[Path]) -> Settings:
    """The settings with the command line's choices on top. A folder given on the command line is the user's own
    choice: it goes in as a setting (trusted), not as a flow parameter (which anyone who can trigger a deployment sets,
    and which is confined to STOCKPIPE_CSV_ROOT)."""
    settings = load_settings()
    updates: dict[str, Any] = {}
    if csv_dir is not None:
        if not csv_dir.is_dir():
            raise typer.BadParameter(f"{csv_dir} is not a directory", param_hint="--csv-dir")
        updates["csv_dir"] = csv_dir.expanduser().resolve()
    if source is not None:
        updates["source"] = source
    if source is SourceKind.csv and csv_dir is None and settings.csv_dir is None:
        raise typer.BadParameter("--source csv needs --csv-dir", param_hint="--csv-dir")
    if updates:
        settings = Settings.model_validate({**settings.model_dump(), **updates})
    try:
        settings.price_folder()
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--csv-dir") from None
    return settings


TickersOption = Annotated[Optional[list[str]], typer.Option("--tickers", help="Tickers to run: --tickers MSFT GSPC")]
CsvDirOption = Annotated[Optional[Path], typer.Option(help="Folder of <TICKER>.csv files for --source csv")]
EpochsOption = Annotated[Optional[int], typer.Option(min=1, max=1000, help="Override the training epochs")]


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    tickers: TickersOption = None,
    source: Annotated[Optional[SourceKind], typer.Option(help="Where prices come from")] = None,
    csv_dir: CsvDirOption = None,
    as_of: Annotated[
        Optional[dt.date], typer.Option(parser=iso_date, help="Run as if today were YYYY-MM-DD (hides later rows)")
    ] = None,
    epochs: EpochsOption = None,
    force: Annotated[bool, typer.Option(help="Retrain even when data and settings are unchanged")] = False,
    warm_start: Annotated[
        bool, typer.Option(help="Start from the champion's weights (warm_start_epochs only)")
    ] = False,
    task_runner: Annotated[
        TaskRunnerKind, typer.Option(help="Where tickers run: local threads or a Dask cluster")
    ] = TaskRunnerKind.thread,
    dask_address: Annotated[
        Optional[str], typer.Option(help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    ] = None,
) -> None:
    """Run the daily pipeline once through the Prefect flow. Exit 0 only if every ticker succeeded."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    settings = settings_for(source, csv_dir)
    api = _prepare_run(settings, chosen)
    from flows.daily import daily_pipeline, given_settings
    from flows.local_server import prefect_api

    runner = _task_runner(task_runner, settings.max_workers, dask_address)
    with prefect_api(api, share_with_workers=task_runner is TaskRunnerKind.dask), given_settings(settings):
        state = daily_pipeline.with_options(task_runner=runner)(
            tickers=chosen, as_of=as_of, epochs=epochs, force=force, warm_start=warm_start, return_state=True
        )
        outcomes = state.result(raise_on_failure=False)
    if not isinstance(outcomes, list):  # the flow itself failed before any ticker ran
        raise fail(f"flow failed: {outcomes}")
    _print_outcomes(outcomes)
    _exit_without_final_collection()
    raise typer.Exit(0 if all(o.succeeded for o in outcomes) else 1)


def _exit_without_final_collection() -> None:
    """The run is over and flushed: the interpreter's last garbage collection, through every object TensorFlow,
    MLflow, GX and Prefect made, only frees memory the exit frees anyway (measured: 4 s of a 45 s first run)."""
    import gc

    gc.freeze()


@app.command(context_settings={"allow_extra_args": True})
def replay(
    ctx: typer.Context,
    start: Annotated[dt.date, typer.Option(parser=iso_date, help="First day, YYYY-MM-DD")],
    end: Annotated[dt.date, typer.Option(parser=iso_date, help="Last day, YYYY-MM-DD")],
    tickers: TickersOption = None,
    source: Annotated[Optional[ReplaySourceKind], typer.Option(help="Where prices come from (files only)")] = None,
    csv_dir: CsvDirOption = None,
    epochs: EpochsOption = None,
    warm_start: Annotated[bool, typer.Option(help="Retrain each day from the champion's weights")] = False,
) -> None:
    """Run the daily pipeline once per trading session from START to END, as the schedule would have."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    settings = settings_for(SourceKind(source.value) if source else None, csv_dir)
    if settings.source is SourceKind.yahoo:
        raise typer.BadParameter("replay reads files: Yahoo cannot be seen as of a past day", param_hint="--source")
    api = _prepare_run(settings, chosen)
    from flows.daily import given_settings
    from flows.local_server import prefect_api
    from flows.replay import replay_pipeline

    with given_settings(settings):
        sessions = _planned_sessions(api, chosen, start, end)
        with prefect_api(api):
            state = replay_pipeline(
                start=start,
                end=end,
                tickers=chosen,
                epochs=epochs,
                warm_start=warm_start,
                sessions=sessions,
                return_state=True,
            )
            days = state.result(raise_on_failure=False)
    if not isinstance(days, list):
        raise fail(f"replay failed: {days}")
    _print_replay(days)
    raise typer.Exit(0 if all(o.succeeded for _, outcomes in days for o in outcomes) else 1)


def _prepare_run(settings: Settings, chosen: Optional[list[str]]) -> Any:
    """The environment, then the run's own Prefect API (None against a server), which comes up on the other core
    while the flow's libraries import."""
    environment.before_imports(settings, parallel_trainings=min(settings.max_workers, len(chosen or settings.tickers)))
    from flows.local_server import start_prefect_api

    api = start_prefect_api()
    if settings.source is SourceKind.yahoo:
        import yfinance  # noqa: F401 - must load before TensorFlow (yfinance issue 2528)
    if api is not None:
        environment.while_the_api_starts(settings, api.ready)
    return api


def _planned_sessions(api: Any, chosen: Optional[list[str]], start: dt.date, end: dt.date) -> list[dt.date]:
    """The replay's sessions, refused before the flow starts, so a refusal reads as one line, not a flow failure."""
    from flows.daily import resolve_settings
    from flows.replay import plan_replay
    from pipeline.common.markets import UnknownMarket
    from pipeline.replay import ReplayRefused

    try:
        return plan_replay(resolve_settings(tickers=chosen), start, end)
    except (ReplayRefused, UnknownMarket) as exc:
        if api is not None:
            api.stop()
        raise fail(str(exc), 2) from None


def _print_replay(days: list[tuple[dt.date, list[TickerOutcome]]]) -> None:
    typer.echo("")
    for session, outcomes in days:
        for o in outcomes:
            colour = typer.colors.GREEN if o.succeeded else typer.colors.RED
            typer.secho(f"{session}  {o.ticker:>6}  {o.decision.value:<8}  {o.reason}", fg=colour)


def _task_runner(kind: TaskRunnerKind, max_workers: int, dask_address: Optional[str]) -> Any:
    if kind == TaskRunnerKind.dask:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # One single-threaded worker process per ticker slot: TensorFlow releases the GIL, processes avoid sharing it.
        # Preloaded, each imports the flow's libraries as it starts, not inside its first ticker (flows.dask_worker).
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": max_workers,
                "threads_per_worker": 1,
                "processes": True,
                "preload": ["flows.dask_worker"],
            }
        )
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


def _print_outcomes(outcomes: list[TickerOutcome]) -> None:
    typer.echo("")
    for o in outcomes:
        colour = typer.colors.GREEN if o.succeeded else typer.colors.RED
        typer.secho(f"{o.ticker:>6}  {o.decision.value:<8}  {o.reason}", fg=colour)
        if o.alert_note:
            typer.secho(f"{'':>6}  {'':<8}  {o.alert_note}", fg=typer.colors.YELLOW)


@contextlib.contextmanager
def _tracker_or_none(settings: Settings) -> Iterator[Any]:
    """The tracker, or None (and a warning) when the tracking server cannot be reached: status still shows the rest."""
    from pipeline.registry.connection import TrackingUnavailable, tracking_errors
    from pipeline.registry.tracking import Tracker

    uri = settings.tracking_uri()
    try:
        with tracking_errors(uri, "reading champions"):
            tracker = Tracker.from_settings(settings)
    except TrackingUnavailable as exc:
        typer.secho(f"warning: {exc}; showing local state only", fg=typer.colors.YELLOW, err=True)
        tracker = None
    yield tracker


def _status_rows(settings: Settings) -> list[dict]:
    from pipeline.common.redact import excerpt
    from pipeline.data.forecast_log import ForecastLog
    from pipeline.data.store import PriceStore
    from pipeline.registry import journal
    from pipeline.registry.recording import rebuild_outcome
    from pipeline.state_size import tickers_bytes
    from pipeline.status import known_tickers, ticker_status

    store = PriceStore(settings.store_dir, settings.locks_dir)
    forecasts = ForecastLog(settings.forecasts_dir)
    local = known_tickers(store, settings.reports_dir, [])
    if (
        not local
        and not Path(settings.tracking_uri().removeprefix("sqlite:///")).exists()
        and settings.tracking_uri().startswith("sqlite:///")
    ):
        return []  # a fresh state directory: nothing to show, and nothing to create just to say so
    rows = []
    with _tracker_or_none(settings) as tracker:
        tickers = known_tickers(store, settings.reports_dir, tracker.registered_tickers() if tracker else [])
        sizes: dict[str, dict] = {}
        size_problem = None
        try:  # what each ticker holds informs; it must not cost the rest of the status
            sizes = tickers_bytes(settings, tickers, tracker)
        except Exception as exc:
            size_problem = f"state size unknown: {type(exc).__name__}: {excerpt(exc)}"
        for ticker in tickers:
            problems: list[str] = [size_problem] if size_problem else []
            champion = last = None
            try:
                champion = tracker.champion(ticker) if tracker else None
                rebuild = (lambda t=ticker: rebuild_outcome(tracker, t)) if tracker else (lambda: None)
                last = journal.last_outcome(settings.reports_dir, ticker, rebuild)
            except Exception as exc:
                problems.append(f"{type(exc).__name__}: {excerpt(exc)}")
            rows.append(
                ticker_status(
                    ticker, store, last, champion, settings.quarantine_dir, problems, forecasts, sizes.get(ticker)
                )
            )
    return rows


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Per ticker: stored data, the champion, the last run's RMSEs, coverage and decision."""
    settings = load_settings()
    environment.before_imports(settings)
    rows = _status_rows(settings)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no tickers yet under {settings.home}: run `stockpipe run` first")
        return
    _print_status(rows)


STATUS_COLUMNS = (
    ("ticker", "left"),
    ("data", "left"),
    ("champion", "left"),
    ("challenger", "right"),
    ("champion", "right"),
    ("naive", "right"),
    ("cov80", "right"),
    ("served80", "right"),
    ("live", "right"),
    ("liveU2", "right"),
    ("live80", "right"),
    ("decision", "left"),
)


def _print_status(rows: list[dict]) -> None:
    """One line per ticker (the reason, any problem and the quarantine under it), as a plain rich table."""
    import sys

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    def num(value: float | None, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def size(value: int | None) -> str:
        return "-" if value is None else f"{value / 1e6:.1f} MB"

    table = Table(box=None, pad_edge=False, header_style="bold", show_edge=False)
    for name, justify in STATUS_COLUMNS:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("state", justify="right", no_wrap=True)  # the bytes the ticker holds in STOCKPIPE_HOME
    table.add_column("why", overflow="fold")
    for r in rows:
        why = Text(r["last_reason"] or "")
        for problem in r["problems"]:
            why.append(f"\nproblem: {problem}", style="red")
        if r["quarantined_batches"]:
            why.append(f"\nquarantine: {r['quarantined_batches']} batch(es), {r['quarantined_bytes']:,} bytes")
        table.add_row(
            r["ticker"],
            f"{r['data_start']}..{r['data_end']}" if r["data_end"] else "-",
            f"v{r['champion_version']} {r['champion_kind']}" if r["champion_version"] else "-",
            num(r["challenger_test_rmse"]),
            num(r["champion_test_rmse"]),
            num(r["naive_test_rmse"]),
            num(r["coverage_80"], 2),
            num(r["served_coverage_80"], 2),
            str(r["live_sessions"]) if r["live_sessions"] is not None else "-",
            num(r["live_u2_60"], 3),
            num(r["live_coverage_80_60"], 2),
            r["last_decision"] or "-",
            size(r.get("state_bytes_total")),
            why,
        )
    # Piped output (a log, `make run`) gets a wide line rather than rich's 80 columns.
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)


@app.command(context_settings={"allow_extra_args": True})
def serve(
    ctx: typer.Context,
    tickers: Annotated[Optional[list[str]], typer.Option("--tickers", help="Default tickers of scheduled runs")] = None,
) -> None:
    """Serve the `daily` deployment (every day at 18:00 New York) from this process, against a Prefect server."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    if not os.environ.get("PREFECT_API_URL"):
        raise fail(
            "serve needs a Prefect server: run `prefect server start`, then "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api",
            2,
        )
    settings = load_settings()
    environment.before_imports(settings, parallel_trainings=min(settings.max_workers, len(chosen or settings.tickers)))

    from flows.deployment import serve as serve_deployment

    serve_deployment(settings, parameters={"tickers": chosen} if chosen else None)


def _one_ticker(ticker: str) -> str:
    try:
        return parse_ticker(ticker)
    except InvalidTicker as exc:
        raise typer.BadParameter(str(exc), param_hint="TICKER") from None


@app.command()
def predict(
    ticker: Annotated[str, typer.Argument(help="Ticker whose champion forecasts, e.g. MSFT")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Forecast the next session's close with the ticker's champion, from the stored prices, with 80% and 95%
    intervals."""
    ticker = _one_ticker(ticker)
    settings = load_settings()
    environment.before_imports(settings)
    from pipeline.common import codec
    from pipeline.data.store import PriceStore, StoreUnreadable
    from pipeline.models.model_files import ModelRefused
    from pipeline.registry.connection import TrackingUnavailable, tracking_errors
    from pipeline.registry.tracking import Tracker
    from pipeline.serving import forecast_next

    uri = settings.tracking_uri()
    try:
        with tracking_errors(uri, f"loading {ticker}'s champion"):
            tracker = Tracker.from_settings(settings)
            champion = tracker.champion(ticker)
            if champion is None:
                raise fail(f"{ticker}: no champion yet; run `stockpipe run --tickers {ticker}` first")
            model = tracker.load(champion, ticker)
        history = PriceStore(settings.store_dir, settings.locks_dir).read(ticker)
        forecast = forecast_next(
            ticker, model, history, champion.version, champion.serves_chosen_intervals, settings.exchange(ticker)
        )
    except (ModelRefused, StoreUnreadable, TrackingUnavailable, ValueError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(codec.dump(forecast), indent=2))
        return
    interval = ""
    if forecast.lower_80 is not None and forecast.upper_80 is not None:
        interval = f", 80% [{forecast.lower_80:.4f}, {forecast.upper_80:.4f}]"
    typer.echo(
        f"{ticker} {forecast.forecast_date}: {forecast.forecast_close:.4f}{interval} (last close "
        f"{forecast.last_close:.4f} on {forecast.as_of}; champion v{forecast.model_version}, {forecast.model_kind})"
    )


@app.command()
def rollback(
    ticker: Annotated[str, typer.Argument(help="Ticker whose champion goes back to the previous version")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the model versions")] = "manual rollback",
) -> None:
    """Move the `champion` alias back to the `previous` version, recording why."""
    ticker = _one_ticker(ticker)
    settings = load_settings()
    environment.before_imports(settings)
    from pipeline.registry.connection import TrackingUnavailable, tracking_errors
    from pipeline.registry.tracking import Tracker

    uri = settings.tracking_uri()
    try:
        with tracking_errors(uri, f"rolling back {ticker}"):
            tracker = Tracker.from_settings(settings)
            demoted, restored = tracker.rollback(ticker, reason)
    except (LookupError, TrackingUnavailable) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"{ticker}: champion v{demoted} -> v{restored} ({reason}); `previous` now points at v{demoted}")


@app.command()
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="MLflow UI port on 127.0.0.1")] = 5000,
    prefect_port: Annotated[int, typer.Option(min=1, max=65535, help="Prefect UI port on 127.0.0.1")] = 4200,
    prefect: Annotated[bool, typer.Option(help="Also start the Prefect UI over the local flow runs")] = True,
) -> None:
    """Open the MLflow UI (and the Prefect UI over `make run`'s flow runs) on 127.0.0.1, until Ctrl-C."""
    settings = load_settings()
    environment.before_imports(settings)
    from flows.local_server import run_local_uis

    raise typer.Exit(run_local_uis(settings, mlflow_port=port, prefect_port=prefect_port if prefect else None))


if __name__ == "__main__":
    app()
