"""Forecast quality in price units, always next to the naive persistence forecast on the same days."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, root_mean_squared_error


def diebold_mariano(actual: np.ndarray, forecast: np.ndarray, benchmark: np.ndarray) -> tuple[float, float]:
    """One-step Diebold–Mariano test on squared errors with the Harvey–Leybourne–Newbold correction.

    A negative statistic means `forecast` beats `benchmark`; the p-value is two-sided (Student t).
    """
    loss_diff = (actual - forecast) ** 2 - (actual - benchmark) ** 2
    n = len(loss_diff)
    variance = np.var(loss_diff, ddof=0)
    if n < 3 or variance == 0:
        return 0.0, 1.0
    statistic = np.mean(loss_diff) / math.sqrt(variance / n)
    statistic *= math.sqrt((n - 1) / n)  # HLN small-sample correction for horizon 1
    p_value = 2 * stats.t.sf(abs(statistic), df=n - 1)
    return float(statistic), float(p_value)


def directional_accuracy(actual: np.ndarray, forecast: np.ndarray, last_close: np.ndarray) -> float:
    """Share of days where the forecast moved the same way as the price (a flat forecast never scores)."""
    predicted = np.sign(forecast - last_close)
    return float(np.mean((predicted != 0) & (predicted == np.sign(actual - last_close))))


def forecast_metrics(actual: np.ndarray, forecast: np.ndarray, last_close: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MAPE (%), directional accuracy, naive RMSE, U2 = RMSE / naive RMSE and DM vs naive."""
    rmse = root_mean_squared_error(actual, forecast)
    naive_rmse = root_mean_squared_error(actual, last_close)
    dm_stat, dm_p = diebold_mariano(actual, forecast, last_close)
    return {
        "rmse": float(rmse),
        "mae": float(mean_absolute_error(actual, forecast)),
        "mape": float(100 * mean_absolute_percentage_error(actual, forecast)),
        "directional_accuracy": directional_accuracy(actual, forecast, last_close),
        "naive_rmse": float(naive_rmse),
        "u2": float(rmse / naive_rmse) if naive_rmse > 0 else float("nan"),
        "dm_stat": dm_stat,
        "dm_pvalue": dm_p,
    }


def shrinkage_toward_persistence(predicted_returns: np.ndarray, actual_returns: np.ndarray) -> float:
    """The factor in [0, 1] that scales predicted returns to fit actual ones best (least squares through 0).

    Estimated on the validation days, it keeps only as much of the network's signal as held up there: a
    network with no skill shrinks to 0, which is the persistence forecast "tomorrow = today".
    """
    predicted = np.asarray(predicted_returns, dtype="float64")
    actual = np.asarray(actual_returns, dtype="float64")
    energy = float(np.dot(predicted, predicted))
    if energy == 0.0 or not np.isfinite(energy):
        return 0.0
    return float(np.clip(np.dot(predicted, actual) / energy, 0.0, 1.0))
