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

from pipeline.evaluation.interval_scores import score_interval
from pipeline.models.conformal import TRACKING_STEP, conformal_quantile, scaled_scores, track
from pipeline.models.intervals import LEVELS, interval_columns, level_name
from pipeline.models.naive_intervals import NAIVE_INTERVAL_METHOD, naive_intervals
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
    EMPIRICAL: NAIVE_INTERVAL_METHOD,
    EWMA: "EWMA-volatility-scaled conformal, tracked",
    GARCH: "GARCH(1,1)-t-volatility-scaled conformal, tracked",
    HAR_PARKINSON: "HAR(Parkinson range variance)-scaled conformal, tracked",
}
WINDOW = 250
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
    ohlc: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _prices(history: pd.DataFrame) -> _Prices:
    open_, high, low, close = (history[c].to_numpy(dtype="float64") for c in ("Open", "High", "Low", "Close"))
    return _Prices(close, (open_, high, low, close))


@dataclass(frozen=True)
class _Fits:
    """The fitted volatility models (None where the history before the fit's end cannot pin one down)."""

    har: HarCoefficients | None
    garch: GarchParams | None


def _fit(prices: _Prices, fit_end: int) -> _Fits:
    """GARCH(1,1)-t and HAR fitted on the sessions before `fit_end` only."""
    returns = np.diff(np.log(prices.closes))  # returns[k] is the return into close k + 1
    garch = None
    if fit_end - 1 >= MIN_GARCH_RETURNS:
        garch = fit_garch_t(GARCH_SCALE * returns[max(0, fit_end - 1 - GARCH_FIT) : fit_end - 1])
    har = None
    if fit_end >= MIN_FIT:
        try:
            har = fit_har(parkinson(*prices.ohlc), fit_end, train_start=max(0, fit_end - HAR_FIT))
        except ValueError:  # too few usable sessions (flat or missing ranges)
            har = None
    return _Fits(har, garch)


def _sigma(prices: _Prices, method: str, fits: _Fits) -> np.ndarray | None:
    """One candidate's volatility at every as-of position, from already fitted models; None if it has none."""
    if method == EWMA:
        return ewma_volatility(prices.closes)
    if method == GARCH and fits.garch is not None:
        returns = np.diff(np.log(prices.closes))
        sigma = np.full(prices.closes.size, np.nan)
        # As-of close i knows returns[: i]; the forecast of return i (into close i + 1) sits at index i - 1.
        sigma[1:] = np.sqrt(garch_forecasts(GARCH_SCALE * returns, fits.garch)) / GARCH_SCALE
        return sigma
    if method == HAR_PARKINSON and fits.har is not None:
        return har_sigma(parkinson(*prices.ohlc), fits.har)
    return None


def _calibrate(prices: _Prices, sigma: np.ndarray, window: np.ndarray) -> tuple[float, ...]:
    scores = scaled_scores(prices.closes[window + 1], prices.closes[window], sigma[window])
    scores = scores[np.isfinite(scores)]
    return tuple(conformal_quantile(scores, level) for level in LEVELS)


def _tracked(
    prices: _Prices, sigma: np.ndarray, quantiles: tuple[float, ...], positions: np.ndarray
) -> dict[str, np.ndarray]:
    """Bounds over consecutive positions, each quantile moved after every known outcome (as the LSTM's are)."""
    start = zip(LEVELS, quantiles, quantiles, strict=True)
    bounds, _, _ = track(prices.closes, positions, prices.closes[positions], sigma[positions], start, TRACKING_STEP)
    return bounds


def _summary(prices: _Prices, bounds: dict[str, np.ndarray], positions: np.ndarray) -> dict[str, float]:
    actual, last = prices.closes[positions + 1], prices.closes[positions]
    summary: dict[str, float] = {}
    for level in LEVELS:
        lower, upper = (bounds[c] for c in interval_columns(level))
        score = score_interval(actual, lower, upper, level, last)
        summary[f"coverage_{level_name(level)}"] = score.coverage
        summary[f"winkler_{level_name(level)}"] = score.winkler
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


def choose_intervals(history: pd.DataFrame, first_out_of_sample: int) -> IntervalChoice:
    """The method a naive champion serves from as-of position `first_out_of_sample` on, chosen on the validation
    window before it. Raises ValueError when the history before it is shorter than the two windows."""
    prices = _prices(history)
    validation_window = np.arange(first_out_of_sample - WINDOW, first_out_of_sample)
    calibration_window = validation_window - WINDOW
    if calibration_window[0] < 1:
        raise ValueError(f"choosing an interval method needs {2 * WINDOW + 1} sessions with forecasts before it")
    fits = _fit(prices, fit_end=int(calibration_window[0]))
    empirical = naive_intervals(prices.closes, validation_window)
    validation = {EMPIRICAL: _summary(prices, empirical, validation_window)}
    quantiles: dict[str, tuple[float, ...]] = {}
    for method in CANDIDATES[1:]:
        sigma = _sigma(prices, method, fits)
        if sigma is None or not np.all(np.isfinite(sigma[validation_window])):
            continue
        start = _calibrate(prices, sigma, calibration_window)
        if all(math.isfinite(q) for q in start):
            validation[method] = _summary(prices, _tracked(prices, sigma, start, validation_window), validation_window)
            # Recalibrated on the validation window, the most recent one, for serving after it.
            quantiles[method] = _calibrate(prices, sigma, validation_window)
    method = _choose(validation)
    return IntervalChoice(
        method,
        first_out_of_sample,
        quantiles.get(method, ()),
        validation,
        fits.har if method == HAR_PARKINSON else None,
        fits.garch if method == GARCH else None,
    )


def served_bounds(history: pd.DataFrame, choice: IntervalChoice, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The chosen method's bounds at `positions` (increasing, none before the choice's first out-of-sample one),
    tracked through every session from there, each using only outcomes known by its as-of close."""
    prices = _prices(history)
    positions = np.asarray(positions, dtype="int64")
    if positions.size and positions[0] < choice.first_out_of_sample:
        raise ValueError("served bounds start at the choice's first out-of-sample session")
    sigma = _sigma(prices, choice.method, _Fits(choice.har, choice.garch))
    if sigma is None:
        return naive_intervals(prices.closes, positions)
    span = np.arange(choice.first_out_of_sample, int(positions.max()) + 1) if positions.size else positions
    tracked = _tracked(prices, sigma, choice.quantiles, span)
    picked = positions - choice.first_out_of_sample
    return {column: values[picked] for column, values in tracked.items()}
