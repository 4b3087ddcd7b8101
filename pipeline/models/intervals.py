"""Prediction intervals for next-session closes: their levels, column names and the checks every kind shares.

Every forecaster gives, beside its point forecast, `lower_80, upper_80, lower_95, upper_95` for the levels in
`LEVELS`. The LSTM's come from `pipeline.models.conformal` (volatility-scaled conformal prediction with quantile
tracking, on the EWMA volatility of `pipeline.models.volatility`); the naive baseline's from
`pipeline.models.naive_intervals`. `pipeline.evaluation.interval_scores` scores either kind out of sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVELS: tuple[float, ...] = (0.80, 0.95)


def level_name(level: float) -> str:
    """80 for 0.80, 95 for 0.95, 97.5 for 0.975: the suffix of the interval's column names."""
    percent = round(100 * level, 6)
    return f"{percent:g}"


def interval_columns(level: float) -> tuple[str, str]:
    suffix = level_name(level)
    return f"lower_{suffix}", f"upper_{suffix}"


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(float(level) for level in levels)
    if not levels or any(not 0 < level < 1 for level in levels):
        raise ValueError(f"interval levels must lie strictly between 0 and 1, got {levels}")
    return levels


def as_of_positions(closes: np.ndarray, as_of_index: np.ndarray | Sequence[int] | None) -> np.ndarray:
    """The close positions that intervals are made at: every close by default, else the given ones, checked."""
    if as_of_index is None:
        return np.arange(len(closes))
    positions = np.asarray(as_of_index, dtype="int64")
    if positions.size and (positions.min() < 0 or positions.max() >= len(closes)):
        raise IndexError(f"as-of positions must lie in [0, {len(closes)}), got {positions.min()}..{positions.max()}")
    return positions
