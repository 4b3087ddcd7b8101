"""Model inputs computed from raw closes, shared by training and by the served model.

Each window is expressed relative to its own last close, so the inputs mean the same thing whether
the stock trades at $0.10 or $400 and never leave the range the model was trained on. The target
is the next session's log return; a forecast turns back into a price as `close * exp(return)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

FEATURE_NAMES = ("log_close_vs_last", "log_return")


def window_features(closes: np.ndarray, window: int) -> np.ndarray:
    """Features of every window that has a full history, shape (n_windows, window, n_features).

    Window i ends at close index `i + window` (its "as-of" session); the first `window` closes only
    provide history. Built from strided views: no Python loop over windows.
    """
    log_close = np.log(np.asarray(closes, dtype="float64"))
    log_return = np.diff(log_close)  # log_return[k] is the move into close k+1
    if len(log_return) < window:
        return np.empty((0, window, len(FEATURE_NAMES)), dtype="float32")
    level_windows = sliding_window_view(log_close[1:], window)
    return_windows = sliding_window_view(log_return, window)
    level_vs_last = level_windows - level_windows[:, -1:]
    return np.stack([level_vs_last, return_windows], axis=-1).astype("float32")


def first_forecast_index(window: int) -> int:
    """Close index of the first session that has a full window behind it."""
    return window


def next_log_returns(closes: np.ndarray, window: int) -> np.ndarray:
    """Target of each window: the log return from its as-of close into the next close (NaN for the last)."""
    log_close = np.log(np.asarray(closes, dtype="float64"))
    targets = np.full(len(log_close) - window, np.nan)
    targets[:-1] = np.diff(log_close[window:])
    return targets


@dataclass(frozen=True)
class Standardizer:
    """Per-feature and target mean/std, fitted on training windows only."""

    feature_mean: list[float]
    feature_std: list[float]
    target_mean: float
    target_std: float

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray) -> Standardizer:
        flat = features.reshape(-1, features.shape[-1]).astype("float64")
        std = flat.std(axis=0)
        return cls(
            feature_mean=flat.mean(axis=0).tolist(),
            feature_std=np.where(std > 0, std, 1.0).tolist(),
            target_mean=float(np.mean(targets)),
            target_std=float(np.std(targets) or 1.0),
        )

    def features(self, features: np.ndarray) -> np.ndarray:
        scaled = (features - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)
        return scaled.astype("float32")

    def target(self, returns: np.ndarray) -> np.ndarray:
        return ((returns - self.target_mean) / self.target_std).astype("float32")

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        return np.asarray(scaled, dtype="float64") * self.target_std + self.target_mean

    def to_dict(self) -> dict:
        return asdict(self)
