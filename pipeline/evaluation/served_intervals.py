"""The intervals a champion serves around its point forecast, chosen per ticker on validation sessions only.

Candidates, each a one-step-ahead scale of the next log return, known at the as-of close:
  - `empirical`: the alpha/2 and 1 - alpha/2 quantiles of the last 250 log returns (historical simulation);
  - `ewma`: RiskMetrics EWMA volatility of close-to-close returns (lambda 0.94);
  - `garch`: GARCH(1,1)-t volatility (`arch`), fitted once on the 1,000 returns before the calibration window;
  - `har_parkinson`: a HAR model (Corsi 2009) of the log Parkinson (1980) range variance, fitted on up to 2,500
    sessions before the calibration window: the candidate that uses what the data holds beyond closes.
The three volatilities become intervals by split-conformal calibration of |log(actual / forecast)| / sigma, with the
(n + 1) correction (Lei et al. 2018), kept calibrated by quantile tracking (Angelopoulos, Candès and Tibshirani
2023): the machinery of the LSTM's own intervals (`pipeline.models.conformal`).

Windows, all before `first_out_of_sample` (the first as-of session whose interval must be out of sample):

    ... fit | calibration (250 sessions) | validation (250 sessions) | out of sample ...

Each candidate is calibrated on the calibration window and scored, tracked, on the validation window. The chosen one
has the lowest Winkler score (80% and 95%, each relative to the empirical candidate's) among those covering within 3
points of both levels (all of them, if none does); it is then recalibrated on the validation window, the most recent
one, and tracked from there. Nothing at or after `first_out_of_sample` touches the choice or its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.evaluation.interval_scores import winkler_scores
from pipeline.models.conformal import TRACKING_STEP, conformal_quantile
from pipeline.models.intervals import LEVELS, interval_columns, level_name
from pipeline.models.volatility import ewma_volatility
from pipeline.models.volatility_estimators import (
    GARCH_SCALE,
    MIN_GARCH_RETURNS,
    GarchParams,
    HarCoefficients,
    fit_garch_t,
    fit_har,
    garch_forecasts,
    har_sigma,
    parkinson,
)

EMPIRICAL, EWMA, GARCH, HAR_PARKINSON = "empirical", "ewma", "garch", "har_parkinson"
CANDIDATES = (EMPIRICAL, EWMA, GARCH, HAR_PARKINSON)
DESCRIPTIONS = {
    EMPIRICAL: "empirical quantiles of the last 250 log returns",
    EWMA: "EWMA-volatility-scaled conformal, tracked",
    GARCH: "GARCH(1,1)-t-volatility-scaled conformal, tracked",
    HAR_PARKINSON: "HAR(Parkinson range variance)-scaled conformal, tracked",
}
WINDOW = 250
EMPIRICAL_LOOKBACK = 250
GARCH_FIT = 1000
HAR_FIT = 2500
# Fewer sessions than this before the calibration window do not pin a HAR or GARCH fit down: the candidate sits out.
MIN_FIT = 250
# A candidate whose validation coverage strays further than this from a level is chosen only if every one does.
COVERAGE_TOLERANCE = 0.03


@dataclass(frozen=True)
class IntervalChoice:
    """The method chosen before `first_out_of_sample`, its parameters, and what every candidate scored."""

    method: str
    first_out_of_sample: int
    # The conformal quantile per level after recalibration on the validation window (empty for `empirical`).
    quantiles: tuple[float, ...]
    validation: dict[str, dict[str, float]]
    har: HarCoefficients | None = None
    garch: GarchParams | None = None

    @property
    def description(self) -> str:
        return f"{DESCRIPTIONS[self.method]}; chosen on the {WINDOW} validation sessions"


@dataclass(frozen=True)
class _Prices:
    closes: np.ndarray
    forecasts: np.ndarray
    ohlc: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _prices(history: pd.DataFrame, forecasts: np.ndarray) -> _Prices:
    columns = tuple(history[c].to_numpy(dtype="float64") for c in ("Open", "High", "Low", "Close"))
    forecasts = np.asarray(forecasts, dtype="float64")
    if forecasts.shape != columns[3].shape:
        raise ValueError(f"{forecasts.size} forecasts for {columns[3].size} sessions")
    return _Prices(columns[3], forecasts, columns)  # type: ignore[arg-type]


def _scales(prices: _Prices, fit_end: int) -> tuple[dict[str, np.ndarray], HarCoefficients | None, GarchParams | None]:
    """sigma per as-of position for each volatility candidate; parameters fitted on sessions before `fit_end`."""
    closes = prices.closes
    scales = {EWMA: ewma_volatility(closes)}
    returns = np.diff(np.log(closes))  # returns[k] is the return into close k + 1
    garch = None
    if fit_end - 1 >= MIN_GARCH_RETURNS:
        garch = fit_garch_t(GARCH_SCALE * returns[max(0, fit_end - 1 - GARCH_FIT) : fit_end - 1])
    if garch is not None:
        sigma = np.full(closes.size, np.nan)
        # As-of close i knows returns[: i]; the forecast of return i (into close i + 1) sits at index i - 1.
        sigma[1:] = np.sqrt(garch_forecasts(GARCH_SCALE * returns, garch)) / GARCH_SCALE
        scales[GARCH] = sigma
    har = None
    if fit_end >= MIN_FIT:
        variance = parkinson(*prices.ohlc)
        try:
            har = fit_har(variance, fit_end, train_start=max(0, fit_end - HAR_FIT))
        except ValueError:  # too few usable sessions (flat or missing ranges)
            har = None
    if har is not None:
        scales[HAR_PARKINSON] = har_sigma(parkinson(*prices.ohlc), har)
    return scales, har, garch


def _empirical(prices: _Prices, positions: np.ndarray) -> dict[str, np.ndarray]:
    returns = np.diff(np.log(prices.closes))
    bounds: dict[str, np.ndarray] = {}
    for level in LEVELS:
        lower, upper = interval_columns(level)
        tail = (1 - level) / 2
        quantiles = np.array(
            [np.quantile(returns[max(0, i - EMPIRICAL_LOOKBACK) : i], [tail, 1 - tail]) for i in positions]
        )
        bounds[lower] = prices.forecasts[positions] * np.exp(quantiles[:, 0])
        bounds[upper] = prices.forecasts[positions] * np.exp(quantiles[:, 1])
    return bounds


def _calibrate(prices: _Prices, sigma: np.ndarray, window: np.ndarray) -> tuple[float, ...]:
    scores = np.abs(np.log(prices.closes[window + 1] / prices.forecasts[window])) / sigma[window]
    scores = scores[np.isfinite(scores)]
    return tuple(conformal_quantile(scores, level) for level in LEVELS)


def _tracked(
    prices: _Prices, sigma: np.ndarray, quantiles: tuple[float, ...], positions: np.ndarray
) -> dict[str, np.ndarray]:
    """Bounds over consecutive positions, each quantile moved after every known outcome (as the LSTM's are)."""
    forecasts, scale = prices.forecasts[positions], sigma[positions]
    known = positions + 1 < prices.closes.size
    actual = np.where(known, prices.closes[np.minimum(positions + 1, prices.closes.size - 1)], np.nan)
    bounds: dict[str, np.ndarray] = {}
    for level, q0 in zip(LEVELS, quantiles, strict=True):
        lower, upper = interval_columns(level)
        q, used = q0, np.empty(positions.size)
        for k in range(positions.size):
            used[k] = q
            half = q * scale[k]
            if known[k] and math.isfinite(half) and math.isfinite(forecasts[k]):
                missed = not forecasts[k] * math.exp(-half) <= actual[k] <= forecasts[k] * math.exp(half)
                q = max(0.0, q + TRACKING_STEP * q0 * (missed - (1 - level)))
        bounds[lower], bounds[upper] = forecasts * np.exp(-used * scale), forecasts * np.exp(used * scale)
    return bounds


def _summary(prices: _Prices, bounds: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, float]:
    actual = prices.closes[positions + 1]
    summary: dict[str, float] = {}
    for level in LEVELS:
        lower, upper = (bounds[c] for c in interval_columns(level))
        suffix = level_name(level)
        summary[f"coverage_{suffix}"] = float(np.mean((actual >= lower) & (actual <= upper)))
        summary[f"winkler_{suffix}"] = float(np.mean(winkler_scores(actual, lower, upper, level)))
    return summary


def _choose(validation: dict[str, dict[str, float]]) -> str:
    def close_to_nominal(scores: dict[str, float]) -> bool:
        return all(
            abs(scores[f"coverage_{level_name(level)}"] - level) <= COVERAGE_TOLERANCE + 1e-12 for level in LEVELS
        )

    pool = [m for m in CANDIDATES if m in validation and close_to_nominal(validation[m])] or [
        m for m in CANDIDATES if m in validation
    ]
    reference = validation[EMPIRICAL]

    def relative_winkler(method: str) -> float:
        scores = validation[method]
        return sum(scores[f"winkler_{level_name(lv)}"] / reference[f"winkler_{level_name(lv)}"] for lv in LEVELS)

    return min(pool, key=relative_winkler)


def choose_intervals(history: pd.DataFrame, forecasts: np.ndarray, first_out_of_sample: int) -> IntervalChoice:
    """The method to serve from `first_out_of_sample` on, chosen on the validation window before it.

    `forecasts[i]` is the point forecast made at as-of position i (for close i + 1), NaN where there is none.
    Raises ValueError when the history before `first_out_of_sample` is shorter than the two windows.
    """
    prices = _prices(history, forecasts)
    validation_window = np.arange(first_out_of_sample - WINDOW, first_out_of_sample)
    calibration_window = validation_window - WINDOW
    if calibration_window[0] < 1 or not np.all(
        np.isfinite(prices.forecasts[calibration_window[0] : first_out_of_sample])
    ):
        raise ValueError(f"choosing an interval method needs {2 * WINDOW + 1} sessions with forecasts before it")
    scales, har, garch = _scales(prices, fit_end=int(calibration_window[0]))
    validation = {EMPIRICAL: _summary(prices, _empirical(prices, validation_window), validation_window)}
    for method, sigma in scales.items():
        quantiles = _calibrate(prices, sigma, calibration_window)
        if all(math.isfinite(q) for q in quantiles) and np.all(np.isfinite(sigma[validation_window])):
            tracked = _tracked(prices, sigma, quantiles, validation_window)
            validation[method] = _summary(prices, tracked, validation_window)
    method = _choose(validation)
    final = () if method == EMPIRICAL else _calibrate(prices, scales[method], validation_window)
    return IntervalChoice(
        method,
        first_out_of_sample,
        final,
        validation,
        har if method == HAR_PARKINSON else None,
        garch if method == GARCH else None,
    )


def served_bounds(
    history: pd.DataFrame, forecasts: np.ndarray, choice: IntervalChoice, positions: np.ndarray
) -> dict[str, np.ndarray]:
    """The chosen method's bounds at `positions` (increasing, none before the choice's first out-of-sample one),
    tracked through every session from there, each using only outcomes known by its as-of close."""
    prices = _prices(history, forecasts)
    positions = np.asarray(positions, dtype="int64")
    if positions.size and positions[0] < choice.first_out_of_sample:
        raise ValueError("served bounds start at the choice's first out-of-sample session")
    if choice.method == EMPIRICAL:
        return _empirical(prices, positions)
    scales, _har, _garch = _scales(prices, fit_end=choice.first_out_of_sample - 2 * WINDOW)
    span = np.arange(choice.first_out_of_sample, int(positions.max()) + 1) if positions.size else positions
    tracked = _tracked(prices, scales[choice.method], choice.quantiles, span)
    picked = positions - choice.first_out_of_sample
    return {column: values[picked] for column, values in tracked.items()}
