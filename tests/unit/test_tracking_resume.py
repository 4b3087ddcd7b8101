"""Tracking that the server cuts off part-way: retries resume the same run, nothing is registered twice or half.

A real MLflow store on SQLite and a real (tiny) trained challenger; the lost connection is raised by the injected
tracker at one chosen call, as requests raises it when a tracking server goes away. The tracking server really
going away is tests/integration/test_production_stack.py's job.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket

import pandas as pd
import pytest
import requests
from mlflow.exceptions import MlflowException

from pipeline import steps
from pipeline.promotion import CHAMPION_ALIAS, FAILED, KEPT, PREVIOUS_ALIAS, PROMOTED
from pipeline.settings import BUNDLED_SNAPSHOTS, TrainingConfig
from pipeline.sources import CsvSource
from pipeline.store import digest
from pipeline.symbols import registered_model_name
from pipeline.tracking import Tracker, TrackingUnavailable, tracking_errors, unreachable_reason

TICKER = "MSFT"
MODEL = registered_model_name(TICKER)
CONFIG = TrainingConfig(window=10, units=4, epochs=2, batch_size=32, history_years=2.0, patience=2)


@pytest.fixture(scope="module")
def admitted() -> steps.Admitted:
    history = CsvSource(BUNDLED_SNAPSHOTS).fetch(TICKER, dt.date(2015, 11, 1), dt.date(2017, 11, 10))
    return steps.Admitted(TICKER, history, len(history), digest(history))


@pytest.fixture(scope="module")
def trained(admitted) -> steps.Challenger:
    return steps.train_challenger(admitted.history, CONFIG, TICKER)


@pytest.fixture
def challenger(trained) -> steps.Challenger:
    """The trained network under a fresh id: each test tracks its own challenger."""
    return dataclasses.replace(trained, challenger_id=steps.Challenger.__dataclass_fields__["challenger_id"].default_factory())


class FlakyTracker(Tracker):
    """Loses the connection once, at the chosen method; optionally serves a champion that forecasts badly."""

    def __init__(self, *args, fail_at: str | None = None, weak_champion: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.weak_champion = weak_champion
        if fail_at:
            setattr(self, fail_at, self._lost_once(getattr(self, fail_at), fail_at))

    def _lost_once(self, method, name: str):
        def call(*args, **kwargs):
            setattr(self, name, method)  # the connection is back for the next call
            raise MlflowException(f"API request to http://tracking:5000 failed ({name})") from (
                requests.ConnectionError("[Errno 111] Connection refused"))

        return call

    def load(self, model_uri):
        model = super().load(model_uri)
        return WeakChampion(model) if self.weak_champion else model


class WeakChampion:
    """The real champion's forecasts, 20% too high: any trained challenger beats it, so the decision is promote."""

    def __init__(self, model):
        self.model = model

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = self.model.predict(frame)
        return out.assign(forecast_close=out["forecast_close"] * 1.2)


@pytest.fixture
def store_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def tracker_for(store_uri: str, tmp_path, **flaky) -> FlakyTracker:
    return FlakyTracker(store_uri, "stockpipe-test", tmp_path / "artifacts", **flaky)


def track(tracker: Tracker, admitted, challenger) -> steps.TickerOutcome:
    return steps.track_and_promote(tracker, admitted, challenger, config=CONFIG, margin=0.0, source="snapshot",
                                   run_tags={"prefect_flow_run_id": "test"})


def daily_runs(tracker: Tracker):
    return tracker.client.search_runs([tracker.experiment_id], filter_string="tags.role = 'daily'")


def versions(tracker: Tracker):
    return sorted(tracker.client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))


def champion(tracker: Tracker) -> str:
    return str(tracker.client.get_model_version_by_alias(MODEL, CHAMPION_ALIAS).version)


# -- recognising a lost server ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_server_that_is_not_there_is_reported_as_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingUnavailable) as raised:
        with tracking_errors(uri, "connecting"):
            Tracker(uri, "stockpipe-test", tmp_path)
    message = str(raised.value)
    assert message.startswith(f"MLflow tracking server {uri} unreachable while connecting: ")
    assert "Connection refused" in message and len(message) < 200, message


def test_errors_the_server_answered_are_not_unavailability(store_uri, tmp_path):
    tracker = Tracker(store_uri, "stockpipe-test", tmp_path)
    with pytest.raises(MlflowException) as raised:
        with tracking_errors(store_uri, "reading"):
            tracker.client.get_registered_model("no-such-model")
    assert not isinstance(raised.value, TrackingUnavailable)
    assert unreachable_reason(ValueError("bad input")) is None
    assert unreachable_reason(requests.exceptions.RetryError("too many 503 error responses")) == (
        "too many 503 error responses")


# -- resuming ---------------------------------------------------------------------------------------


def test_an_uninterrupted_run_records_its_challenger_id(store_uri, tmp_path, admitted, challenger):
    tracker = tracker_for(store_uri, tmp_path)
    outcome = track(tracker, admitted, challenger)
    (run,) = daily_runs(tracker)
    assert run.data.tags["challenger_id"] == challenger.challenger_id == outcome.challenger_id
    assert tracker.challenger_run(TICKER, challenger.challenger_id).info.run_id == run.info.run_id
    assert tracker.version_of_run(TICKER, run.info.run_id).version == int(outcome.model_version)


