"""The volatility that scales the LSTM's prediction intervals: a RiskMetrics EWMA of daily log returns.

J.P. Morgan/Reuters, RiskMetrics Technical Document, 4th ed. 1996, §5.2 (lambda = 0.94).
"""

from __future__ import annotations

import numpy as np

RISKMETRICS_LAMBDA = 0.94
# lambda**250 is about 2e-7, so a year of returns reproduces the infinite EWMA recursion exactly for
# all practical purposes, and sigma depends on a fixed trailing window (not on how much history a
# client happens to send).
EWMA_WINDOW = 250
# Below this many returns neither a volatility nor an empirical quantile means much: no interval.
MIN_RETURNS = 20


def log_returns(closes: np.ndarray) -> np.ndarray:
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
    returns = log_returns(closes)
    if len(returns) == 0:
        return sigma
    weights = ewma_lambda ** np.arange(window, dtype="float64")  # weights[j] for the return j sessions back
    weighted = np.convolve(returns**2, weights)[: len(returns)]
    available = np.minimum(np.arange(1, len(returns) + 1), window)
    variance = weighted / np.cumsum(weights)[available - 1]
    sigma[1:] = np.where(available >= min_returns, np.sqrt(variance), np.nan)
    return sigma
