"""What a ticker-day's MLflow run holds, in one naming scheme (documented in the README's "MLflow run contents").

Tags identify and filter (ticker, day, attempt, decision); params are the inputs that shaped the model; metrics are
what was measured, named `<model>_<measure>` for the three models scored on the same test sessions (challenger,
champion, naive) and plainly for what compares them (u2, relative_gain, dm_stat, dm_pvalue, blocks_won). Nothing
is logged under two names. Every function here may run again on the same run (a retry after a lost connection):
each write is either idempotent or skipped when already done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Run

from pipeline.common import codec
from pipeline.common.outcome import Decision, TickerOutcome
from pipeline.common.redact import excerpt
from pipeline.common.settings import TrainingConfig
from pipeline.data.ingest import Admitted
from pipeline.evaluation.evidence import CHALLENGER, CHAMPION, NAIVE
from pipeline.evaluation.plots import forecast_figure
from pipeline.evaluation.promotion import Verdict
from pipeline.evaluation.scoring import Scores
from pipeline.models.forecasters import LstmForecaster, min_input_rows
from pipeline.models.training import Challenger
from pipeline.registry.logged_models import LoggedForecaster
from pipeline.registry.tracking import DESCRIPTION_TAG, Champion, Tracker

log = logging.getLogger(__name__)

# Tags
TICKER, ROLE, DAY, ATTEMPT, AS_OF, SOURCE = "ticker", "role", "day", "attempt", "as_of", "source"
DECISION, REASON, STAGE, MODEL_VERSION = "decision", "reason", "stage", "model_version"
DATA_DIGEST, SETTINGS_DIGEST, CHAMPION_BEFORE = "data_digest", "settings_digest", "champion_before"
# How the source derived the stored rows from the file (an `Adj Close` applied to Open, High, Low and Close).
SOURCE_NOTES = "source_notes"
HISTORY_REPLACED = "history_replaced"
# Set when the day began by replacing (or only marking) a champion gone bad on its live record.
FALLBACK = "fallback"
DAILY = "daily"

# Stages a run passes through, tagged as it goes, so a run cut off by a kill says where.
TRAINING, SCORING, RECORDING, APPLYING, DONE = "training", "scoring", "recording", "applying", "done"

# Params
SERVED_INTERVAL_METHOD = "served_interval_method"

# Artifacts
VALIDATION_HTML = "validation/report.html"
VALIDATION_JSON = "validation/result.json"
FORECAST_PLOT = "plots/forecast.png"
DECISION_JSON = "decision/decision.json"

# Inputs the Keras callback logs itself (as optimizer_learning_rate), so they are not logged again here.
LOGGED_BY_CALLBACK = {"learning_rate"}
MODELS = (CHALLENGER, CHAMPION, NAIVE)


def run_name(ticker: str, day: str, attempt: int) -> str:
    return f"{ticker} {day} #{attempt}"


def start_tags(
    ticker: str, day: str, attempt: int, as_of: dt.date, source: str, run_tags: dict[str, str], stage: str
) -> dict[str, str]:
    return {
        **run_tags,
        TICKER: ticker,
        ROLE: DAILY,
        DAY: day,
        ATTEMPT: str(attempt),
        AS_OF: as_of.isoformat(),
        SOURCE: source,
        STAGE: stage,
    }


def admitted_tags(admitted: Admitted, settings_digest: str) -> dict[str, str]:
    tags = {DATA_DIGEST: admitted.data_digest, SETTINGS_DIGEST: settings_digest}
    if admitted.replaced_history:
        tags[HISTORY_REPLACED] = excerpt(admitted.note, 500)
    if admitted.source_notes:
        tags[SOURCE_NOTES] = excerpt("; ".join(admitted.source_notes), 500)
    return tags


def training_params(config: TrainingConfig, min_relative_gain: float, promotion_alpha: float) -> dict[str, Any]:
    params = {k: v for k, v in config.model_dump().items() if k not in LOGGED_BY_CALLBACK}
    return {**params, "min_relative_gain": min_relative_gain, "promotion_alpha": promotion_alpha}


def data_params(admitted: Admitted, challenger: Challenger) -> dict[str, Any]:
    test = challenger.dataset.test
    return {
        "data_start": admitted.data_start,
        "data_rows": len(admitted.history),
        "train_start": challenger.dataset.train.as_of[0].date(),
        "test_start": test.target_date[0].date(),
        "test_end": test.target_date[-1].date(),
        "test_sessions": len(test.y),
        "warm_start_from": challenger.warm_start_from or "none",
    }


def score_metrics(scores: Scores) -> dict[str, float]:
    metrics = {
        f"{model}_{measure}": value for model, measures in scores.metrics.items() for measure, value in measures.items()
    }
    metrics.update(
        {
            f"{model}_{measure}": value
            for model, measures in scores.interval_metrics.items()
            for measure, value in measures.items()
        }
    )
    choice = scores.served_choice
    if choice is not None:
        metrics.update(
            {
                f"served_validation_{method}_{measure}": value
                for method, measures in choice.validation.items()
                for measure, value in measures.items()
            }
        )
    evidence = scores.evidence
    metrics.update(
        {
            "u2": evidence.u2,
            "relative_gain": evidence.relative_gain,
            "dm_stat": evidence.dm_stat,
            "dm_pvalue": evidence.dm_pvalue,
            "blocks_won": evidence.blocks_won,
        }
    )
    return metrics


def block_series(scores: Scores) -> dict[str, list[float]]:
    """Per-block RMSE of each model, logged as a metric history with the block number as the step."""
    return {f"{model}_rmse_by_block": [row[model] for row in scores.evidence.per_block] for model in MODELS}


def training_metrics(challenger: Challenger) -> dict[str, float]:
    return {
        "best_epoch": challenger.best_epoch,
        "epochs_run": challenger.epochs_run,
        "train_seconds": challenger.train_seconds,
        "shrinkage": challenger.forecaster.shrinkage,
    }


def decision_report(
    ticker: str, admitted: Admitted, scores: Scores, verdict: Verdict, champion_before: str, run_id: str
) -> dict[str, Any]:
    """Everything a reviewer needs to audit one decision, as plain JSON values."""
    return {
        "ticker": ticker,
        "run_id": run_id,
        **codec.dump(verdict),
        "champion_before": champion_before,
        "evidence": codec.dump(scores.evidence),
        "models": {
            model: {**scores.metrics.get(model, {}), **scores.interval_metrics.get(model, {})} for model in MODELS
        },
        "test_sessions": len(scores.test_days),
        "test_start": scores.test_days[0],
        "test_end": scores.test_days[-1],
        "data_digest": admitted.data_digest,
        **served_report(scores),
    }


def served_params(scores: Scores) -> dict[str, str]:
    """The interval method the validation sessions favour: what a naive champion serves from this run on, and an
    LSTM one crowned with chosen intervals (its own scored worse at promotion)."""
    choice = scores.served_choice
    return {} if choice is None else {SERVED_INTERVAL_METHOD: choice.method}


def served_report(scores: Scores) -> dict[str, Any]:
    choice = scores.served_choice
    if choice is None:
        return {}
    return {
        "served_intervals": {
            "method": choice.method,
            "description": choice.description,
            "validation": choice.validation,
            "test": scores.chosen_metrics,
        }
    }


@dataclass(frozen=True)
class Recorded:
    logged: LoggedForecaster
    forecaster: LstmForecaster


def record(
    tracker: Tracker,
    run_id: str,
    *,
    ticker: str,
    admitted: Admitted,
    challenger: Challenger,
    scores: Scores,
    verdict: Verdict,
    champion_before: str,
    description: str,
) -> Recorded:
    """Everything about the decision into the run (`description` is its Markdown note), and the challenger as a
    logged model linked to it."""
    tracker.set_tags(run_id, {STAGE: RECORDING})
    tracker.log_params(run_id, {**data_params(admitted, challenger), **served_params(scores)})
    logged_metrics = tracker.client.get_run(run_id).data.metrics
    if "challenger_rmse" not in logged_metrics:  # one batch: all of them are there, or none
        tracker.log_metrics(run_id, {**score_metrics(scores), **training_metrics(challenger)}, block_series(scores))
    client = tracker.client
    client.log_text(run_id, admitted.validation_html, VALIDATION_HTML)
    client.log_text(run_id, _as_json(admitted.validation_json()), VALIDATION_JSON)
    client.log_figure(run_id, forecast_figure(ticker, admitted.data_end, scores), FORECAST_PLOT)
    client.log_dict(run_id, decision_report(ticker, admitted, scores, verdict, champion_before, run_id), DECISION_JSON)
    forecaster = challenger.forecaster
    if scores.challenger_calibration is not None:
        forecaster = forecaster.with_calibration(scores.challenger_calibration)
    logged = tracker.logged_forecaster_of(run_id) or tracker.log_forecaster(
        run_id, forecaster, admitted.history, min_input_rows(forecaster)
    )
    tracker.set_tags(
        run_id,
        {
            DECISION: verdict.decision.value,
            REASON: excerpt(verdict.reason, 1000),
            CHAMPION_BEFORE: champion_before,
            DESCRIPTION_TAG: description,
        },
    )
    return Recorded(logged, forecaster)


def record_failure(
    tracker: Tracker,
    run_id: str,
    reason: str,
    *,
    validation_html: str | None = None,
    validation_json: list[dict[str, Any]] | None = None,
) -> None:
    """A failed run says why, in its tags and description, then ends FAILED."""
    short = excerpt(reason, 1000)
    if validation_html:
        tracker.client.log_text(run_id, validation_html, VALIDATION_HTML)
    if validation_json is not None:
        tracker.client.log_text(run_id, _as_json(validation_json), VALIDATION_JSON)
    tracker.set_tags(
        run_id, {DECISION: Decision.failed.value, REASON: short, STAGE: DONE, DESCRIPTION_TAG: f"**Failed**: {short}"}
    )
    tracker.client.set_terminated(run_id, "FAILED")


def _as_json(results: list[dict[str, Any]]) -> str:
    """The contract's results as `MlflowClient.log_dict` would write them, were it not typed for a dict only."""
    return json.dumps(results, indent=2, default=str)


