"""The textbook interval references a user could compute in three lines, scored beside our models on the same
sessions: the naive point forecast ("tomorrow = today") with a RiskMetrics EWMA Gaussian interval, and with a
GARCH(1,1) Student-t interval (`arch`, refit every 20 sessions on the last 1,000 returns, the variance recursion run
forward between refits). Neither uses anything after the as-of session."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from pipeline.models.intervals import LEVELS, check_levels, interval_columns
from pipeline.models.volatility import ewma_volatility
from pipeline.models.volatility_estimators import garch_t_sigma, standardized_t_quantile

EWMA = "ewma"
GARCH_T = "garch_t"
REFERENCES = (EWMA, GARCH_T)
GARCH_REFIT_EVERY = 20
GARCH_WINDOW = 1000


def reference_intervals(
    closes: np.ndarray, positions: np.ndarray, levels: Sequence[float] = LEVELS
) -> dict[str, dict[str, np.ndarray]]:
    """Per reference, its bounds (lower_80, upper_80, ...) for the close after each as-of position."""
    closes = np.asarray(closes, dtype="float64")
    positions = np.asarray(positions, dtype="int64")
    if positions.size and positions.min() < 1:
        raise ValueError("a reference interval needs at least one return before its as-of session")
    returns = np.log(closes[1:] / closes[:-1])  # returns[k] is the return into close k + 1
    into_as_of = positions - 1
    last = closes[positions]
    ewma = ewma_volatility(closes)[positions]
    garch, nu = garch_t_sigma(returns, into_as_of, refit_every=GARCH_REFIT_EVERY, window=GARCH_WINDOW)
    bounds: dict[str, dict[str, np.ndarray]] = {EWMA: {}, GARCH_T: {}}
    for level in check_levels(levels):
        lower, upper = interval_columns(level)
        tail = (1 - level) / 2
        z = float(stats.norm.ppf(1 - tail))
        bounds[EWMA][lower], bounds[EWMA][upper] = last * np.exp(-z * ewma), last * np.exp(z * ewma)
        bounds[GARCH_T][lower] = last * np.exp(standardized_t_quantile(tail, nu) * garch)
        bounds[GARCH_T][upper] = last * np.exp(standardized_t_quantile(1 - tail, nu) * garch)
    return bounds
