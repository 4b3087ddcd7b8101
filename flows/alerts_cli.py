"""`stockpipe alerts`: the server's notification blocks and automations (flows/automations.py), from the command line.

    stockpipe alerts install      # on the server PREFECT_API_URL names; again after changing STOCKPIPE_ALERT_*
    stockpipe alerts show         # what the server holds, and where each automation sends

Prefect is imported only when a command runs: `stockpipe --help` stays quick.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from flows.automations import Installed

app = typer.Typer(
    help="Alerts from the Prefect server: a failed run, a ticker event, a missed run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def install(
    if_configured: Annotated[
        bool, typer.Option(help="Exit 0 with a note when no alert channel is set (the compose stack's deploy step)")
    ] = False,
) -> None:
    """Save the notification blocks and create or update the three automations on the server PREFECT_API_URL
    names. Idempotent: installing again updates them in place."""
    from flows.automations import AlertsNotInstalled, NoChannel
    from flows.automations import install as install_alerts
    from flows.cli import fail, load_settings

    settings = load_settings()
    try:
        rows = asyncio.run(install_alerts(settings))
    except NoChannel as exc:
        if if_configured:
            typer.echo(f"alerts not installed: {exc}")
            raise typer.Exit(0) from None
        raise fail(str(exc)) from None
    except (AlertsNotInstalled, ValueError) as exc:
        raise fail(f"alerts not installed: {exc}") from None
    _print_rows(rows, "installed on the Prefect server")


@app.command()
def show() -> None:
    """The stockpipe automations on the server PREFECT_API_URL names and the channels each sends to."""
    from flows.automations import AlertsNotInstalled, installed
    from flows.cli import fail

    try:
        rows = asyncio.run(installed())
    except AlertsNotInstalled as exc:
        raise fail(str(exc)) from None
    _print_rows(rows, "on the Prefect server")
    if any(row.outcome == "missing" for row in rows):
        raise typer.Exit(1)


def _print_rows(rows: list[Installed], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.automations import server_url
    from pipeline.common.redact import masked_uri

    table = Table(title=f"{title} {masked_uri(server_url())}", box=None, header_style="bold", title_justify="left")
    for column in ("kind", "name", "", "what"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.kind, row.name, row.outcome, row.what)
    Console(highlight=False, width=None if sys.stdout.isatty() else 200).print(table)
