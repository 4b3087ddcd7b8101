"""The naive forecast's intervals, the baseline the LSTM's are scored against: historical simulation.

`last close * exp(empirical alpha/2 and 1 - alpha/2 quantiles of the previous N log returns)`, around the
persistence forecast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.models.intervals import LEVELS, as_of_positions, check_levels, interval_columns
from pipeline.models.volatility import MIN_RETURNS, log_returns

NAIVE_LOOKBACK = 250
NAIVE_INTERVAL_METHOD = f"empirical quantiles of the last {NAIVE_LOOKBACK} log returns"


def naive_intervals(
    closes: np.ndarray,
    as_of_index: np.ndarray | Sequence[int] | None = None,
    levels: Sequence[float] = LEVELS,
    lookback: int = NAIVE_LOOKBACK,
    min_returns: int = MIN_RETURNS,
) -> dict[str, np.ndarray]:
    """Baseline: last close * exp(empirical alpha/2 and 1 - alpha/2 quantiles of the last `lookback` log returns).

    Historical simulation around the persistence forecast; uses only returns up to each as-of
    session (fewer than `lookback` early on, none when fewer than `min_returns` exist).
    """
    levels = check_levels(levels)
    closes = np.asarray(closes, dtype="float64")
    positions = as_of_positions(closes, as_of_index)
    returns = log_returns(closes)
    intervals = {name: np.full(positions.size, np.nan) for level in levels for name in interval_columns(level)}
    for out, i in enumerate(positions):
        recent = returns[max(0, i - lookback) : i]  # returns into closes i-lookback+1 .. i
        if recent.size < min_returns:
            continue
        for level in levels:
            lower, upper = interval_columns(level)
            tail = (1 - level) / 2
            low, high = np.quantile(recent, [tail, 1 - tail])
            intervals[lower][out] = closes[i] * math.exp(low)
            intervals[upper][out] = closes[i] * math.exp(high)
    return intervals
