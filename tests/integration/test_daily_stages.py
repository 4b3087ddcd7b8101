"""pipeline.daily.run_ticker without Prefect: every branch of a ticker's day on a real store, a real MLflow SQLite
registry and a real (tiny) training, plus what the record in MLflow settles and rebuilds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common import codec
from pipeline.common.outcome import Decision
from pipeline.common.settings import OnDegraded
from pipeline.common.symbols import registered_model_name
from pipeline.daily import DailyContext, Evaluation, Stages, evaluate, run_ticker
from pipeline.data.forecast_log import ServedForecast
from pipeline.evaluation.promotion import CHOSEN_INTERVALS, IntervalServing, Verdict
from pipeline.registry import journal
from pipeline.registry.connection import TrackingUnavailable
from pipeline.registry.tracking import Tracker
from pipeline.status import ticker_status
from tests.support import (
    MSFT_LAST_SESSION,
    FailingOnce,
    lost_connection,
    msft_exports,
    server_error,
    tiny_config,
    tiny_daily_context,
)

NAME = registered_model_name("MSFT")
AS_OF = MSFT_LAST_SESSION


@pytest.fixture
def ctx(tmp_path, monkeypatch) -> DailyContext:
    return tiny_daily_context(tmp_path, msft_exports(tmp_path / "exports"), today=AS_OF)


def forced(decision: Decision) -> Stages:
    """Stages whose evaluation scores for real but decides `decision`: run_ticker's branching, tested on its own
    (the rule itself is pipeline.evaluation.evidence's, tested with constructed losses)."""

    def decided(tracker, run_id, **kwargs) -> Evaluation:
        real = evaluate(tracker, run_id, **kwargs)
        verdict = Verdict(decision, f"forced {decision.value} for the test", real.verdict.checks, real.verdict.policy)
        return dataclasses.replace(real, verdict=verdict)

    return Stages(evaluate=decided)


def tracker_of(ctx) -> Tracker:
    return ctx.connect()


def champion_version(ctx) -> str | None:
    champion = tracker_of(ctx).champion("MSFT")
    return champion.version if champion else None


def runs(ctx, status: str | None = None):
    tracker = tracker_of(ctx)
    extra = f"attributes.status = '{status}'" if status else ""
    return tracker.runs("MSFT", filters=extra)


# -- the branches ---------------------------------------------------------------------------------


def test_promoted_registers_the_challenger_crowns_it_and_records_the_decision(ctx):
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.promoted))
    assert outcome.decision is Decision.promoted and outcome.succeeded
    assert (outcome.model_version, outcome.champion_version, outcome.champion_kind) == ("2", "2", "lstm")
    tracker = tracker_of(ctx)
    run = tracker.client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "MSFT 2017-11-10 #1"
    assert run.data.tags["decision"] == "promoted" and run.data.tags["model_version"] == "2"
    assert run.data.tags["mlflow.note.content"].startswith("**Promoted**")
    assert [int(m.step) for m in tracker.client.get_metric_history(run.info.run_id, "loss")] == [0]
    assert journal.read(ctx.reports_dir, "MSFT") == outcome


def test_a_promotion_serving_the_chosen_method_tags_the_version_says_so_and_reports_what_serves(ctx):
    def decided(tracker, run_id, **kwargs) -> Evaluation:
        real = evaluate(tracker, run_id, **kwargs)
        assert real.scores.chosen_metrics, "the chosen method is scored on the test sessions whatever the champion"
        verdict = Verdict(Decision.promoted, "forced promoted for the test", real.verdict.checks, real.verdict.policy)
        serving = IntervalServing(CHOSEN_INTERVALS, "the chosen method, forced for the test")
        return dataclasses.replace(real, verdict=verdict, serving=serving)

    # Three years: the interval choice needs 500 sessions before the test ones.
    ctx = dataclasses.replace(ctx, config=tiny_config(history_years=3.0))
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=Stages(evaluate=decided))
    champion = tracker_of(ctx).champion("MSFT")
    assert champion is not None and champion.kind == "lstm" and champion.served_intervals == CHOSEN_INTERVALS
    assert champion.serves_chosen_intervals
    run = tracker_of(ctx).client.get_run(outcome.run_id)
    assert "Served intervals: the chosen method, forced for the test." in run.data.tags["mlflow.note.content"]
    saved = tracker_of(ctx).client.download_artifacts(outcome.run_id, "decision/decision.json", str(ctx.reports_dir))
    chosen = json.loads(Path(saved).read_text())["served_intervals"]["test"]
    assert outcome.served_coverage_80 == chosen["coverage_80"], "status shows what serves: the chosen method's"


