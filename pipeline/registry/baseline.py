"""Every ticker's registered model starts with the naive forecaster as version 1 and champion, so a forecast (with
intervals) is always available and an LSTM only takes over on evidence."""

from __future__ import annotations

import logging
from contextlib import suppress

import pandas as pd

from pipeline.models.forecasters import NaiveForecaster, min_input_rows
from pipeline.registry.tracking import Champion, Tracker

log = logging.getLogger(__name__)

BASELINE = "baseline"


def ensure_baseline(tracker: Tracker, ticker: str, history: pd.DataFrame, run_tags: dict[str, str]) -> Champion:
    """The ticker's champion; registers the naive baseline first when there is none (and only then: an error
    reading the registry propagates rather than passing for "no champion")."""
    champion = tracker.champion(ticker)
    if champion is not None:
        return champion
    for version in tracker.versions(ticker):
        if version.tags.get("decision") == BASELINE:
            # Registered by a run cut off before the alias moved: crown it rather than register a second one.
            tracker.make_champion(ticker, str(version.version))
            return tracker.champion(ticker) or _missing(ticker)
    data_end = history["Date"].max().strftime("%Y-%m-%d")
    run_id = tracker.start_run(
        f"{ticker} baseline",
        {**run_tags, "ticker": ticker, "role": BASELINE, "day": data_end},
        description=f"The naive forecaster (tomorrow = today) registered as {ticker}'s first champion.",
    )
    try:
        forecaster = NaiveForecaster()
        logged = tracker.logged_forecaster_of(run_id) or tracker.log_forecaster(
            run_id, forecaster, history, min_input_rows(forecaster)
        )
        version = tracker.register(
            ticker,
            logged,
            run_id,
            tags={"decision": BASELINE, "data_end": data_end},
            description="Naive baseline: tomorrow's close is today's close. `stockpipe predict` serves it with "
            "the interval method its latest validation sessions favour (pipeline.evaluation.served_intervals).",
        )
        tracker.make_champion(ticker, str(version.version))
        tracker.client.set_terminated(run_id, "FINISHED")
    except BaseException:
        with suppress(Exception):  # with the server gone this fails too; the next run settles the run
            tracker.client.set_terminated(run_id, "FAILED")
        raise
    log.info("%s: registered the naive forecaster as v%s (champion)", ticker, version.version)
    return tracker.champion(ticker) or _missing(ticker)


def _missing(ticker: str) -> Champion:
    raise RuntimeError(f"{ticker}: the champion alias was set but cannot be read back")
