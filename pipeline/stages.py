"""The steps of a ticker-day an orchestrator may wrap (retries, task runs), each a plain function by default:
fetch and admit the batch, train the challenger, evaluate it against the champion, publish the decision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.common.outcome import TickerOutcome
from pipeline.data.ingest import Admitted, admit, fetch_batch
from pipeline.evaluation.evidence import PromotionPolicy
from pipeline.evaluation.promotion import (
    CHOSEN_INTERVALS,
    IntervalServing,
    Verdict,
    decide,
    describe,
    interval_serving,
)
from pipeline.evaluation.scoring import Scores, score
from pipeline.models.forecasters import Forecaster
from pipeline.models.training import Challenger, train_challenger
from pipeline.registry.applying import apply
from pipeline.registry.connection import tracking_errors
from pipeline.registry.recording import SCORING, record
from pipeline.registry.tracking import Champion, Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    champion_before: str
    scores: Scores
    verdict: Verdict
    # For a promotion: whose intervals the new champion serves.
    serving: IntervalServing | None = None

    @property
    def served_interval_metrics(self) -> dict[str, float]:
        """How what serves after this decision scored on the test sessions."""
        metrics = self.scores.interval_metrics
        if not self.verdict.promote:
            return metrics.get("champion", {})
        if self.serving is not None and self.serving.source == CHOSEN_INTERVALS:
            return self.scores.chosen_metrics or {}
        return metrics.get("challenger", {})


def evaluate(
    tracker: Tracker,
    run_id: str,
    *,
    ticker: str,
    challenger: Challenger,
    champion: Forecaster,
    champion_before: str,
    policy: PromotionPolicy,
    blocks: int,
    champion_serves_chosen: bool = False,
) -> Evaluation:
    """Score the three models on the challenger's test sessions and decide (pure, once the champion is loaded)."""
    with tracking_errors(tracker.tracking_uri, f"tracking {ticker}"):
        tracker.set_tags(run_id, {"stage": SCORING})
    scores = score(challenger.dataset, challenger.forecaster, champion, blocks, champion_serves_chosen)
    verdict = decide(scores.evidence, policy)
    log.info("%s: %s (%s)", ticker, verdict.decision.value, verdict.reason)
    serving = None
    if verdict.promote:
        chosen = scores.served_choice.description if scores.served_choice else None
        serving = interval_serving(scores.interval_metrics.get("challenger", {}), scores.chosen_metrics, chosen)
        log.info("%s: the new champion serves %s", ticker, serving.reason)
    return Evaluation(champion_before, scores, verdict, serving)


def publish(
    tracker: Tracker,
    run_id: str,
    *,
    ticker: str,
    admitted: Admitted,
    challenger: Challenger,
    evaluation: Evaluation,
    live: str | None = None,
) -> str | None:
    """Record the decision in the run, then apply it to the registry; safe to call again after a lost connection.
    `live` is the serving champion's live record, as the description shows it."""
    scores = evaluation.scores
    description = describe(
        ticker,
        evaluation.verdict,
        scores.evidence,
        evaluation.champion_before,
        scores.interval_metrics,
        evaluation.serving,
        live,
    )
    with tracking_errors(tracker.tracking_uri, f"tracking {ticker}"):
        recorded = record(
            tracker,
            run_id,
            ticker=ticker,
            admitted=admitted,
            challenger=challenger,
            scores=scores,
            verdict=evaluation.verdict,
            champion_before=evaluation.champion_before,
            description=description,
        )
        return apply(
            tracker,
            run_id,
            ticker=ticker,
            admitted=admitted,
            verdict=evaluation.verdict,
            recorded=recorded,
            description=description,
            served_intervals=evaluation.serving.source if evaluation.serving else None,
        )


@dataclass(frozen=True)
class Stages:
    """The steps an orchestrator may wrap; each keeps the signature of the plain function it defaults to."""

    fetch: Callable[..., Any] = fetch_batch
    admit: Callable[..., Any] = admit
    train: Callable[..., Challenger] = train_challenger
    evaluate: Callable[..., Evaluation] = evaluate
    publish: Callable[..., str | None] = publish


def decided_outcome(
    ticker: str,
    admitted: Admitted,
    settings_digest: str,
    tracker: Tracker,
    run_id: str,
    version: str | None,
    current: Champion | None,
    evaluation: Evaluation,
) -> TickerOutcome:
    evidence, intervals = evaluation.scores.evidence, evaluation.scores.interval_metrics.get("challenger", {})
    served = evaluation.served_interval_metrics
    return TickerOutcome(
        ticker=ticker,
        decision=evaluation.verdict.decision,
        reason=evaluation.verdict.reason,
        data_start=admitted.data_start,
        data_end=admitted.data_end,
        rows=len(admitted.history),
        new_rows=admitted.new_rows,
        data_digest=admitted.data_digest,
        settings_digest=settings_digest,
        run_id=run_id,
        run_url=tracker.run_url(run_id),
        model_version=version,
        champion_version=current.version if current else None,
        champion_kind=current.kind if current else None,
        challenger_test_rmse=evidence.challenger_rmse,
        champion_test_rmse=evidence.champion_rmse,
        naive_test_rmse=evidence.naive_rmse,
        u2=evidence.u2,
        coverage_80=intervals.get("coverage_80"),
        coverage_95=intervals.get("coverage_95"),
        served_coverage_80=served.get("coverage_80"),
        served_coverage_95=served.get("coverage_95"),
    )