def test_the_served_forecast_is_kept_and_scored_once_when_its_session_comes_however_often_the_day_reruns(ctx):
    kept = forced(Decision.kept)
    first = run_ticker("MSFT", ctx, as_of=dt.date(2017, 11, 9), stages=kept)
    assert first.live_sessions == 0, "nothing served yet"
    assert ctx.forecast_log.read("MSFT")["target"].dt.date.tolist() == [dt.date(2017, 11, 10)]
    second = run_ticker("MSFT", ctx, as_of=AS_OF, stages=kept)
    again = run_ticker("MSFT", ctx, as_of=AS_OF, stages=kept, force=True)
    log = ctx.forecast_log.read("MSFT")
    assert log["target"].dt.date.tolist() == [dt.date(2017, 11, 10), dt.date(2017, 11, 13)]  # Friday -> Monday
    assert second.live_sessions == again.live_sessions == 1, "a re-run scores nothing twice"

    # The same figures from the store's forecast and close, by hand, in the outcome, the run's metrics and status.
    served = log.iloc[0]
    prices = ctx.store.read("MSFT")
    actual = float(prices.loc[prices["Date"] == pd.Timestamp(AS_OF), "Close"].iloc[0])
    inside = float(served["lower_80"] <= actual <= served["upper_80"])
    assert served["point"] == served["last_close"], "the naive v1 serves tomorrow = today"
    assert second.live_coverage_80_60 == inside and second.live_u2_60 == pytest.approx(1.0)
    metrics = tracker_of(ctx).client.get_run(second.run_id).data.metrics
    assert metrics["live_sessions"] == 1 and metrics["live_coverage_80_60"] == inside
    champion = tracker_of(ctx).champion("MSFT")
    row = ticker_status("MSFT", ctx.store, again, champion, ctx.quarantine_dir, forecasts=ctx.forecast_log)
    assert (row["live_sessions"], row["live_coverage_80_60"]) == (1, inside)
    # The day's run keeps what it served: the figures of the file's row as metrics, the target and version as tags.
    run = tracker_of(ctx).client.get_run(first.run_id).data
    assert run.metrics["served_forecast_close"] == served["point"]
    assert run.metrics["served_forecast_upper_95"] == served["upper_95"]
    assert run.tags["served_forecast_date"] == "2017-11-10" and run.tags["served_forecast_version"] == "1"
    assert run.tags["served_forecast_interval_method"] == served["interval_method"]


def plant_missed_forecasts(ctx, version: str, sessions: int = 60) -> None:
    """`sessions` matured forecasts of `version`, every one of whose intervals missed: coverage 0, Kupiec p ~ 0."""
    prices = ctx.store.read("MSFT")
    for i in range(len(prices) - sessions - 1, len(prices) - 1):
        last, target = prices.iloc[i], prices.iloc[i + 1]
        far = 2 * float(target["Close"])
        ctx.forecast_log.record(
            "MSFT",
            ServedForecast(
                last["Date"].date(),
                target["Date"].date(),
                version,
                float(last["Close"]),
                float(last["Close"]),
                far,
                far + 1,
                far,
                far + 2,
                "planted",
            ),
            "planted",
        )


