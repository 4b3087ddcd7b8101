"""The promotion decision: a challenger replaces the champion only if it forecasts the same days better."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PROMOTED = "promoted"
KEPT = "kept"
FAILED = "failed"
SKIPPED = "skipped"

CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
# Lower is better; both models are scored on the challenger's own test days.
COMPARED_METRIC = "test_rmse"


@dataclass(frozen=True)
class Decision:
    verdict: str
    reason: str
    challenger_rmse: float
    champion_rmse: float
    margin: float

    @property
    def promote(self) -> bool:
        return self.verdict == PROMOTED

    def to_dict(self) -> dict:
        return asdict(self)


def decide(challenger_rmse: float, champion_rmse: float, margin: float = 0.0) -> Decision:
    """Promote when the challenger's RMSE is lower than the champion's by at least `margin` (relative).

    The comparison is MLflow's own model-validation machinery; a tie never promotes, so re-training
    on unchanged data cannot churn the champion.
    """
    from mlflow.exceptions import MlflowException
    from mlflow import validate_evaluation_results
    from mlflow.models import EvaluationResult, MetricThreshold

    def verdict(name: str, reason: str) -> Decision:
        return Decision(name, reason, float(challenger_rmse), float(champion_rmse), float(margin))

    if not (math.isfinite(challenger_rmse) and math.isfinite(champion_rmse)):
        return verdict(KEPT, f"cannot compare non-finite RMSEs ({challenger_rmse}, {champion_rmse})")
    comparison = f"challenger RMSE {challenger_rmse:.4f} vs champion {champion_rmse:.4f}"
    if challenger_rmse >= champion_rmse:
        return verdict(KEPT, f"{comparison}: not lower")
    try:
        validate_evaluation_results(
            validation_thresholds={
                COMPARED_METRIC: MetricThreshold(min_relative_change=float(margin), greater_is_better=False)
            },
            candidate_result=EvaluationResult(metrics={COMPARED_METRIC: challenger_rmse}, artifacts={}),
            baseline_result=EvaluationResult(metrics={COMPARED_METRIC: champion_rmse}, artifacts={}),
        )
    except MlflowException:
        return verdict(KEPT, f"{comparison}: lower, but by less than the {margin:.1%} margin")
    return verdict(PROMOTED, f"{comparison}: lower by {1 - challenger_rmse / champion_rmse:.2%}")
