"""Replaying bundled weeks as the schedule would have run them, and runs on days the exchange is closed."""

from __future__ import annotations

import datetime as dt

import pytest
from mlflow import MlflowClient

from flows.daily import daily_pipeline, market_closed_outcomes
from flows.replay import replay_pipeline
from pipeline.promotion import KEPT, PROMOTED, SKIPPED
from pipeline.replay import ReplayRefused
from pipeline.symbols import registered_model_name

pytestmark = pytest.mark.integration

MONDAY, SUNDAY = dt.date(2017, 10, 30), dt.date(2017, 11, 5)


def test_replay_runs_every_session_and_refuses_to_rewind(settings):
    days = replay_pipeline(start=MONDAY, end=SUNDAY, tickers=["MSFT"])
    assert [d["session"] for d in days] == ["2017-10-30", "2017-10-31", "2017-11-01", "2017-11-02", "2017-11-03"]
    decisions = [d["outcomes"][0]["decision"] for d in days]
    assert set(decisions) <= {PROMOTED, KEPT}, decisions
    assert [d["outcomes"][0]["data_end"] for d in days] == [d["session"] for d in days]
    versions = MlflowClient(tracking_uri=settings.tracking_uri()).search_model_versions(
        f"name = '{registered_model_name('MSFT')}'"
    )
    assert len(versions) == 1 + len(days), "the naive baseline, then one challenger per session"

    with pytest.raises(ReplayRefused, match="MSFT through 2017-11-03"):
        replay_pipeline(start=dt.date(2017, 11, 1), end=dt.date(2017, 11, 10), tickers=["MSFT"])


def test_weekend_run_is_a_no_op_once_the_store_is_current(settings):
    saturday = dt.date(2017, 11, 4)
    assert market_closed_outcomes(settings.model_copy(update={"tickers": ["MSFT"]}), saturday) is None, (
        "an empty store must catch up even on a weekend"
    )
    daily_pipeline(tickers=["MSFT"], as_of=dt.date(2017, 11, 3))
    outcome = daily_pipeline(tickers=["MSFT"], as_of=saturday)[0]
    assert outcome["decision"] == SKIPPED and "market closed on 2017-11-04" in outcome["reason"]
    assert outcome["champion_version"] is not None, "the no-op keeps what status shows"