@pytest.mark.parametrize("lost_at", ["log_dataset", "log_lstm", "log_text", "register_challenger"])
def test_a_retry_after_a_loss_before_registration_resumes_the_same_run(store_uri, tmp_path, admitted, challenger,
                                                                       lost_at):
    tracker = tracker_for(store_uri, tmp_path, fail_at=lost_at)
    with pytest.raises(MlflowException):
        track(tracker, admitted, challenger)
    assert [v.tags["model_kind"] for v in versions(tracker)] == ["naive"], "nothing registered without its decision"
    assert champion(tracker) == "1"

    outcome = track(tracker, admitted, challenger)  # the flow's retry: same challenger, server back
    (run,) = daily_runs(tracker)
    assert run.info.status == "FINISHED" and run.info.run_id == outcome.run_id
    assert [v.tags["model_kind"] for v in versions(tracker)] == ["naive", "lstm"]
    history = tracker.client.get_metric_history(run.info.run_id, "epoch_loss")
    assert len(history) == challenger.epochs_run, "metrics logged once"
    assert run.data.tags["decision"] == outcome.decision


def test_a_loss_between_registration_and_promotion_is_resumed_without_a_second_version(
        store_uri, tmp_path, admitted, challenger):
    tracker = tracker_for(store_uri, tmp_path, fail_at="promote", weak_champion=True)
    with pytest.raises(MlflowException):
        track(tracker, admitted, challenger)
    (lstm,) = versions(tracker)[1:]
    assert lstm.tags["decision"] == PROMOTED and champion(tracker) == "1", "registered, not yet applied"

    outcome = track(tracker, admitted, challenger)
    assert (outcome.decision, outcome.model_version, outcome.champion_version) == (PROMOTED, "2", "2")
    assert len(versions(tracker)) == 2
    assert champion(tracker) == "2"
    assert str(tracker.client.get_model_version_by_alias(MODEL, PREVIOUS_ALIAS).version) == "1"


def test_a_promotion_applied_before_the_loss_is_not_re_decided_against_itself(store_uri, tmp_path, admitted,
                                                                              challenger):
    tracker = tracker_for(store_uri, tmp_path, fail_at="set_tags", weak_champion=True)
    with pytest.raises(MlflowException):
        track(tracker, admitted, challenger)
    assert champion(tracker) == "2"

    outcome = track(tracker, admitted, challenger)
    # Re-deciding now would compare the challenger with itself (a tie) and report "kept".
    assert outcome.decision == PROMOTED and outcome.champion_version == "2"
    (run,) = daily_runs(tracker)
    assert (run.info.status, run.data.tags["decision"], run.data.tags["model_version"]) == ("FINISHED", PROMOTED, "2")


# -- settling what a run that gave up left behind ---------------------------------------------------


def test_settling_a_run_cut_off_before_promotion_marks_it_failed_and_its_version_never_applied(
        store_uri, tmp_path, admitted, challenger):
    tracker = tracker_for(store_uri, tmp_path, fail_at="promote", weak_champion=True)
    with pytest.raises(MlflowException):
        track(tracker, admitted, challenger)

    done = steps.close_interrupted(tracker, TICKER, challenger.challenger_id)
    assert "marked FAILED" in done and "v2 marked never applied" in done
    (run,) = daily_runs(tracker)
    assert (run.info.status, run.data.tags["decision"]) == ("FAILED", FAILED)
    lstm = versions(tracker)[1]
    assert lstm.tags["decision"] == FAILED
    assert "was never applied and the champion stayed v1" in lstm.tags["decision_reason"]
    assert champion(tracker) == "1"
    assert steps.close_interrupted(tracker, TICKER, challenger.challenger_id) is None, "settled once"


def test_settling_a_run_cut_off_after_promotion_finishes_it(store_uri, tmp_path, admitted, challenger):
    tracker = tracker_for(store_uri, tmp_path, fail_at="set_tags", weak_champion=True)
    with pytest.raises(MlflowException):
        track(tracker, admitted, challenger)

    assert "finished" in steps.close_interrupted(tracker, TICKER, challenger.challenger_id)
    (run,) = daily_runs(tracker)
    assert (run.info.status, run.data.tags["decision"], run.data.tags["model_version"]) == ("FINISHED", PROMOTED, "2")
    assert champion(tracker) == "2"


def test_settling_leaves_finished_runs_and_unknown_challengers_alone(store_uri, tmp_path, admitted, challenger):
    tracker = tracker_for(store_uri, tmp_path)
    outcome = track(tracker, admitted, challenger)
    assert outcome.decision in (PROMOTED, KEPT)
    assert steps.close_interrupted(tracker, TICKER, challenger.challenger_id) is None
    assert steps.close_interrupted(tracker, TICKER, "0" * 32) is None
    (run,) = daily_runs(tracker)
    assert run.info.status == "FINISHED"
