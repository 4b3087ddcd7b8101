"""Replaying bundled weeks as the schedule would have run them, and runs on days the exchange is closed."""

from __future__ import annotations

import datetime as dt

import pytest

from flows.daily import daily_pipeline
from flows.replay import plan_replay, replay_pipeline
from pipeline.common.outcome import Decision
from pipeline.registry.tracking import Tracker
from pipeline.replay import ReplayRefused

pytestmark = pytest.mark.integration

MONDAY, SUNDAY = dt.date(2017, 10, 30), dt.date(2017, 11, 5)


def test_replay_runs_every_session_and_refuses_to_rewind(settings):
    days = replay_pipeline(start=MONDAY, end=SUNDAY, tickers=["MSFT"])
    assert [str(day) for day, _ in days] == ["2017-10-30", "2017-10-31", "2017-11-01", "2017-11-02", "2017-11-03"]
    outcomes = [outcomes[0] for _, outcomes in days]
    assert {o.decision for o in outcomes} <= {Decision.promoted, Decision.kept}, outcomes
    assert [o.data_end for o in outcomes] == [str(day) for day, _ in days]
    tracker = Tracker.connect(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    promoted = sum(o.decision is Decision.promoted for o in outcomes)
    assert len(tracker.versions("MSFT")) == 1 + promoted, "the naive baseline, then one version per promotion"
    assert len(tracker.runs("MSFT")) == len(days), "one run per session"

    with pytest.raises(ReplayRefused, match="MSFT through 2017-11-03"):
        plan_replay(settings.model_copy(update={"tickers": ["MSFT"]}), dt.date(2017, 11, 1), dt.date(2017, 11, 10))


def test_weekend_run_is_a_no_op_once_the_store_is_current(settings):
    saturday = dt.date(2017, 11, 4)
    first = daily_pipeline(tickers=["MSFT"], as_of=saturday)[0]
    assert first.decision is not Decision.skipped, "an empty store catches up even on a weekend"
    outcome = daily_pipeline(tickers=["MSFT"], as_of=saturday)[0]
    assert outcome.decision is Decision.skipped and "market closed on 2017-11-04" in outcome.reason
    assert outcome.champion_version is not None, "the no-op keeps what status shows"
