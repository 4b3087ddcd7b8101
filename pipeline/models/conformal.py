"""The LSTM's prediction intervals: volatility-scaled conformal prediction in log-return space with online quantile
tracking.

A point forecast `f` for the close after as-of session t gets the interval `f * exp(±q * sigma_t)`:
  - `sigma_t` is the RiskMetrics EWMA volatility of the log returns up to and including session t
    (`pipeline.models.volatility`).
  - `q` starts at the split-conformal quantile of the scores `|log(actual / forecast)| / sigma_t`
    on calibration sessions before the test sessions, with the finite-sample (n + 1) correction
    (Lei, G'Sell, Rinaldo, Tibshirani & Wasserman 2018, JASA 113(523); scores normalised by a
    spread estimate as in Papadopoulos, Vovk & Gammerman 2008).
  - Then, session by session, `q <- max(0, q + eta * (miss - alpha))`: quantile tracking, the
    "P" part of conformal PID control (Angelopoulos, Candès & Tibshirani 2023, NeurIPS), the
    quantile-space form of adaptive conformal inference (Gibbs & Candès 2021, NeurIPS). It keeps
    the long-run miss rate at alpha even when volatility regimes break exchangeability.
    `eta = step * calibrated q`, so the step is in the score's own units for every level.

`IntervalCalibration` holds all the served model needs to turn raw closes and its forecasts into
intervals: a few numbers that round-trip through JSON, including the tracked `quantiles` after the
last session whose outcome is known (the state for the next session).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import model_validator

from pipeline.common.codec import KEEP_NON_FINITE
from pipeline.models.intervals import LEVELS, as_of_positions, check_levels, interval_columns
from pipeline.models.volatility import EWMA_WINDOW, MIN_RETURNS, RISKMETRICS_LAMBDA, ewma_volatility

METHOD = "EWMA-volatility-scaled conformal, log returns, quantile tracking"
# Quantile-tracking step, relative to the calibrated quantile. Chosen on a rolling backtest over every
# 250-session block before the bundled test sessions (MSFT 1986-2016, GSPC 1999-2017): the smallest step
# on the grid 0 / 0.02 / 0.04 that kept both coverages of every block within ±3 points of nominal, for
# MSFT and GSPC and calibration windows of 250, 500 and 1000 sessions. Its price, the Winkler score,
# rose by under 1% against no tracking.
TRACKING_STEP = 0.04
# Keeps a stretch of unchanged closes (sigma = 0) from dividing by zero.
SIGMA_FLOOR = 1e-8


def conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The ceil((n + 1) * level)-th smallest score: the split-conformal quantile (Lei et al. 2018, §2.2).

    Its finite-sample guarantee is coverage >= level for exchangeable scores; infinite when the
    calibration set is too small to promise that level.
    """
    scores = np.sort(np.asarray(scores, dtype="float64"))
    n = scores.size
    rank = math.ceil((n + 1) * level - 1e-9)  # so that e.g. (19 + 1) * 0.95 is rank 19, not 20
    if n == 0 or rank > n:
        return math.inf
    return float(scores[rank - 1])


@dataclass(frozen=True)
class IntervalCalibration:
    """A fitted interval method: per level, the multiple of sigma an interval reaches on each side.

    `quantiles` are the current (tracked) multiples, used for the next session's interval;
    `calibrated_quantiles` are the split-conformal starting values, which also set the step size.
    Stored in the model's spec.json through `pipeline.common.codec`.
    """

    # Specs have always carried these numbers as `json.dumps` writes them.
    __pydantic_config__ = KEEP_NON_FINITE

    levels: tuple[float, ...]
    quantiles: tuple[float, ...]
    calibrated_quantiles: tuple[float, ...]
    step: float = TRACKING_STEP
    ewma_lambda: float = RISKMETRICS_LAMBDA
    ewma_window: int = EWMA_WINDOW
    min_returns: int = MIN_RETURNS
    n_calibration: int = 0
    n_tracked: int = 0
    method: str = METHOD

    def __post_init__(self) -> None:
        check_levels(self.levels)
        if not len(self.levels) == len(self.quantiles) == len(self.calibrated_quantiles):
            raise ValueError("need one quantile and one calibrated quantile per level")
        if not all(math.isfinite(q) and q >= 0 for q in (*self.quantiles, *self.calibrated_quantiles)):
            raise ValueError(f"quantiles must be finite and non-negative, got {self.quantiles}")
        if self.step < 0:
            raise ValueError(f"step must be non-negative, got {self.step}")

    @model_validator(mode="before")
    @classmethod
    def _untracked(cls, values: Any) -> Any:
        """Stored without its starting quantiles, a calibration starts (and sets its step) from its current ones."""
        if isinstance(values, Mapping) and "calibrated_quantiles" not in values and "quantiles" in values:
            return {**values, "calibrated_quantiles": values["quantiles"]}
        return values

    def quantile(self, level: float) -> float:
        for known, q in zip(self.levels, self.quantiles, strict=False):
            if math.isclose(known, level):
                return q
        raise KeyError(f"no calibrated quantile for level {level}; have {self.levels}")