def test_a_champion_gone_bad_on_its_live_record_is_tagged_then_replaced_before_the_day_is_judged(ctx):
    promoted = run_ticker("MSFT", ctx, as_of=dt.date(2017, 11, 9), stages=forced(Decision.promoted))
    assert promoted.model_version == "2"
    plant_missed_forecasts(ctx, "2")
    tracker = tracker_of(ctx)

    # With STOCKPIPE_ON_DEGRADED=alert the version is only tagged.
    alerted = run_ticker(
        "MSFT", dataclasses.replace(ctx, on_degraded=OnDegraded.alert), as_of=AS_OF, stages=forced(Decision.kept)
    )
    assert (
        champion_version(ctx) == "2" and alerted.reason.startswith("v2 degraded (") and "still serves" in alerted.reason
    )
    degraded = tracker.client.get_model_version(NAME, "2").tags["degraded"]
    assert degraded.startswith("live 80% coverage") and "Kupiec p 0.0000" in degraded

    # By default (fallback), the same day run again replaces it before the challenger is judged.
    day = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept), force=True)
    assert champion_version(ctx) == "1", "fell back to the previous champion, the baseline"
    # 59 planted misses and the day-one forecast v2 really served (inside or not) make the last 60.
    assert day.reason.startswith("v2 degraded (live 80% coverage") and "fell back to v1" in day.reason
    assert day.live_coverage_80_60 <= 1 / 60 and day.live_sessions == 61
    run = tracker.client.get_run(day.run_id)
    assert run.data.tags["champion_before"] == "v1 (naive)", "the challenger is judged against what serves now"
    assert run.data.tags["fallback"].startswith("v2 degraded")
    assert run.data.metrics["live_coverage_80_60"] == day.live_coverage_80_60
    assert tracker.client.get_registered_model(NAME).tags["last_fallback"].startswith("v2 -> v1: live 80% coverage")
    assert "(the daily run on data to 2017-11-10)" in tracker.client.get_registered_model(NAME).tags["last_fallback"]
    assert "Degradation rule: **v2 degraded (live 80% coverage" in run.data.tags["mlflow.note.content"]
    assert tracker.rollback("MSFT", "the fallback was a false alarm") == ("1", "2"), "a fallback is undone like one"


def test_kept_registers_nothing_and_leaves_the_champion(ctx):
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
    assert outcome.decision is Decision.kept and outcome.model_version is None
    assert champion_version(ctx) == "1", "the naive baseline stays champion"
    assert [v.version for v in tracker_of(ctx).versions("MSFT")] == [1], "losing challengers are not registered"
    (logged,) = tracker_of(ctx).client.search_logged_models(
        [tracker_of(ctx).experiment_id], filter_string=f"source_run_id = '{outcome.run_id}'"
    )
    assert logged.tags["model_kind"] == "lstm", "the challenger stays a logged model linked to its run"


def test_same_data_and_settings_skip_and_force_retrains_as_attempt_two(ctx):
    first = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
    again = run_ticker("MSFT", ctx, as_of=AS_OF)
    assert again.decision is Decision.skipped and "no new data since 2017-11-10" in again.reason
    assert again.challenger_test_rmse == first.challenger_test_rmse and again.run_id == first.run_id
    assert len(runs(ctx)) == 1, "a skip records nothing"
    forced_again = run_ticker("MSFT", ctx, as_of=AS_OF, force=True, stages=forced(Decision.kept))
    assert tracker_of(ctx).client.get_run(forced_again.run_id).info.run_name == "MSFT 2017-11-10 #2"


def test_a_closed_market_with_a_current_store_is_a_quick_skip(ctx):
    run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
    saturday = AS_OF + dt.timedelta(days=1)
    outcome = run_ticker("MSFT", ctx, as_of=saturday)
    assert (
        outcome.decision is Decision.skipped
        and outcome.reason == f"market closed on {saturday} (XNYS): no new session to fetch"
    )
    assert outcome.champion_version == "1"


