"""Point-forecast quality in price units; the comparison between models lives in pipeline.evaluation.evidence."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_absolute_percentage_error, root_mean_squared_error


def directional_accuracy(actual: np.ndarray, forecast: np.ndarray, last_close: np.ndarray) -> float:
    """Share of days where the forecast moved the same way as the price (a flat forecast never scores)."""
    predicted = np.sign(forecast - last_close)
    return float(np.mean((predicted != 0) & (predicted == np.sign(actual - last_close))))


def point_metrics(actual: np.ndarray, forecast: np.ndarray, last_close: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, MAPE (%) and directional accuracy of one model's forecasts."""
    return {
        "rmse": float(root_mean_squared_error(actual, forecast)),
        "mae": float(mean_absolute_error(actual, forecast)),
        "mape": float(100 * mean_absolute_percentage_error(actual, forecast)),
        "directional_accuracy": directional_accuracy(actual, forecast, last_close),
    }