def conformity_scores(
    closes: np.ndarray,
    as_of_index: np.ndarray | Sequence[int],
    forecasts: np.ndarray,
    ewma_lambda: float = RISKMETRICS_LAMBDA,
    ewma_window: int = EWMA_WINDOW,
    min_returns: int = MIN_RETURNS,
) -> np.ndarray:
    """|log(actual / forecast)| / sigma_t for forecasts made at the given as-of positions (actual = next close)."""
    closes = np.asarray(closes, dtype="float64")
    positions = as_of_positions(closes, as_of_index)
    if positions.size and positions.max() + 1 >= len(closes):
        raise IndexError("the last as-of session has no next close to score against")
    forecasts = _forecasts_for(positions, forecasts)
    sigma = ewma_volatility(closes, ewma_lambda, ewma_window, min_returns)[positions]
    return scaled_scores(closes[positions + 1], forecasts, sigma)


def scaled_scores(actual: np.ndarray, forecasts: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """|log(actual / forecast)| / sigma: the conformity score of any volatility-scaled interval."""
    return np.abs(np.log(actual / forecasts)) / np.maximum(sigma, SIGMA_FLOOR)


def _forecasts_for(positions: np.ndarray, forecasts: np.ndarray) -> np.ndarray:
    forecasts = np.asarray(forecasts, dtype="float64")
    if forecasts.shape != positions.shape:
        raise ValueError(f"{positions.size} as-of sessions but {forecasts.size} forecasts")
    return forecasts


def calibrate(
    closes: np.ndarray,
    as_of_index: np.ndarray | Sequence[int],
    forecasts: np.ndarray,
    levels: Sequence[float] = LEVELS,
    step: float = TRACKING_STEP,
    ewma_lambda: float = RISKMETRICS_LAMBDA,
    ewma_window: int = EWMA_WINDOW,
    min_returns: int = MIN_RETURNS,
) -> IntervalCalibration:
    """Fit the interval quantiles on calibration sessions and the forecasts made there.

    Calibrate on the validation sessions: out-of-sample forecasts, none of them a test session.

    Sessions without a volatility yet (too little history) are left out of the calibration set.
    Raises ValueError when too few remain to promise the highest level (19 for 95%).
    """
    levels = check_levels(levels)
    scores = conformity_scores(closes, as_of_index, forecasts, ewma_lambda, ewma_window, min_returns)
    scores = scores[np.isfinite(scores)]
    quantiles = tuple(conformal_quantile(scores, level) for level in levels)
    if not all(math.isfinite(q) for q in quantiles):
        needed = math.ceil(1 / (1 - max(levels))) - 1
        raise ValueError(f"{scores.size} calibration sessions; a {max(levels):.0%} interval needs at least {needed}")
    return IntervalCalibration(
        levels=levels,
        quantiles=quantiles,
        calibrated_quantiles=quantiles,
        step=float(step),
        ewma_lambda=float(ewma_lambda),
        ewma_window=int(ewma_window),
        min_returns=int(min_returns),
        n_calibration=int(scores.size),
    )


def _bounds(forecasts: np.ndarray, q: np.ndarray | float, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    half_width = q * np.maximum(sigma, SIGMA_FLOOR)  # NaN sigma (short history) stays NaN
    return forecasts * np.exp(-half_width), forecasts * np.exp(half_width)


def prediction_intervals(
    closes: np.ndarray,
    forecasts: np.ndarray,
    calibration: IntervalCalibration,
    as_of_index: np.ndarray | Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Intervals around `forecasts` made at the as-of positions (default: every close), e.g. lower_80, upper_95.

    Uses the calibration's current quantiles as they are (no tracking): what the served model does
    for the session after its last close. Only closes up to each as-of session are used. NaN where
    the history is too short for a volatility.
    """
    closes = np.asarray(closes, dtype="float64")
    positions = as_of_positions(closes, as_of_index)
    forecasts = _forecasts_for(positions, forecasts)
    sigma = ewma_volatility(closes, calibration.ewma_lambda, calibration.ewma_window, calibration.min_returns)
    intervals: dict[str, np.ndarray] = {}
    for level, q in zip(calibration.levels, calibration.quantiles, strict=False):
        lower, upper = interval_columns(level)
        intervals[lower], intervals[upper] = _bounds(forecasts, q, sigma[positions])
    return intervals


def tracked_intervals(
    closes: np.ndarray,
    forecasts: np.ndarray,
    calibration: IntervalCalibration,
    as_of_index: np.ndarray | Sequence[int],
) -> tuple[dict[str, np.ndarray], IntervalCalibration]:
    """Intervals for consecutive sessions (e.g. the test sessions), updating the quantiles after each outcome.

    Session t's interval uses the quantiles left by the outcomes of the earlier sessions only (their
    next closes are known by t's close), then its own outcome moves them: a miss widens, a hit
    narrows, by eta * (miss - alpha). Returns the intervals and the calibration with the quantiles
    reached after the last known outcome: the state to store for the next session.
    """
    closes = np.asarray(closes, dtype="float64")
    positions = as_of_positions(closes, as_of_index)
    if np.any(np.diff(positions) <= 0):
        raise ValueError("tracking needs as-of positions in increasing order")
    forecasts = _forecasts_for(positions, forecasts)
    sigma = ewma_volatility(closes, calibration.ewma_lambda, calibration.ewma_window, calibration.min_returns)
    intervals, tracked, learned = track(
        closes,
        positions,
        forecasts,
        sigma[positions],
        zip(calibration.levels, calibration.quantiles, calibration.calibrated_quantiles, strict=False),
        calibration.step,
    )
    return intervals, replace(calibration, quantiles=tracked, n_tracked=calibration.n_tracked + learned)


def track(
    closes: np.ndarray,
    positions: np.ndarray,
    forecasts: np.ndarray,
    sigma: np.ndarray,
    start: Iterable[tuple[float, float, float]],
    step: float,
) -> tuple[dict[str, np.ndarray], tuple[float, ...], int]:
    """Quantile tracking of any volatility-scaled interval over consecutive as-of `positions` (`forecasts` and
    `sigma` given at each), from `start`: (level, current quantile, calibrated quantile) per level. Returns the
    intervals, the quantiles after the last known outcome, and how many outcomes moved them."""
    actual = np.full(positions.size, np.nan)
    has_next = positions + 1 < len(closes)
    actual[has_next] = closes[positions[has_next] + 1]
    # Only a given interval with a known outcome has anything to teach.
    learns = np.isfinite(actual) & np.isfinite(sigma) & np.isfinite(forecasts)

    intervals: dict[str, np.ndarray] = {}
    tracked = []
    for level, q, q0 in start:
        lower_name, upper_name = interval_columns(level)
        alpha, eta = 1 - level, step * q0
        quantile_used = np.empty(positions.size)
        for k in range(positions.size):
            quantile_used[k] = q
            if not learns[k]:
                continue
            lower, upper = _bounds(forecasts[k], q, sigma[k])
            missed = not (lower <= actual[k] <= upper)
            q = max(0.0, q + eta * (missed - alpha))
        intervals[lower_name], intervals[upper_name] = _bounds(forecasts, quantile_used, sigma)
        tracked.append(float(q))
    return intervals, tuple(tracked), int(learns.sum())
