"""The served forecasts' live record, pure: each recorded forecast scored once its target session's close is known.

A forecast made at the close of `as_of` for `target` is matured when the store holds `target`'s close. Its scores:
the error (actual - point), the naive forecast's error on the same session (actual - the as-of close, what
"tomorrow = today" said), and whether the actual fell inside the 80% and 95% intervals (a missing bound counts as a
miss, as in `pipeline.evaluation.interval_scores`). The record of a model version is over its last 20 and 60 scored
sessions: RMSE, U2 (RMSE over the naive RMSE on the same sessions), coverage at both levels, and Kupiec's p-value of
the 80% coverage over the last 60.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.evaluation.evidence import dm_one_sided
from pipeline.evaluation.interval_tests import kupiec_pof

WINDOWS = (20, 60)
# The figures of the record that `status --json`, the day's outcome and the Prefect summary carry.
STATUS_FIELDS = ("live_sessions", "live_u2_60", "live_coverage_80_60", "live_coverage_95_60", "live_kupiec_p_80")
# The degradation rule's window and thresholds (see `degradation`).
DEGRADATION_SESSIONS = 60
KUPIEC_ALPHA = 0.01
DM_ALPHA = 0.05


def score_matured(forecasts: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """The recorded forecasts whose target close is in `prices`, with their scores, oldest target first."""
    closes = prices.assign(target=pd.to_datetime(prices["Date"]))[["target", "Close"]].rename(
        columns={"Close": "actual"}
    )
    scored = forecasts.assign(target=pd.to_datetime(forecasts["target"])).merge(closes, on="target", how="inner")
    actual = scored["actual"].to_numpy("float64")
    scored["error"] = actual - scored["point"].to_numpy("float64")
    scored["naive_error"] = actual - scored["last_close"].to_numpy("float64")
    for level in ("80", "95"):
        lower, upper = (scored[f"{side}_{level}"].to_numpy("float64") for side in ("lower", "upper"))
        with np.errstate(invalid="ignore"):
            scored[f"inside_{level}"] = (lower <= actual) & (actual <= upper)  # NaN bounds compare False: a miss
    return scored.sort_values(["target", "model_version"]).reset_index(drop=True)


@dataclass(frozen=True)
class LiveRecord:
    """A model version's record on the sessions it served (None where no session has been scored yet)."""

    model_version: str
    sessions: int
    rmse_20: float | None
    rmse_60: float | None
    u2_20: float | None
    u2_60: float | None
    coverage_80_20: float | None
    coverage_80_60: float | None
    coverage_95_20: float | None
    coverage_95_60: float | None
    kupiec_p_80: float | None
    # One-sided Diebold-Mariano p-value over the last 60 sessions, H0: naive is no more accurate than the served point.
    dm_p_naive_better_60: float | None = None

    def metrics(self) -> dict[str, float]:
        """As MLflow metrics (`live_*`), leaving out the figures not known yet."""
        figures: dict[str, float | None] = {"live_sessions": float(self.sessions)}
        for name in ("rmse", "u2", "coverage_80", "coverage_95"):
            for window in WINDOWS:
                figures[f"live_{name}_{window}"] = getattr(self, f"{name}_{window}")
        figures["live_kupiec_p_80"] = self.kupiec_p_80
        figures["live_dm_p_naive_better_60"] = self.dm_p_naive_better_60
        return {k: float(v) for k, v in figures.items() if v is not None and math.isfinite(v)}

    def status_fields(self) -> dict[str, float | int | None]:
        """The STATUS_FIELDS, as `status --json` and the day's outcome show them."""
        return {
            "live_sessions": self.sessions,
            "live_u2_60": self.u2_60,
            "live_coverage_80_60": self.coverage_80_60,
            "live_coverage_95_60": self.coverage_95_60,
            "live_kupiec_p_80": self.kupiec_p_80,
        }


def _rmse(errors: np.ndarray) -> float | None:
    return float(np.sqrt(np.mean(errors**2))) if errors.size else None


def live_record(scored: pd.DataFrame, model_version: str) -> LiveRecord:
    """The record of one model version over the sessions it was scored on."""
    own = scored.loc[scored["model_version"] == str(model_version)]
    figures: dict[str, float | None] = {}
    for window in WINDOWS:
        last = own.tail(window)
        rmse, naive = _rmse(last["error"].to_numpy("float64")), _rmse(last["naive_error"].to_numpy("float64"))
        figures[f"rmse_{window}"] = rmse
        figures[f"u2_{window}"] = rmse / naive if rmse is not None and naive else None
        for level in ("80", "95"):
            figures[f"coverage_{level}_{window}"] = float(last[f"inside_{level}"].mean()) if len(last) else None
    recent = own.tail(max(WINDOWS))
    p_value = kupiec_pof(~recent["inside_80"].to_numpy(bool), 0.80).p_value if len(recent) else None
    dm_p = None
    if len(recent):
        actual, last_close, point = (recent[c].to_numpy("float64") for c in ("actual", "last_close", "point"))
        dm_p = dm_one_sided(actual, last_close, point)[1]
    return LiveRecord(str(model_version), len(own), kupiec_p_80=p_value, dm_p_naive_better_60=dm_p, **figures)


