"""The intervals a champion serves around its point forecast, chosen per ticker on validation sessions only.

Candidates, each a one-step-ahead scale of the next log return, known at the as-of close:
  - `empirical`: the alpha/2 and 1 - alpha/2 quantiles of the last 250 log returns (historical simulation);
  - `ewma`: RiskMetrics EWMA volatility of close-to-close returns (lambda 0.94);
  - `garch`: GARCH(1,1)-t volatility (`arch`), fitted once on the 1,000 returns before the calibration window;
  - `har_garman_klass`: a HAR model (Corsi 2009) of the log Garman-Klass (1980) range variance, fitted on up to
    2,500 sessions before the calibration window: the candidate that uses what the data holds beyond closes;
  - `lhar_garman_klass`: the same with Corsi & Renò's (2012) leverage terms (falls raise tomorrow's range);
  - `garch_har`: the geometric mean of the GARCH and HAR volatilities, a forecast combination.
The volatilities become intervals by split-conformal calibration of |log(actual / forecast)| / sigma, with the
(n + 1) correction (Lei et al. 2018), kept calibrated by quantile tracking (Angelopoulos, Candès and Tibshirani
2023): the machinery of the LSTM's own intervals (`pipeline.models.conformal`).

Windows, all before `first_out_of_sample` (the first as-of session whose interval must be out of sample):

    ... fit | calibration (250 sessions) | validation (250 to 500 sessions) | out of sample ...

Each candidate is calibrated on the calibration window and scored, tracked, on the validation window: 500 sessions
where the history allows, since a Winkler score over 250 sessions is too noisy to rank methods a few percent apart.
The chosen one has the lowest Winkler score (80% and 95%, each relative to the empirical candidate's) among those
covering within 3 points of both levels (all of them, if none does); it is then recalibrated on the last 250
sessions, the most recent ones, and tracked from there. Nothing at or after `first_out_of_sample` touches the
choice or its parameters.

The candidate set and the window lengths were picked on rolling 250-session blocks that all end before the bench's
test sessions (`bench/interval_blocks.py`, 72 blocks of MSFT and GSPC): the chosen method's Winkler score was no
worse than a GARCH(1,1)-t refitted every 20 sessions at both levels in 83% of blocks, against 59% for the earlier
set (a Parkinson HAR, no combination, 250 validation sessions).
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
    garman_klass,
    har_sigma,
)

EMPIRICAL, EWMA, GARCH = "empirical", "ewma", "garch"
HAR_GK, LHAR_GK, GARCH_HAR = "har_garman_klass", "lhar_garman_klass", "garch_har"
CANDIDATES = (EMPIRICAL, EWMA, GARCH, HAR_GK, GARCH_HAR, LHAR_GK)
USES_HAR = {HAR_GK: "har", GARCH_HAR: "har", LHAR_GK: "lhar"}
USES_GARCH = (GARCH, GARCH_HAR)
DESCRIPTIONS = {
    EMPIRICAL: NAIVE_INTERVAL_METHOD,
    EWMA: "EWMA-volatility-scaled conformal, tracked",
    GARCH: "GARCH(1,1)-t-volatility-scaled conformal, tracked",
    HAR_GK: "HAR(Garman-Klass range variance)-scaled conformal, tracked",
    LHAR_GK: "leverage HAR(Garman-Klass range variance)-scaled conformal, tracked",
    GARCH_HAR: "geometric mean of GARCH(1,1)-t and HAR(Garman-Klass) volatility, scaled conformal, tracked",
}
WINDOW = 250
LONGEST_VALIDATION = 500
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
    validation_sessions: int = WINDOW

    @property
    def description(self) -> str:
        return f"{DESCRIPTIONS[self.method]}; chosen on the {self.validation_sessions} validation sessions"


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
    lhar: HarCoefficients | None
    garch: GarchParams | None

    @classmethod
    def of(cls, choice: IntervalChoice) -> _Fits:
        """The fits a choice kept: only its own method's."""
        return cls(choice.har, choice.har, choice.garch)


