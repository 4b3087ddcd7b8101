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


def decision_report(
    decision: Decision,
    *,
    ticker: str,
    challenger: str,
    champion: str,
    naive_rmse: float,
    test_days: list[str],
    data_digest: str,
    dm_stat: float | None = None,
    dm_pvalue: float | None = None,
) -> dict:
    """Everything a reviewer needs to audit one promotion decision, as plain JSON-ready values."""
    return {
        "ticker": ticker,
        "verdict": decision.verdict,
        "reason": decision.reason,
        "challenger": challenger,
        "champion": champion,
        "challenger_test_rmse": decision.challenger_rmse,
        "champion_test_rmse": decision.champion_rmse,
        "naive_test_rmse": float(naive_rmse),
        "u2": decision.challenger_rmse / naive_rmse if naive_rmse else None,
        "margin": decision.margin,
        "compared_metric": COMPARED_METRIC,
        "test_days": len(test_days),
        "test_start": test_days[0] if test_days else None,
        "test_end": test_days[-1] if test_days else None,
        "data_digest": data_digest,
        "dm_stat_vs_naive": dm_stat,
        "dm_pvalue_vs_naive": dm_pvalue,
    }


def report_markdown(report: dict) -> str:
    def num(value, digits=4):
        return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"

    return "\n".join([
        f"# {report['ticker']}: {report['verdict']}",
        "",
        report["reason"],
        "",
        "| model | test RMSE |",
        "|---|---|",
        f"| challenger ({report['challenger']}) | {num(report['challenger_test_rmse'])} |",
        f"| champion ({report['champion']}) | {num(report['champion_test_rmse'])} |",
        f"| naive persistence | {num(report['naive_test_rmse'])} |",
        "",
        f"- U2 (challenger / naive RMSE): {num(report['u2'], 3)}",
        f"- Diebold-Mariano vs naive: statistic {num(report['dm_stat_vs_naive'], 3)}, p-value {num(report['dm_pvalue_vs_naive'], 3)}",
        f"- Required relative improvement (margin): {report['margin']:.2%}",
        f"- Test days: {report['test_days']} ({report['test_start']} to {report['test_end']})",
        f"- Data digest: `{report['data_digest']}`",
        "",
    ])
