"""`stockpipe`: the command line. Reads settings at the edge and hands them to the flow or the library."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from enum import Enum
from typing import Annotated, Optional

import typer

from pipeline.settings import Settings, SourceKind
from pipeline.symbols import InvalidTicker, validate_ticker

app = typer.Typer(help="Scheduled next-day stock price forecasting: Prefect + Great Expectations + Keras + MLflow.",
                  no_args_is_help=True, add_completion=False)


class ReplaySourceKind(str, Enum):
    """Yahoo cannot be seen as of a past day, so a replay reads files only."""

    snapshot = "snapshot"
    csv = "csv"


class TaskRunnerKind(str, Enum):
    thread = "thread"
    dask = "dask"


def prepare_environment(settings: Settings) -> None:
    """Point Prefect and friends at the state directory before they are imported."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("PREFECT_API_URL"):
        # Without a server, Prefect starts a temporary one; its database belongs with the rest of the state.
        os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
        # Its first start creates the database; 20 s (Prefect's default) is too short for a busy 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Library code logs through `logging`; this hands those records to Prefect's console and UI handlers.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "pipeline")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def share_cores(parallel_trainings: int) -> None:
    """Give each parallel training its share of the cores: TensorFlow's default, one pool per process spanning all
    cores, makes two tickers' small LSTMs fight over the same threads (measured: 25% slower on 2 cores)."""
    if parallel_trainings > 1:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // parallel_trainings)))


def _parse_date(value: Optional[str], option: str = "--as-of") -> Optional[dt.date]:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form", param_hint=option) from None


