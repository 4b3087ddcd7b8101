"""Prediction intervals for next-session closes, and how well they hold up out of sample.

Method: volatility-scaled conformal prediction in log-return space with online quantile tracking.
A point forecast `f` for the close after as-of session t gets the interval `f * exp(±q * sigma_t)`:
  - `sigma_t` is a RiskMetrics EWMA volatility of the log returns up to and including session t
    (J.P. Morgan/Reuters, RiskMetrics Technical Document, 4th ed. 1996, §5.2; lambda = 0.94).
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

The naive interval baseline is `last close * exp(empirical quantiles of the previous N log returns)`.
Both are scored with coverage, width and the Winkler (1972) interval score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

LEVELS: tuple[float, ...] = (0.80, 0.95)
METHOD = "EWMA-volatility-scaled conformal, log returns, quantile tracking"
RISKMETRICS_LAMBDA = 0.94
# lambda**250 is about 2e-7, so a year of returns reproduces the infinite EWMA recursion exactly for
# all practical purposes, and sigma depends on a fixed trailing window (not on how much history a
# client happens to send).
EWMA_WINDOW = 250
# Below this many returns neither a volatility nor an empirical quantile means much: no interval.
MIN_RETURNS = 20
NAIVE_LOOKBACK = 250
# Quantile-tracking step, relative to the calibrated quantile. Chosen on a rolling backtest over every
# 250-session block before the bundled test sessions (MSFT 1986-2016, GSPC 1999-2017): the smallest step
# on the grid 0 / 0.02 / 0.04 that kept both coverages of every block within ±3 points of nominal, for
# MSFT and GSPC and calibration windows of 250, 500 and 1000 sessions. Its price, the Winkler score,
# rose by under 1% against no tracking.
TRACKING_STEP = 0.04
# Keeps a stretch of unchanged closes (sigma = 0) from dividing by zero.
SIGMA_FLOOR = 1e-8


def level_name(level: float) -> str:
    """80 for 0.80, 95 for 0.95, 97.5 for 0.975: the suffix of the interval's column names."""
    percent = round(100 * level, 6)
    return f"{percent:g}"


def interval_columns(level: float) -> tuple[str, str]:
    suffix = level_name(level)
    return f"lower_{suffix}", f"upper_{suffix}"


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(float(level) for level in levels)
    if not levels or any(not 0 < level < 1 for level in levels):
        raise ValueError(f"interval levels must lie strictly between 0 and 1, got {levels}")
    return levels


def _as_of_positions(closes: np.ndarray, as_of_index: np.ndarray | Sequence[int] | None) -> np.ndarray:
    if as_of_index is None:
        return np.arange(len(closes))
    positions = np.asarray(as_of_index, dtype="int64")
    if positions.size and (positions.min() < 0 or positions.max() >= len(closes)):
        raise IndexError(f"as-of positions must lie in [0, {len(closes)}), got {positions.min()}..{positions.max()}")
    return positions


def _log_returns(closes: np.ndarray) -> np.ndarray:
    """r[k] is the log return into close k + 1."""
    return np.diff(np.log(np.asarray(closes, dtype="float64")))