def test_a_batch_that_breaks_the_contract_is_quarantined_and_changes_nothing(ctx, tmp_path):
    run_ticker("MSFT", ctx, as_of=dt.date(2017, 10, 31), stages=forced(Decision.kept))
    stored = ctx.store.path("MSFT").read_bytes()
    exports = tmp_path / "exports" / "MSFT.csv"
    prices = pd.read_csv(exports)
    prices.loc[prices["Date"] == "2017-11-07", "High"] = 1.0  # High below Low
    prices.to_csv(exports, index=False)
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF)
    assert outcome.decision is Decision.failed
    assert "failed the data contract" in outcome.reason and "2017-11-07" in outcome.reason
    assert ctx.store.path("MSFT").read_bytes() == stored
    assert champion_version(ctx) == "1" and len(tracker_of(ctx).versions("MSFT")) == 1
    (folder,) = (ctx.quarantine_dir / "MSFT").iterdir()
    assert (folder / "MSFT.csv").read_bytes() == exports.read_bytes(), "the bytes exactly as received"
    failed = runs(ctx, "FAILED")
    assert len(failed) == 1 and failed[0].data.tags["decision"] == "failed"
    artifacts = tracker_of(ctx).client.list_artifacts(failed[0].info.run_id, "validation")
    assert "validation/report.html" in {a.path for a in artifacts}


def test_stale_data_is_refused_before_training(ctx):
    outcome = run_ticker("MSFT", ctx, as_of=dt.date(2017, 11, 24))
    assert outcome.decision is Decision.failed
    # 13-17, 20-22 and 24 November: Thanksgiving (the 23rd) is no session.
    assert outcome.reason == (
        "StaleData: stale data: last price 2017-11-10, 9 XNYS sessions before as-of 2017-11-24 "
        "(at most 3 allowed: STOCKPIPE_MAX_STALENESS_SESSIONS)"
    )
    assert tracker_of(ctx).versions("MSFT") == [], "nothing trained, nothing registered"


@pytest.mark.parametrize("error", ["refused", "server lost"])
def test_a_failure_after_registration_leaves_no_version_claiming_a_promotion(ctx, error):
    """Refused: the process lives and settles its own run at once. Lost: the run stays RUNNING (nothing can reach
    the server) and the next run settles it. Either way the version ends up tagged as never applied."""
    run_ticker("MSFT", ctx, as_of=dt.date(2017, 10, 31), stages=forced(Decision.kept))  # baseline in place
    tracker = tracker_of(ctx)
    failure = RuntimeError("alias update refused") if error == "refused" else lost_connection("set alias")
    FailingOnce(tracker, "make_champion", failure)
    outcome = run_ticker(
        "MSFT", dataclasses.replace(ctx, connect=lambda: tracker), as_of=AS_OF, stages=forced(Decision.promoted)
    )
    assert outcome.decision is Decision.failed and champion_version(ctx) == "1"
    run = tracker.client.get_run(outcome.run_id)
    if error == "server lost":
        assert run.info.status == "RUNNING" and "the next run settles" in outcome.reason
        # The data to 10 November was never decided on: the next run settles the cut-off run, then decides again.
        run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
        run = tracker.client.get_run(outcome.run_id)
    assert run.info.status == "FAILED" and run.data.tags["decision"] == "failed"
    version = tracker.client.get_model_version(NAME, "2")
    assert version.tags["decision"] == "failed" and version.tags["reason"].startswith("never applied")
    assert champion_version(ctx) == "1"


def test_a_run_cut_off_mid_way_is_settled_before_the_next_one(ctx):
    """A kill leaves the run RUNNING (nothing could end it); the next run marks it FAILED, naming the stage."""
    tracker = tracker_of(ctx)
    run_id = tracker.start_run(
        "MSFT 2017-11-10 #1", {"ticker": "MSFT", "role": "daily", "day": "2017-11-10", "stage": "training"}
    )
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
    assert outcome.succeeded
    cut = tracker.client.get_run(run_id)
    assert cut.info.status == "FAILED" and cut.data.tags["decision"] == "failed"
    assert cut.data.tags["reason"].startswith("cut off while training")
    assert tracker.client.get_run(outcome.run_id).info.run_name == "MSFT 2017-11-10 #2"


