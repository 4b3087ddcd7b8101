"""Replaying bundled weeks as the schedule would have run them, and runs on days the exchange is closed."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from flows.daily import daily_pipeline
from flows.replay import plan_replay, replay_pipeline
from pipeline.common.outcome import Decision
from pipeline.registry.live_runs import LIVE_RECORD_ROLE
from pipeline.registry.tracking import Tracker
from pipeline.replay import ReplayRefused
from tests.support import stockpipe

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

    # The live record the replay built, recomputed here from the two files alone, is what status and MLflow show.
    expected = recomputed_live_record(settings)
    assert expected["live_sessions"] == len(days) - 1, "every session's forecast scored the next day, the last pending"
    (row,) = json.loads(
        stockpipe("status", "--json", cwd=settings.home.parent, STOCKPIPE_HOME=str(settings.home)).stdout
    )
    champion = tracker.champion("MSFT")
    last_run = tracker.runs("MSFT")[0]
    (version_run,) = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.role = '{LIVE_RECORD_ROLE}' and tags.model_version = '{champion.version}'"
    )
    history = {k: tracker.client.get_metric_history(version_run.info.run_id, k) for k in expected}
    for key, value in expected.items():
        assert row[key] == pytest.approx(value), f"status {key}"
        assert last_run.data.metrics[key] == pytest.approx(value), f"the last daily run's {key}"
        assert history[key][-1].value == pytest.approx(value) and history[key][-1].step == expected["live_sessions"]
    assert [m.step for m in history["live_sessions"]] == list(range(1, len(days))), "one point per scored session"
    assert "**Live record** of the champion that served until today" in last_run.data.tags["mlflow.note.content"]


def recomputed_live_record(settings) -> dict[str, float]:
    """The status fields of the live record from `forecasts/MSFT.parquet` and `store/MSFT.parquet`, by hand."""
    forecasts = pd.read_parquet(settings.home / "forecasts" / "MSFT.parquet")
    prices = pd.read_parquet(settings.home / "store" / "MSFT.parquet")
    assert forecasts["target"].is_unique, "one row per target session (one version served throughout)"
    scored = forecasts.merge(prices.rename(columns={"Date": "target"}), on="target").tail(60)
    actual = scored["Close"].to_numpy()
    rmse = np.sqrt(np.mean((actual - scored["point"]) ** 2))
    naive = np.sqrt(np.mean((actual - scored["last_close"]) ** 2))
    inside_80 = (scored["lower_80"] <= actual) & (actual <= scored["upper_80"])
    inside_95 = (scored["lower_95"] <= actual) & (actual <= scored["upper_95"])
    n, misses = len(scored), int((~inside_80).sum())
    rate = misses / n
    log_null = (n - misses) * np.log(0.8) + misses * np.log(0.2)
    log_fit = sum(k * np.log(r) for k, r in ((n - misses, 1 - rate), (misses, rate)) if k)
    return {
        "live_sessions": n,
        "live_u2_60": rmse / naive,
        "live_coverage_80_60": inside_80.mean(),
        "live_coverage_95_60": inside_95.mean(),
        "live_kupiec_p_80": stats.chi2.sf(-2 * (log_null - log_fit), 1),
    }


def test_weekend_run_is_a_no_op_once_the_store_is_current(settings):
    saturday = dt.date(2017, 11, 4)
    first = daily_pipeline(tickers=["MSFT"], as_of=saturday)[0]
    assert first.decision is not Decision.skipped, "an empty store catches up even on a weekend"
    outcome = daily_pipeline(tickers=["MSFT"], as_of=saturday)[0]
    assert outcome.decision is Decision.skipped and "market closed on 2017-11-04" in outcome.reason
    assert outcome.champion_version is not None, "the no-op keeps what status shows"