def outcome_from_run(run: Run, champion: Champion | None, tracker: Tracker) -> TickerOutcome | None:
    """A ticker's last outcome as MLflow recorded it: what rebuilds the local cache."""
    tags, metrics = run.data.tags, run.data.metrics
    try:
        decision = Decision(tags.get(DECISION, ""))
    except ValueError:
        return None  # a run still going (or cut off before deciding): nothing decided to show
    params = run.data.params
    finished = run.info.end_time or run.info.start_time
    return TickerOutcome(
        ticker=tags[TICKER],
        decision=decision,
        reason=tags.get(REASON, ""),
        data_start=params.get("data_start"),
        data_end=tags.get(DAY),
        rows=int(params.get("data_rows", 0)),
        data_digest=tags.get(DATA_DIGEST),
        settings_digest=tags.get(SETTINGS_DIGEST),
        run_id=run.info.run_id,
        run_url=tracker.run_url(run.info.run_id),
        model_version=tags.get(MODEL_VERSION),
        champion_version=champion.version if champion else None,
        champion_kind=champion.kind if champion else None,
        challenger_test_rmse=metrics.get("challenger_rmse"),
        champion_test_rmse=metrics.get("champion_rmse"),
        naive_test_rmse=metrics.get("naive_rmse"),
        u2=metrics.get("u2"),
        coverage_80=metrics.get("challenger_coverage_80"),
        coverage_95=metrics.get("challenger_coverage_95"),
        finished_at=dt.datetime.fromtimestamp(finished / 1000, dt.UTC).isoformat(timespec="seconds")
        if finished
        else "",
    )


def rebuild_outcome(tracker: Tracker, ticker: str) -> TickerOutcome | None:
    """The last decision as MLflow recorded it (for a missing or unreadable local cache)."""
    for run in tracker.runs(ticker, max_results=20):
        outcome = outcome_from_run(run, tracker.champion(ticker), tracker)
        if outcome is not None:
            return outcome
    return None