def _parse_tickers(values: list[str]) -> list[str]:
    tickers = [t.strip().upper() for v in values for t in v.replace(",", " ").split() if t.strip()]
    try:
        return [validate_ticker(t) for t in tickers]
    except InvalidTicker as exc:
        raise typer.BadParameter(str(exc), param_hint="--tickers") from None


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    tickers: Annotated[Optional[list[str]], typer.Option("--tickers", help="Tickers to run: --tickers MSFT GSPC")] = None,
    source: Annotated[Optional[SourceKind], typer.Option(help="Where prices come from")] = None,
    csv_dir: Annotated[Optional[Path], typer.Option(help="Folder of <TICKER>.csv files for --source csv")] = None,
    as_of: Annotated[Optional[str], typer.Option(help="Run as if today were YYYY-MM-DD (hides later rows)")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the training epochs")] = None,
    force: Annotated[bool, typer.Option(help="Retrain even when data and settings are unchanged")] = False,
    warm_start: Annotated[bool, typer.Option(help="Start from the champion's weights (warm_start_epochs only)")] = False,
    task_runner: Annotated[TaskRunnerKind, typer.Option(help="Where tickers run: local threads or a Dask cluster")] = TaskRunnerKind.thread,
    dask_address: Annotated[Optional[str], typer.Option(help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")] = None,
) -> None:
    """Run the daily pipeline once through the Prefect flow. Exit 0 only if every ticker succeeded."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    as_of_date = _parse_date(as_of)
    _check_source(source, csv_dir)
    settings = Settings()
    prepare_environment(settings)
    share_cores(min(settings.max_workers, len(chosen or settings.tickers)))
    if (source or settings.source) is SourceKind.yahoo:
        import yfinance  # noqa: F401 - must load before TensorFlow (yfinance issue 2528)

    from flows.daily import daily_pipeline

    with _api_visible_to_workers(task_runner):
        state = daily_pipeline.with_options(task_runner=_task_runner(task_runner, settings.max_workers, dask_address))(
            tickers=chosen, source=source, csv_dir=str(csv_dir) if csv_dir else None,
            as_of=as_of_date, epochs=epochs, force=force, warm_start=warm_start, return_state=True,
        )
    outcomes = state.result(raise_on_failure=False)
    if not isinstance(outcomes, list):  # the flow itself failed before any ticker ran
        typer.secho(f"flow failed: {outcomes}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    _print_outcomes(outcomes)
    raise typer.Exit(0 if all(o["decision"] != "failed" for o in outcomes) else 1)


def _check_source(source: Optional[SourceKind], csv_dir: Optional[Path]) -> None:
    if source is SourceKind.csv and csv_dir is None:
        raise typer.BadParameter("--source csv needs --csv-dir", param_hint="--csv-dir")
    if csv_dir is not None and not csv_dir.is_dir():
        raise typer.BadParameter(f"{csv_dir} is not a directory", param_hint="--csv-dir")


@app.command(context_settings={"allow_extra_args": True})
def replay(
    ctx: typer.Context,
    start: Annotated[str, typer.Option(help="First day, YYYY-MM-DD")],
    end: Annotated[str, typer.Option(help="Last day, YYYY-MM-DD")],
    tickers: Annotated[Optional[list[str]], typer.Option("--tickers", help="Tickers to run: --tickers MSFT GSPC")] = None,
    source: Annotated[Optional[ReplaySourceKind], typer.Option(help="Where prices come from (files only)")] = None,
    csv_dir: Annotated[Optional[Path], typer.Option(help="Folder of <TICKER>.csv files for --source csv")] = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Override the training epochs")] = None,
    warm_start: Annotated[bool, typer.Option(help="Retrain each day from the champion's weights")] = False,
) -> None:
    """Run the daily pipeline once per trading session from START to END, as the schedule would have."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    start_date, end_date = _parse_date(start, "--start"), _parse_date(end, "--end")
    source = SourceKind(source.value) if source else None
    _check_source(source, csv_dir)
    settings = Settings()
    prepare_environment(settings)
    share_cores(min(settings.max_workers, len(chosen or settings.tickers)))

    from flows.daily import resolve_settings
    from flows.replay import plan_replay, replay_pipeline
    from pipeline.replay import ReplayRefused

    try:  # refused before the flow starts, so a refusal reads as one line, not a flow failure
        plan_replay(resolve_settings(tickers=chosen, source=source, csv_dir=str(csv_dir) if csv_dir else None),
                    start_date, end_date)
    except ReplayRefused as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    state = replay_pipeline(start=start_date, end=end_date, tickers=chosen, source=source,
                            csv_dir=str(csv_dir) if csv_dir else None, epochs=epochs, warm_start=warm_start,
                            return_state=True)
    days = state.result(raise_on_failure=False)
    if not isinstance(days, list):
        typer.secho(f"replay failed: {days}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo("")
    for day in days:
        for o in day["outcomes"]:
            colour = typer.colors.RED if o["decision"] == "failed" else typer.colors.GREEN
            typer.secho(f"{day['session']}  {o['ticker']:>6}  {o['decision']:<8}  {o['reason']}", fg=colour)
    failed = any(o["decision"] == "failed" for day in days for o in day["outcomes"])
    raise typer.Exit(1 if failed else 0)


@contextlib.contextmanager
def _api_visible_to_workers(kind: TaskRunnerKind):
    """Dask workers are other processes: without a server to share, each would start its own temporary one.

    So for Dask without PREFECT_API_URL, start the temporary server here and hand its URL to the workers
    through the environment they inherit.
    """
    if kind != TaskRunnerKind.dask or os.environ.get("PREFECT_API_URL"):
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)  # the last log records must reach the server before it stops
        del os.environ["PREFECT_API_URL"]
        server.stop()


def _task_runner(kind: TaskRunnerKind, max_workers: int, dask_address: Optional[str]):
    if kind == TaskRunnerKind.dask:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        # One single-threaded worker process per ticker slot: TensorFlow releases the GIL, processes avoid sharing it.
        return DaskTaskRunner(cluster_kwargs={"n_workers": max_workers, "threads_per_worker": 1, "processes": True})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


def _print_outcomes(outcomes: list[dict]) -> None:
    typer.echo("")
    for o in outcomes:
        colour = typer.colors.RED if o["decision"] == "failed" else typer.colors.GREEN
        typer.secho(f"{o['ticker']:>6}  {o['decision']:<8}  {o['reason']}", fg=colour)


def _status_rows(settings: Settings) -> list[dict]:
    from pipeline.status import known_tickers, ticker_status
    from pipeline.store import PriceStore
    from pipeline.tracking import Tracker

    store = PriceStore(settings.store_dir, settings.locks_dir)
    tickers = known_tickers(store, settings.reports_dir)
    tracker = Tracker(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir) if tickers else None
    return [ticker_status(t, store, settings.reports_dir, tracker.champion(t)) for t in tickers]


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False) -> None:
    """Per ticker: stored data, the champion, the last run's RMSEs and decision."""
    settings = Settings()
    rows = _status_rows(settings)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no tickers yet under {settings.home}: run `stockpipe run` first")
        return

    def num(value):
        return "-" if value is None else f"{value:.4f}"

    typer.echo(f"{'ticker':<7}{'data':<25}{'champion':<14}{'challenger':>11}{'champion':>11}{'naive':>11}  decision")
    for r in rows:
        span = f"{r['data_start']}..{r['data_end']}" if r["data_end"] else "-"
        champ = f"v{r['champion_version']} {r['champion_kind']}" if r["champion_version"] else "-"
        typer.echo(f"{r['ticker']:<7}{span:<25}{champ:<14}{num(r['challenger_test_rmse']):>11}"
                   f"{num(r['champion_test_rmse']):>11}{num(r['naive_test_rmse']):>11}  {r['last_decision']}")
        typer.echo(f"{'':<7}{r['last_reason']}")


@app.command(context_settings={"allow_extra_args": True})
def serve(
    ctx: typer.Context,
    tickers: Annotated[Optional[list[str]], typer.Option("--tickers", help="Default tickers of scheduled runs")] = None,
) -> None:
    """Serve the `daily` deployment (weekdays 18:00 New York) from this process, against a Prefect server."""
    chosen = _parse_tickers([*(tickers or []), *ctx.args]) or None
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho("serve needs a Prefect server: run `prefect server start`, then "
                    "export PREFECT_API_URL=http://127.0.0.1:4200/api", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    settings = Settings()
    prepare_environment(settings)
    share_cores(min(settings.max_workers, len(chosen or settings.tickers)))

    from flows.deployment import serve as serve_deployment

    serve_deployment(settings, parameters={"tickers": chosen} if chosen else None)


def _one_ticker(ticker: str) -> str:
    try:
        return validate_ticker(ticker.strip().upper())
    except InvalidTicker as exc:
        raise typer.BadParameter(str(exc), param_hint="TICKER") from None


@app.command()
def predict(
    ticker: Annotated[str, typer.Argument(help="Ticker whose champion forecasts, e.g. MSFT")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Forecast the next session's close with the ticker's champion, from the stored prices."""
    from pipeline.serving import forecast_next
    from pipeline.store import PriceStore
    from pipeline.tracking import Tracker

    ticker = _one_ticker(ticker)
    settings = Settings()
    prepare_environment(settings)
    tracker = Tracker(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    champion = tracker.champion(ticker)
    if champion is None:
        typer.secho(f"{ticker}: no champion yet; run `stockpipe run --tickers {ticker}` first", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    history = PriceStore(settings.store_dir, settings.locks_dir).read(ticker)
    try:
        forecast = forecast_next(ticker, tracker.load(champion.model_uri), history, champion.version, champion.kind)
    except ValueError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(forecast.to_dict(), indent=2))
    else:
        typer.echo(f"{ticker} {forecast.forecast_date}: {forecast.forecast_close:.4f} (last close {forecast.last_close:.4f} "
                   f"on {forecast.as_of}; champion v{forecast.model_version}, {forecast.model_kind})")


@app.command()
def rollback(
    ticker: Annotated[str, typer.Argument(help="Ticker whose champion goes back to the previous version")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the model versions")] = "manual rollback",
) -> None:
    """Move the `champion` alias back to the `previous` version, recording why."""
    from pipeline.tracking import Tracker

    ticker = _one_ticker(ticker)
    settings = Settings()
    prepare_environment(settings)
    tracker = Tracker(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    try:
        demoted, restored = tracker.rollback(ticker, reason)
    except LookupError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{ticker}: champion v{demoted} -> v{restored} ({reason}); `previous` now points at v{demoted}")


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1")] = 5000) -> None:
    """Start the MLflow UI on 127.0.0.1 over the same tracking store."""
    settings = Settings()
    uri = settings.tracking_uri()
    typer.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port} (Ctrl-C to stop)")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", settings.artifacts_dir.as_uri()]
    raise typer.Exit(subprocess.call(command))


if __name__ == "__main__":
    app()