def record_on(forecasts: pd.DataFrame, prices: pd.DataFrame, model_version: str) -> LiveRecord:
    """The version's live record on the recorded forecasts that `prices` has matured."""
    return live_record(score_matured(forecasts, prices), model_version)


@dataclass(frozen=True)
class Degradation:
    degraded: bool
    reason: str


def degradation(record: LiveRecord) -> Degradation:
    """Whether the serving champion has gone bad on its live record, pure.

    Judged only on a full window of 60 scored sessions. Either of:
      - its 80% intervals cover too little, and Kupiec's test rejects their coverage at 1% (21 or more misses in 60,
        where 12 are expected: coverage at or below 65%): the intervals have become too narrow to mean what they say.
        Too wide (4 or fewer misses) is not a fallback: on the bundled histories before their test sessions, the
        two-sided rule fired in 5 episodes over 3,000 sessions, 4 of them on calm stretches of over-coverage;
      - its point forecast is worse than "tomorrow = today" (live U2 above 1) and a one-sided Diebold-Mariano test
        says so at 5%: it does harm, not just no good.
    The 1% and 5% keep false alarms rare on a rule checked every day over overlapping windows; their rate is
    measured on the bundled histories by `bench/degradation.py`.
    """
    if record.sessions < DEGRADATION_SESSIONS:
        return Degradation(False, f"{record.sessions} of {DEGRADATION_SESSIONS} sessions scored: too few to judge")
    coverage, p_value = record.coverage_80_60, record.kupiec_p_80
    too_narrow = coverage is not None and coverage < 0.80
    if too_narrow and p_value is not None and math.isfinite(p_value) and p_value < KUPIEC_ALPHA:
        return Degradation(
            True,
            f"live 80% coverage {coverage:.1%} over the last {DEGRADATION_SESSIONS} sessions "
            f"(Kupiec p {p_value:.4f} < {KUPIEC_ALPHA})",
        )
    u2, dm_p = record.u2_60, record.dm_p_naive_better_60
    if u2 is not None and u2 > 1 and dm_p is not None and math.isfinite(dm_p) and dm_p < DM_ALPHA:
        return Degradation(
            True,
            f"live U2 {u2:.3f} over the last {DEGRADATION_SESSIONS} sessions: worse than the naive forecast "
            f"(Diebold-Mariano p {dm_p:.4f} < {DM_ALPHA})",
        )
    return Degradation(False, f"live record within bounds over the last {DEGRADATION_SESSIONS} sessions")


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def describe_live(record: LiveRecord, fallback: str | None = None) -> str:
    """The live record as a Markdown section of the day's run description, beside the back-test evidence."""
    if record.sessions == 0:
        return (
            f"**Live record** of the champion that served until today (v{record.model_version}): none yet, no forecast "
            "it served has matured."
        )
    verdict = degradation(record)
    rows = [
        f"| v{record.model_version}, live | sessions | RMSE | U2 | coverage 80% | coverage 95% |",
        "|---|---|---|---|---|---|",
    ]
    for window in WINDOWS:
        rows.append(
            f"| last {window} | {min(record.sessions, window)} | {_figure(getattr(record, f'rmse_{window}'), 4)} "
            f"| {_figure(getattr(record, f'u2_{window}'), 3)} | {_figure(getattr(record, f'coverage_80_{window}'), 3)} "
            f"| {_figure(getattr(record, f'coverage_95_{window}'), 3)} |"
        )
    return "\n".join(
        [
            f"**Live record** of the champion that served until today (v{record.model_version}), on the "
            f"{record.sessions} forecast(s) it served that have matured:",
            "",
            *rows,
            "",
            f"Kupiec p of the 80% coverage (last {max(WINDOWS)}): {_figure(record.kupiec_p_80, 4)}; one-sided "
            f"Diebold-Mariano p that naive is better (last {max(WINDOWS)}): "
            f"{_figure(record.dm_p_naive_better_60, 4)}. Degradation rule: "
            + (f"**{fallback}**." if fallback else f"{verdict.reason}."),
        ]
    )
