"""The promotion decision, pure: a challenger replaces the champion only on evidence, never on noise.

The rule (pipeline.evaluation.evidence.judge) asks four things of the same test sessions: a relative RMSE gain over the
champion of at least `min_relative_gain`, a one-sided Diebold-Mariano p-value below `promotion_alpha`, a majority of
the consecutive blocks won, and U2 (RMSE over the naive forecast's) below 1. A tie never promotes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SerializerFunctionWrapHandler, model_serializer, model_validator

from pipeline.common.outcome import Decision
from pipeline.evaluation.evidence import Check, Evidence, PromotionPolicy, judge

CHAMPION_ALIAS = "champion"
PREVIOUS_ALIAS = "previous"
# Which intervals a champion serves around its point forecast: its own (a challenger's conformal ones) or those of
# the method its ticker's validation sessions favour (pipeline.evaluation.served_intervals), as a naive one does.
OWN_INTERVALS, CHOSEN_INTERVALS = "own", "chosen"


@dataclass(frozen=True)
class Verdict:
    """In decision.json through `pipeline.common.codec`, with the policy's two settings beside the checks."""

    decision: Decision
    reason: str
    checks: tuple[Check, ...]
    policy: PromotionPolicy

    @property
    def promote(self) -> bool:
        return self.decision is Decision.promoted

    @model_serializer(mode="wrap")
    def _policy_inline(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        values = handler(self)
        policy = values.pop("policy")
        return {**values, **policy}

    @model_validator(mode="before")
    @classmethod
    def _policy_nested(cls, values: Any) -> Any:
        if isinstance(values, Mapping) and "policy" not in values:
            names = ("min_relative_gain", "promotion_alpha")
            return {**values, "policy": {name: values[name] for name in names if name in values}}
        return values


def decide(evidence: Evidence, policy: PromotionPolicy) -> Verdict:
    promote, reason, checks = judge(evidence, policy)
    return Verdict(Decision.promoted if promote else Decision.kept, reason, tuple(checks), policy)


@dataclass(frozen=True)
class IntervalServing:
    """The intervals a newly promoted champion serves, and why."""

    source: str
    reason: str


def interval_serving(
    challenger: Mapping[str, float], chosen: Mapping[str, float] | None, chosen_method: str | None = None
) -> IntervalServing:
    """Promotion is decided on the point forecast alone; this keeps it from making the served intervals worse.

    On the test sessions the promotion was judged on, the challenger's own intervals are compared with the chosen
    method's by the mean over 80% and 95% of their Winkler-score ratio (the rule the method itself was chosen by):
    above 1, the champion serves the chosen method; a tie keeps its own.
    """
    keys = ("winkler_80", "winkler_95")
    pairs = [(challenger.get(key), (chosen or {}).get(key)) for key in keys]
    usable = [
        (float(own), float(other))
        for own, other in pairs
        if own is not None and other is not None and math.isfinite(own) and math.isfinite(other) and other > 0
    ]
    if len(usable) < len(keys):
        return IntervalServing(OWN_INTERVALS, "its own conformal intervals (no other method was scored)")
    ratio = sum(own / other for own, other in usable) / len(usable)
    method = chosen_method or "the validation-chosen method"
    if ratio > 1:
        return IntervalServing(
            CHOSEN_INTERVALS,
            f"{method}: the challenger's own intervals scored {ratio - 1:.1%} worse (Winkler, mean of 80% and 95%) "
            "on the same test sessions",
        )
    return IntervalServing(
        OWN_INTERVALS,
        f"its own conformal intervals: {1 - ratio:.1%} better (Winkler) than {method} on the test sessions",
    )


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


# The interval sets of a run's description, in the order shown, with what each is.
INTERVAL_ROWS = (
    ("challenger", "challenger (conformal, tracked)"),
    ("champion", "champion (served today)"),
    ("naive", "empirical quantiles, 250 returns"),
    ("ewma", "EWMA (RiskMetrics) Gaussian"),
    ("garch_t", "GARCH(1,1)-t (arch)"),
)


def interval_table(intervals: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every interval set scored on the test sessions, references included, as Markdown rows."""
    rows = [
        "| intervals | coverage 80% | coverage 95% | Winkler 80% | Winkler 95% | Kupiec p 80% | Christoffersen p 80% |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in INTERVAL_ROWS:
        if key in intervals:
            m = intervals[key]
            figures = ("coverage_80", "coverage_95", "winkler_80", "winkler_95", "kupiec_p_80", "christoffersen_p_80")
            rows.append(f"| {label} | " + " | ".join(_num(m.get(f), 3) for f in figures) + " |")
    return rows


def describe(
    ticker: str,
    verdict: Verdict,
    evidence: Evidence,
    champion_before: str,
    intervals: Mapping[str, Mapping[str, float]] | None = None,
    serving: IntervalServing | None = None,
    live: str | None = None,
) -> str:
    """The run's description (Markdown): the decision in one sentence, then the figures the rule used, the serving
    champion's live record (`live`, already Markdown) and how every interval set held up on the same sessions."""
    outcome = (
        f"**Promoted**: the challenger replaces {champion_before} as {ticker}'s champion"
        if verdict.promote
        else f"**Kept** {champion_before} as {ticker}'s champion"
    )
    rows = ["| test | figure | needed | passed |", "|---|---|---|---|"]
    for check in verdict.checks:
        rows.append(
            f"| {check.name} | {_num(check.figure)} | {_num(check.threshold)} | {'yes' if check.passed else 'no'} |"
        )
    rmse = [
        "| model | test RMSE |",
        "|---|---|",
        f"| challenger | {_num(evidence.challenger_rmse)} |",
        f"| champion ({champion_before}) | {_num(evidence.champion_rmse)} |",
        f"| naive (tomorrow = today) | {_num(evidence.naive_rmse)} |",
    ]
    return "\n".join(
        [
            f"{outcome}: {verdict.reason}.",
            "",
            *rows,
            "",
            *rmse,
            "",
            f"{evidence.sessions} test sessions in {evidence.blocks} blocks; Diebold-Mariano (HLN-corrected, "
            f"one-sided) statistic {_num(evidence.dm_stat, 3)}.",
            *(["", f"Served intervals: {serving.reason}."] if verdict.promote and serving else []),
            *(["", live] if live else []),
            *(["", *interval_table(intervals)] if intervals else []),
        ]
    )