def test_a_transient_error_registers_no_baseline_and_moves_no_alias(ctx):
    run_ticker("MSFT", ctx, as_of=dt.date(2017, 10, 31), stages=forced(Decision.promoted))
    assert champion_version(ctx) == "2"
    tracker = tracker_of(ctx)
    # The registry read fails the way a tracking server behind a proxy answers 503 while restarting.
    FailingOnce(tracker.client, "get_registered_model", server_error("get_registered_model"))
    outcome = run_ticker(
        "MSFT", dataclasses.replace(ctx, connect=lambda: tracker), as_of=AS_OF, stages=forced(Decision.promoted)
    )
    assert outcome.decision is Decision.failed and "TrackingUnavailable" in outcome.reason
    assert [v.version for v in tracker.versions("MSFT")] == [1, 2], "no new baseline, no new version"
    assert champion_version(ctx) == "2"
    previous = tracker.client.get_model_version_by_alias(NAME, "previous")
    assert str(previous.version) == "1", "no alias moved"


def test_a_lost_connection_is_retried_by_the_stage_wrapper_and_resumes_the_same_run(ctx):
    """What Prefect's retry does: the publish stage is called again with the same run; nothing is recorded twice."""
    from pipeline.daily import publish

    attempts = []

    def flaky_publish(tracker, run_id, **kwargs):
        attempts.append(run_id)
        if len(attempts) == 1:
            FailingOnce(tracker, "register", lost_connection("create_model_version"))
            with pytest.raises(TrackingUnavailable):
                publish(tracker, run_id, **kwargs)
        return publish(tracker, run_id, **kwargs)

    stages = dataclasses.replace(forced(Decision.promoted), publish=flaky_publish)
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=stages)
    assert outcome.decision is Decision.promoted and attempts == [outcome.run_id]
    tracker = tracker_of(ctx)
    assert [v.version for v in tracker.versions("MSFT")] == [1, 2]
    assert len(tracker.client.get_metric_history(outcome.run_id, "challenger_rmse")) == 1
    models = tracker.client.search_logged_models(
        [tracker.experiment_id], filter_string=f"source_run_id = '{outcome.run_id}'"
    )
    assert len(models) == 1, "the challenger is logged once"


# -- MLflow is the record; the local file is a cache ---------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "empty", "torn", "another ticker's"])
def test_a_lost_or_broken_cache_is_rebuilt_from_mlflow(ctx, damage):
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.promoted))
    path = journal.path(ctx.reports_dir, "MSFT")
    if damage == "deleted":
        path.unlink()
    elif damage == "empty":
        path.write_text("")
    elif damage == "torn":
        path.write_text(path.read_text()[:40])
    else:
        path.write_text(json.dumps({**codec.dump(outcome), "ticker": "GSPC"}))
    from pipeline.registry.recording import rebuild_outcome

    rebuilt = journal.last_outcome(ctx.reports_dir, "MSFT", lambda: rebuild_outcome(tracker_of(ctx), "MSFT"))
    for field in (
        "decision",
        "reason",
        "run_id",
        "data_end",
        "data_digest",
        "settings_digest",
        "champion_version",
        "challenger_test_rmse",
        "champion_test_rmse",
        "naive_test_rmse",
        "u2",
        "coverage_80",
    ):
        assert (
            getattr(rebuilt, field) == pytest.approx(getattr(outcome, field))
            if isinstance(getattr(outcome, field), float)
            else getattr(rebuilt, field) == getattr(outcome, field)
        ), field
    assert journal.read(ctx.reports_dir, "MSFT") == rebuilt, "and written back"
    # The skip check works from the rebuilt record as from the original.
    assert run_ticker("MSFT", ctx, as_of=AS_OF).decision is Decision.skipped


def test_a_broken_store_file_is_that_tickers_failure_with_how_to_recover(ctx):
    run_ticker("MSFT", ctx, as_of=AS_OF, stages=forced(Decision.kept))
    ctx.store.path("MSFT").write_bytes(b"PAR1 torn")
    outcome = run_ticker("MSFT", ctx, as_of=AS_OF)
    assert outcome.decision is Decision.failed
    assert "MSFT.parquet is unreadable" in outcome.reason and "move it aside" in outcome.reason
