"""The flow on the yahoo source, with Yahoo's answers recorded: what is retried, what fails at once, what goes on."""

from __future__ import annotations

import datetime as dt

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.daily import FETCH_RETRIES, YAHOO_RATE_LIMIT, daily_pipeline
from pipeline.common.outcome import Decision
from pipeline.data.store import PriceStore
from tests import yahoo_fake
from tests.support import SNAPSHOTS

pytestmark = pytest.mark.integration


def fetch_run_counts(flow_run_id) -> dict[str, int]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.run_count for run in runs if run.name.startswith("fetch-")}


def retry_waits(flow_run_id, name: str) -> list[float]:
    """How long each retry of a task run was scheduled to wait, from its AwaitingRetry states."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        (run,) = [r for r in runs if r.name == name]
        states = client.read_task_run_states(run.id)
    return [
        round((s.state_details.scheduled_time - s.timestamp).total_seconds())
        for s in states
        if s.name == "AwaitingRetry"
    ]


def test_rate_limits_are_retried_unknown_symbols_are_not_and_closed_days_are_empty(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("STOCKPIPE_FETCH_BACKOFF_SECONDS", "0")
    yahoo = yahoo_fake.install(monkeypatch, tmp_path / "yf-cache")
    yahoo.answer("MSFT", 429)
    yahoo.answer("AAPL", "msft_empty_weekend.json")
    # A stored history that is current up to Friday: Yahoo's empty weekend answer means nothing new.
    import pandas as pd

    history = pd.read_csv(SNAPSHOTS / "MSFT.csv", parse_dates=["Date"])
    PriceStore(settings.store_dir, settings.locks_dir).write("AAPL", history[history["Date"] <= "2017-11-10"])

    state = daily_pipeline(
        tickers=["MSFT", "NOSUCH", "AAPL"], source="yahoo", as_of=dt.date(2017, 11, 10), return_state=True
    )
    outcomes = {o.ticker: o for o in state.result(raise_on_failure=False)}

    assert state.is_failed()
    assert outcomes["MSFT"].decision is Decision.failed and "429" in outcomes["MSFT"].reason
    assert outcomes["NOSUCH"].decision is Decision.failed and "unknown or delisted" in outcomes["NOSUCH"].reason
    assert outcomes["AAPL"].succeeded, outcomes["AAPL"]
    counts = fetch_run_counts(state.state_details.flow_run_id)
    assert counts["fetch-MSFT"] == FETCH_RETRIES + 1, "a rate limit is retried with backoff"
    assert retry_waits(state.state_details.flow_run_id, "fetch-MSFT") == [0.0] * FETCH_RETRIES, (
        "STOCKPIPE_FETCH_BACKOFF_SECONDS=0 is the backoff used"
    )
    with get_client(sync_client=True) as client:
        paced = client.read_global_concurrency_limit_by_name(YAHOO_RATE_LIMIT)
    assert paced.slot_decay_per_second == settings.fetch_rate_per_second and paced.active
    assert counts["fetch-NOSUCH"] == 1, "an unknown symbol is not retried"
    assert not PriceStore(settings.store_dir, settings.locks_dir).path("MSFT").exists()