def _fit(prices: _Prices, fit_end: int) -> _Fits:
    """GARCH(1,1)-t and HAR fitted on the sessions before `fit_end` only."""
    returns = np.diff(np.log(prices.closes))  # returns[k] is the return into close k + 1
    garch = None
    if fit_end - 1 >= MIN_GARCH_RETURNS:
        garch = fit_garch_t(GARCH_SCALE * returns[max(0, fit_end - 1 - GARCH_FIT) : fit_end - 1])
    return _Fits(_fit_har(prices, fit_end, leverage=False), _fit_har(prices, fit_end, leverage=True), garch)


def _fit_har(prices: _Prices, fit_end: int, leverage: bool) -> HarCoefficients | None:
    if fit_end < MIN_FIT:
        return None
    returns = _returns(prices) if leverage else None
    try:
        return fit_har(garman_klass(*prices.ohlc), fit_end, max(0, fit_end - HAR_FIT), returns)
    except ValueError:  # too few usable sessions (flat or missing ranges)
        return None


def _returns(prices: _Prices) -> np.ndarray:
    """r[t] = log(C_t / C_{t-1}), NaN at the first session: the leverage terms' input, aligned with the closes."""
    return np.concatenate([[np.nan], np.diff(np.log(prices.closes))])


def _sigma(prices: _Prices, method: str, fits: _Fits) -> np.ndarray | None:
    """One candidate's volatility at every as-of position, from already fitted models; None if it has none."""
    if method == EWMA:
        return ewma_volatility(prices.closes)
    if method == GARCH:
        return _garch_sigma(prices, fits.garch)
    if method == HAR_GK:
        return _har_sigma(prices, fits.har)
    if method == LHAR_GK:
        return _har_sigma(prices, fits.lhar)
    if method == GARCH_HAR:
        garch, har = _garch_sigma(prices, fits.garch), _har_sigma(prices, fits.har)
        return None if garch is None or har is None else np.sqrt(garch * har)
    return None


def _garch_sigma(prices: _Prices, params: GarchParams | None) -> np.ndarray | None:
    if params is None:
        return None
    returns = np.diff(np.log(prices.closes))
    sigma = np.full(prices.closes.size, np.nan)
    # As-of close i knows returns[: i]; the forecast of return i (into close i + 1) sits at index i - 1.
    sigma[1:] = np.sqrt(garch_forecasts(GARCH_SCALE * returns, params)) / GARCH_SCALE
    return sigma


def _har_sigma(prices: _Prices, coefficients: HarCoefficients | None) -> np.ndarray | None:
    if coefficients is None:
        return None
    returns = None if coefficients.leverage is None else _returns(prices)
    return har_sigma(garman_klass(*prices.ohlc), coefficients, returns)


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
    room = first_out_of_sample - 1 - WINDOW - MIN_FIT  # what is left for validation once fits can be made
    length = min(max(room, WINDOW), LONGEST_VALIDATION)
    validation_window = np.arange(first_out_of_sample - length, first_out_of_sample)
    calibration_window = np.arange(validation_window[0] - WINDOW, validation_window[0])
    if calibration_window[0] < 1:
        raise ValueError(f"choosing an interval method needs {2 * WINDOW + 1} sessions with forecasts before it")
    recent = validation_window[-WINDOW:]
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
            # Recalibrated on the most recent sessions, for serving after them.
            quantiles[method] = _calibrate(prices, sigma, recent)
    method = _choose(validation)
    return IntervalChoice(
        method,
        first_out_of_sample,
        quantiles.get(method, ()),
        validation,
        getattr(fits, USES_HAR[method]) if method in USES_HAR else None,
        fits.garch if method in USES_GARCH else None,
        int(validation_window.size),
    )


def served_bounds(history: pd.DataFrame, choice: IntervalChoice, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The chosen method's bounds at `positions` (increasing, none before the choice's first out-of-sample one),
    tracked through every session from there, each using only outcomes known by its as-of close."""
    prices = _prices(history)
    positions = np.asarray(positions, dtype="int64")
    if positions.size and positions[0] < choice.first_out_of_sample:
        raise ValueError("served bounds start at the choice's first out-of-sample session")
    sigma = _sigma(prices, choice.method, _Fits.of(choice))
    if sigma is None:
        return naive_intervals(prices.closes, positions)
    span = np.arange(choice.first_out_of_sample, int(positions.max()) + 1) if positions.size else positions
    tracked = _tracked(prices, sigma, choice.quantiles, span)
    picked = positions - choice.first_out_of_sample
    return {column: values[picked] for column, values in tracked.items()}
