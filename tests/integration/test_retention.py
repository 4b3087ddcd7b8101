"""Retention on a real MLflow SQLite store and local artifact root: real (tiny) daily runs with
STOCKPIPE_KEEP_LOST_RUNS=1, then the lost runs' files are gone while what the UI compares stays, the champion still
loads and forecasts, a second prune changes nothing, and a location edited to point outside the root is refused."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import sqlite3
from pathlib import Path

import mlflow
import pytest

from pipeline.common.files import tree_size
from pipeline.common.outcome import Decision
from pipeline.common.settings import Settings
from pipeline.daily import DailyContext, Evaluation, Stages, evaluate, run_ticker
from pipeline.evaluation.promotion import Verdict
from pipeline.models.forecasters import to_model_input
from pipeline.registry.retention import FILES_PRUNED_TAG, RunRetention, prune_ticker
from pipeline.registry.tracking import Tracker
from pipeline.serving import forecast_next
from pipeline.state_size import home_bytes, ticker_bytes
from tests.support import msft_exports, tiny_daily_context

pytestmark = pytest.mark.integration

# A promotion, then two lost challengers: with one lost run kept, the older one's files go.
DAYS = [dt.date(2017, 11, 8), dt.date(2017, 11, 9), dt.date(2017, 11, 10)]


def forced(decision: Decision) -> Stages:
    """Real scores, a forced decision: a promotion the first day, lost challengers after, whatever tiny models do."""

    def decided(tracker, run_id, **kwargs) -> Evaluation:
        real = evaluate(tracker, run_id, **kwargs)
        verdict = Verdict(decision, f"forced {decision.value} for the test", real.verdict.checks, real.verdict.policy)
        return dataclasses.replace(real, verdict=verdict)

    return Stages(evaluate=decided)


@pytest.fixture
def settings(tmp_path, monkeypatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("STOCKPIPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("STOCKPIPE_KEEP_LOST_RUNS", "1")
    return Settings(home=tmp_path / "state", experiment_name="stockpipe-retention")


@pytest.fixture
def ctx(settings, tmp_path) -> DailyContext:
    return tiny_daily_context(
        settings.home,
        msft_exports(tmp_path / "exports"),
        today=DAYS[-1],
        experiment=settings.experiment_name,
        lost_runs=RunRetention.from_settings(settings),
    )


def files_of(path_or_uri: str) -> list[str]:
    folder = Path(path_or_uri.removeprefix("file://"))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def logged_model_of(tracker: Tracker, run_id: str):
    (model,) = tracker.client.search_logged_models([tracker.experiment_id], f"source_run_id = '{run_id}'")
    return model


def recorded(tracker: Tracker, run_id: str) -> tuple:
    """What the UI compares: params, metrics (with their histories), tags but retention's own, the description."""
    run = tracker.client.get_run(run_id)
    tags = {k: v for k, v in run.data.tags.items() if k != FILES_PRUNED_TAG}
    history = [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, "challenger_rmse_by_block")]
    return run.data.params, run.data.metrics, tags, history


def test_lost_runs_lose_their_files_past_the_retention_and_keep_what_the_ui_compares(ctx, settings, caplog):
    assert ctx.lost_runs.keep_lost_runs == 1, "STOCKPIPE_KEEP_LOST_RUNS reaches the day's context"
    outcomes = [run_ticker("MSFT", ctx, as_of=DAYS[0], stages=forced(Decision.promoted))]
    tracker = ctx.connect()
    snapshots = {}
    for day in DAYS[1:]:
        outcome = run_ticker("MSFT", ctx, as_of=day, stages=forced(Decision.kept))
        assert outcome.decision is Decision.kept and "retention" in outcome.timings
        snapshots[outcome.run_id] = recorded(tracker, outcome.run_id)  # before a later day prunes it
        outcomes.append(outcome)
    promoted, *lost = outcomes
    *pruned, newest = lost
    assert len(pruned) == 1

    for outcome in pruned:
        run = tracker.client.get_run(outcome.run_id)
        model = logged_model_of(tracker, outcome.run_id)
        assert files_of(run.info.artifact_uri) == [] and files_of(model.artifact_location) == []
        assert recorded(tracker, outcome.run_id) == snapshots[outcome.run_id], "params, metrics, tags, description"
        assert "lost challenger (beyond the last 1 lost runs)" in run.data.tags[FILES_PRUNED_TAG]
        assert model.tags[FILES_PRUNED_TAG] == run.data.tags[FILES_PRUNED_TAG], "the logged model says so too"
    newest_run = tracker.client.get_run(newest.run_id)
    assert {"plots/forecast.png", "decision/decision.json"} <= set(files_of(newest_run.info.artifact_uri))
    assert "artifacts/model.keras" in files_of(logged_model_of(tracker, newest.run_id).artifact_location)
    assert FILES_PRUNED_TAG not in newest_run.data.tags

    # Everything of every registered version stays: the promoted run's files, and both versions load and forecast.
    assert "plots/forecast.png" in files_of(tracker.client.get_run(promoted.run_id).info.artifact_uri)
    history = ctx.store.read("MSFT")
    champion = tracker.champion("MSFT")
    assert champion is not None and champion.version == promoted.model_version == "2"
    forecast = forecast_next("MSFT", tracker.load(champion, "MSFT"), history, champion.version)  # digests checked
    assert forecast.forecast_date == "2017-11-13" and forecast.lower_95 < forecast.forecast_close < forecast.upper_95
    for version in tracker.versions("MSFT"):  # the baseline too, through MLflow's own loader
        predicted = mlflow.pyfunc.load_model(version.source).predict(to_model_input(history.tail(300)))
        assert len(predicted) and predicted["forecast_close"].notna().all()

    # A second prune finds nothing to do and changes nothing.
    files_before, tags_before = tree_size(settings.artifacts_dir), recorded(tracker, pruned[0].run_id)
    again = prune_ticker(tracker, "MSFT", 1, 30)
    assert (again.runs, again.refused, again.failed, again.bytes_freed) == ([], [], [], 0)
    off = prune_ticker(tracker, "MSFT", 10**6, 10**6)  # "keep them all": more than MLflow serves in one page
    assert (off.runs, off.failed) == ([], [])
    assert tree_size(settings.artifacts_dir) == files_before and recorded(tracker, pruned[0].run_id) == tags_before

    # What the ticker holds, by kind: the lost runs' files no longer count, the rest of the home does.
    held = ticker_bytes(settings, "MSFT", tracker)
    whole = home_bytes(settings)
    assert held["logged_models"] == whole["logged_models"] < 3 * 1024**2
    assert held["data_docs"] < 300_000 and held["mlflow_db"] == whole["mlflow_db"]

    # A logged model's location edited to point outside the root is refused and logged; nothing of the run goes.
    outside = settings.home.parent / "elsewhere" / logged_model_of(tracker, newest.run_id).model_id
    outside.mkdir(parents=True)
    (outside / "precious.txt").write_text("not retention's to delete")
    with sqlite3.connect(settings.home / "mlflow.db") as db:
        db.execute(
            "UPDATE logged_models SET artifact_location = ? WHERE source_run_id = ?", (outside.as_uri(), newest.run_id)
        )
    with caplog.at_level(logging.WARNING, logger="pipeline.registry.retention"):
        refused = prune_ticker(tracker, "MSFT", 0, 30)
    assert refused.refused == [newest.run_id] and refused.runs == []
    assert (outside / "precious.txt").is_file() and "plots/forecast.png" in files_of(newest_run.info.artifact_uri)
    assert "is not" in caplog.text and newest.run_id in caplog.text
