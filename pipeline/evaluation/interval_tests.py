"""Tests and proper scores of interval forecasts beyond coverage and width (issue 22).

- `kupiec_pof`: unconditional coverage, the proportion-of-failures likelihood ratio of Kupiec (1995,
  J. Derivatives 3(2), "Techniques for verifying the accuracy of risk measurement models").
- `christoffersen_independence`: first-order Markov independence of the exceedances, Christoffersen (1998,
  Int. Economic Review 39(4), "Evaluating interval forecasts").
- `pinball_loss` / `mean_pinball`: the quantile (pinball) loss, proper for a quantile (Koenker & Bassett 1978;
  Gneiting & Raftery 2007, JASA 102(477), §9), averaged over the quantiles an interval serves.

Both likelihood ratios are asymptotically chi-square with one degree of freedom. An exceedance is a session
whose actual value fell outside the interval (a NaN bound counts as one, as in `interval_scores`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from scipy import stats
from scipy.special import xlogy


class LikelihoodRatio(NamedTuple):
    statistic: float
    p_value: float


NO_TEST = LikelihoodRatio(math.nan, math.nan)


def _flags(exceedances: np.ndarray) -> np.ndarray:
    flags = np.asarray(exceedances)
    if flags.ndim != 1:
        raise ValueError(f"exceedances must be one-dimensional, got shape {flags.shape}")
    if flags.dtype != bool and not np.isin(flags, (0, 1)).all():
        raise ValueError("exceedances must be booleans or 0/1")
    return flags.astype(bool)


def _chi2_1(statistic: float) -> LikelihoodRatio:
    # Rounding can leave a log-likelihood difference a hair below zero when both models fit equally.
    statistic = max(float(statistic), 0.0)
    return LikelihoodRatio(statistic, float(stats.chi2.sf(statistic, df=1)))


def exceedances(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """True where `actual` fell outside [lower, upper], or where a bound is missing."""
    actual, lower, upper = (np.asarray(a, dtype="float64") for a in (actual, lower, upper))
    if not actual.shape == lower.shape == upper.shape:
        raise ValueError("actual and bounds must have the same shape")
    return ~((actual >= lower) & (actual <= upper))


def kupiec_pof(exceedances: np.ndarray, level: float) -> LikelihoodRatio:
    """LR = -2 ln[(1-p)^(n-x) p^x / ((1-x/n)^(n-x) (x/n)^x)], p = 1 - level, x exceedances in n sessions.

    With 0 ln 0 = 0 the ratio stays finite when x is 0 or n (then it is -2 n ln(1-p) or -2 n ln p); with no
    sessions there is nothing to test and both numbers are NaN.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    flags = _flags(exceedances)
    n, x = flags.size, int(flags.sum())
    if n == 0:
        return NO_TEST
    p, observed = 1 - level, x / n
    null = xlogy(n - x, 1 - p) + xlogy(x, p)
    alternative = xlogy(n - x, 1 - observed) + xlogy(x, observed)
    return _chi2_1(-2 * (null - alternative))


def transition_counts(exceedances: np.ndarray) -> tuple[int, int, int, int]:
    """(n00, n01, n10, n11): n_ij counts sessions in state j that follow a session in state i."""
    flags = _flags(exceedances)
    before, after = flags[:-1], flags[1:]
    return (
        int(np.sum(~before & ~after)),
        int(np.sum(~before & after)),
        int(np.sum(before & ~after)),
        int(np.sum(before & after)),
    )


def christoffersen_independence(exceedances: np.ndarray) -> LikelihoodRatio:
    """LR of a first-order Markov chain of exceedances against independence (Christoffersen 1998).

    pi01 = n01 / (n00 + n01), pi11 = n11 / (n10 + n11), pi = (n01 + n11) / (n - 1). An empty row (no
    exceedance at all, say, so n10 = n11 = 0) contributes nothing under either hypothesis (0 ln 0 = 0), so
    the test is 0 with p-value 1 rather than undefined; fewer than two sessions give NaN.
    """
    n00, n01, n10, n11 = transition_counts(exceedances)
    total = n00 + n01 + n10 + n11
    if total == 0:
        return NO_TEST

    def rate(hits: int, count: int) -> float:
        return hits / count if count else 0.0

    pi, pi01, pi11 = rate(n01 + n11, total), rate(n01, n00 + n01), rate(n11, n10 + n11)
    null = xlogy(n00 + n10, 1 - pi) + xlogy(n01 + n11, pi)
    markov = xlogy(n00, 1 - pi01) + xlogy(n01, pi01) + xlogy(n10, 1 - pi11) + xlogy(n11, pi11)
    return _chi2_1(-2 * (null - markov))


def pinball_loss(actual: np.ndarray, quantile_forecast: np.ndarray, tau: float) -> float:
    """Mean of max(tau (y - q), (tau - 1)(y - q)): the loss a tau-quantile forecast minimises in expectation."""
    if not 0 < tau < 1:
        raise ValueError(f"tau must lie strictly between 0 and 1, got {tau}")
    actual, forecast = (np.asarray(a, dtype="float64") for a in (actual, quantile_forecast))
    if actual.shape != forecast.shape:
        raise ValueError("actual and quantile_forecast must have the same shape")
    if actual.size == 0:
        return math.nan
    error = actual - forecast
    return float(np.mean(np.maximum(tau * error, (tau - 1) * error)))


def mean_pinball(actual: np.ndarray, intervals: Mapping[float, tuple[np.ndarray, np.ndarray]]) -> float:
    """Pinball loss averaged over the served quantiles: alpha/2 (lower) and 1 - alpha/2 (upper) of each level.

    Equal weights per quantile. A level's two pinball losses sum to alpha/2 times its Winkler score, so this
    is a Winkler score whose levels are weighted by alpha: it leans on the 80% interval more than the 95%.
    """
    if not intervals:
        raise ValueError("intervals must name at least one level")
    losses = []
    for level, (lower, upper) in intervals.items():
        if not 0 < level < 1:
            raise ValueError(f"interval levels must lie strictly between 0 and 1, got {level}")
        alpha = 1 - level
        losses.append(pinball_loss(actual, lower, alpha / 2))
        losses.append(pinball_loss(actual, upper, 1 - alpha / 2))
    return float(np.mean(losses))