def ewma_volatility(
    closes: np.ndarray,
    ewma_lambda: float = RISKMETRICS_LAMBDA,
    window: int = EWMA_WINDOW,
    min_returns: int = MIN_RETURNS,
) -> np.ndarray:
    """sigma[i] for every close index i: EWMA volatility of the log returns into closes 1..i.

    Zero-mean RiskMetrics variance, sum_k (1 - lambda) lambda**k r_{i-k}**2, over the last `window`
    returns with the weights renormalised to sum to one (which only matters when fewer than
    `window` returns exist). Uses nothing after close i; NaN where fewer than `min_returns` exist.
    """
    if not 0 < ewma_lambda < 1:
        raise ValueError(f"ewma_lambda must lie in (0, 1), got {ewma_lambda}")
    if window < 1 or min_returns < 1:
        raise ValueError("window and min_returns must be positive")
    closes = np.asarray(closes, dtype="float64")
    sigma = np.full(len(closes), np.nan)
    returns = _log_returns(closes)
    if len(returns) == 0:
        return sigma
    weights = ewma_lambda ** np.arange(window, dtype="float64")  # weights[j] for the return j sessions back
    weighted = np.convolve(returns**2, weights)[: len(returns)]
    available = np.minimum(np.arange(1, len(returns) + 1), window)
    variance = weighted / np.cumsum(weights)[available - 1]
    sigma[1:] = np.where(available >= min_returns, np.sqrt(variance), np.nan)
    return sigma


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
    """

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
        _check_levels(self.levels)
        if not len(self.levels) == len(self.quantiles) == len(self.calibrated_quantiles):
            raise ValueError("need one quantile and one calibrated quantile per level")
        if not all(math.isfinite(q) and q >= 0 for q in (*self.quantiles, *self.calibrated_quantiles)):
            raise ValueError(f"quantiles must be finite and non-negative, got {self.quantiles}")
        if self.step < 0:
            raise ValueError(f"step must be non-negative, got {self.step}")

    def quantile(self, level: float) -> float:
        for known, q in zip(self.levels, self.quantiles, strict=False):
            if math.isclose(known, level):
                return q
        raise KeyError(f"no calibrated quantile for level {level}; have {self.levels}")

    def to_dict(self) -> dict:
        values = asdict(self)
        for key in ("levels", "quantiles", "calibrated_quantiles"):
            values[key] = list(values[key])
        return values

    @classmethod
    def from_dict(cls, values: Mapping) -> IntervalCalibration:
        quantiles = tuple(float(v) for v in values["quantiles"])
        return cls(
            levels=tuple(float(v) for v in values["levels"]),
            quantiles=quantiles,
            calibrated_quantiles=tuple(float(v) for v in values.get("calibrated_quantiles", quantiles)),
            step=float(values.get("step", TRACKING_STEP)),
            ewma_lambda=float(values.get("ewma_lambda", RISKMETRICS_LAMBDA)),
            ewma_window=int(values.get("ewma_window", EWMA_WINDOW)),
            min_returns=int(values.get("min_returns", MIN_RETURNS)),
            n_calibration=int(values.get("n_calibration", 0)),
            n_tracked=int(values.get("n_tracked", 0)),
            method=str(values.get("method", METHOD)),
        )


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
    positions = _as_of_positions(closes, as_of_index)
    if positions.size and positions.max() + 1 >= len(closes):
        raise IndexError("the last as-of session has no next close to score against")
    forecasts = _forecasts_for(positions, forecasts)
    sigma = ewma_volatility(closes, ewma_lambda, ewma_window, min_returns)[positions]
    return np.abs(np.log(closes[positions + 1] / forecasts)) / np.maximum(sigma, SIGMA_FLOOR)


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
    levels = _check_levels(levels)
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
    positions = _as_of_positions(closes, as_of_index)
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
    positions = _as_of_positions(closes, as_of_index)
    if np.any(np.diff(positions) <= 0):
        raise ValueError("tracking needs as-of positions in increasing order")
    forecasts = _forecasts_for(positions, forecasts)
    sigma = ewma_volatility(closes, calibration.ewma_lambda, calibration.ewma_window, calibration.min_returns)
    sigma = sigma[positions]
    actual = np.full(positions.size, np.nan)
    has_next = positions + 1 < len(closes)
    actual[has_next] = closes[positions[has_next] + 1]
    # Only a given interval with a known outcome has anything to teach.
    learns = np.isfinite(actual) & np.isfinite(sigma) & np.isfinite(forecasts)

    intervals: dict[str, np.ndarray] = {}
    tracked = []
    for level, q, q0 in zip(calibration.levels, calibration.quantiles, calibration.calibrated_quantiles, strict=False):
        lower_name, upper_name = interval_columns(level)
        alpha, eta = 1 - level, calibration.step * q0
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
    return intervals, replace(
        calibration, quantiles=tuple(tracked), n_tracked=calibration.n_tracked + int(learns.sum())
    )


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
    levels = _check_levels(levels)
    closes = np.asarray(closes, dtype="float64")
    positions = _as_of_positions(closes, as_of_index)
    returns = _log_returns(closes)
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


@dataclass(frozen=True)
class IntervalScore:
    level: float
    n: int
    coverage: float
    mean_width: float
    mean_relative_width: float
    winkler: float

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Flat metrics for logging: coverage_80, width_80, relative_width_80, winkler_80, ... per level."""
    metrics: dict[str, float] = {}
    for level in _check_levels(levels):
        lower, upper = interval_columns(level)
        score = score_interval(actual, intervals[lower], intervals[upper], level, price)
        suffix = level_name(level)
        metrics[f"coverage_{suffix}"] = score.coverage
        metrics[f"width_{suffix}"] = score.mean_width
        metrics[f"relative_width_{suffix}"] = score.mean_relative_width
        metrics[f"winkler_{suffix}"] = score.winkler
    return metrics
