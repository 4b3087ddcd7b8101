"""How well prediction intervals hold up out of sample: coverage, width and the Winkler (1972) interval score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.evaluation.interval_tests import christoffersen_independence, exceedances, kupiec_pof, mean_pinball
from pipeline.models.intervals import LEVELS, check_levels, interval_columns, level_name


@dataclass(frozen=True)
class IntervalScore:
    level: float
    n: int
    coverage: float
    mean_width: float
    mean_relative_width: float
    winkler: float


def winkler_scores(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float) -> np.ndarray:
    """Winkler (1972) interval score per day: width, plus 2/alpha times any miss beyond a bound. Lower is better.

    Also Gneiting & Raftery (2007), eq. 43; it is proper for the alpha/2 and 1 - alpha/2 quantiles.
    """
    alpha = 1 - level
    actual, lower, upper = (np.asarray(a, dtype="float64") for a in (actual, lower, upper))
    below = np.maximum(lower - actual, 0.0)
    above = np.maximum(actual - upper, 0.0)
    return (upper - lower) + (2 / alpha) * (below + above)


def score_interval(
    actual: np.ndarray, lower: np.ndarray, upper: np.ndarray, level: float, price: np.ndarray
) -> IntervalScore:
    """Coverage, mean width (price units and relative to `price`, e.g. the as-of close) and mean Winkler score."""
    actual, lower, upper, price = (np.asarray(a, dtype="float64") for a in (actual, lower, upper, price))
    if not actual.shape == lower.shape == upper.shape == price.shape:
        raise ValueError("actual, bounds and price must have the same shape")
    if actual.size == 0:
        nan = float("nan")
        return IntervalScore(float(level), 0, nan, nan, nan, nan)
    width = upper - lower
    # NaN bounds (too little history) count as a miss: an interval that was not given did not cover.
    covered = (actual >= lower) & (actual <= upper)
    return IntervalScore(
        level=float(level),
        n=int(actual.size),
        coverage=float(np.mean(covered)),
        mean_width=float(np.mean(width)),
        mean_relative_width=float(np.mean(width / price)),
        winkler=float(np.mean(winkler_scores(actual, lower, upper, level))),
    )


def score_intervals(
    actual: np.ndarray, intervals: Mapping[str, np.ndarray], price: np.ndarray, levels: Sequence[float] = LEVELS
) -> dict[str, float]:
    """Flat metrics for logging, per level: coverage_80, width_80, relative_width_80, winkler_80, and the p-values of
    Kupiec's coverage test and Christoffersen's independence test of the misses (kupiec_p_80, christoffersen_p_80);
    then `pinball`, the mean pinball loss over every served quantile."""
    metrics: dict[str, float] = {}
    quantiles = {}
    for level in check_levels(levels):
        lower, upper = interval_columns(level)
        score = score_interval(actual, intervals[lower], intervals[upper], level, price)
        suffix = level_name(level)
        metrics[f"coverage_{suffix}"] = score.coverage
        metrics[f"width_{suffix}"] = score.mean_width
        metrics[f"relative_width_{suffix}"] = score.mean_relative_width
        metrics[f"winkler_{suffix}"] = score.winkler
        missed = exceedances(actual, intervals[lower], intervals[upper])
        metrics[f"kupiec_p_{suffix}"] = kupiec_pof(missed, level).p_value
        metrics[f"christoffersen_p_{suffix}"] = christoffersen_independence(missed).p_value
        quantiles[level] = (
            np.asarray(intervals[lower], dtype="float64"),
            np.asarray(intervals[upper], dtype="float64"),
        )
    metrics["pinball"] = mean_pinball(np.asarray(actual, dtype="float64"), quantiles)
    return metrics
