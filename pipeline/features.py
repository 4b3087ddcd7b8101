"""Model inputs computed from raw closes, shared by training and by the served model.

Each window is expressed relative to its own last close, so the inputs mean the same thing whether
the stock trades at $0.10 or $400 and never leave the range the model was trained on. The target
is the next session's log return; a forecast turns back into a price as `close * exp(return)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.preprocessing import StandardScaler

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


def _scaler_from(state: dict) -> StandardScaler:
    scaler = StandardScaler()
    scaler.mean_ = np.asarray(state["mean"], dtype="float64")
    scaler.scale_ = np.asarray(state["scale"], dtype="float64")
    scaler.var_ = scaler.scale_**2
    scaler.n_features_in_ = len(scaler.mean_)
    scaler.n_samples_seen_ = int(state["n_samples_seen"])
    return scaler


def _scaler_state(scaler: StandardScaler) -> dict:
    """A fitted StandardScaler as plain JSON numbers: models are stored as data, never as pickles."""
    return {
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "n_samples_seen": int(scaler.n_samples_seen_),
    }


@dataclass(frozen=True, eq=False)
class Scaling:
    """scikit-learn StandardScalers for the window features (per feature) and the target, fitted on training only."""

    feature_scaler: StandardScaler
    target_scaler: StandardScaler

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray) -> Scaling:
        flat = features.reshape(-1, features.shape[-1]).astype("float64")
        return cls(StandardScaler().fit(flat), StandardScaler().fit(np.asarray(targets, "float64").reshape(-1, 1)))

    def features(self, features: np.ndarray) -> np.ndarray:
        flat = features.reshape(-1, features.shape[-1]).astype("float64")
        return self.feature_scaler.transform(flat).reshape(features.shape).astype("float32")

    def target(self, returns: np.ndarray) -> np.ndarray:
        return self.target_scaler.transform(np.asarray(returns, "float64").reshape(-1, 1)).reshape(-1).astype("float32")

    def inverse_target(self, scaled: np.ndarray) -> np.ndarray:
        column = np.asarray(scaled, dtype="float64").reshape(-1, 1)
        return self.target_scaler.inverse_transform(column).reshape(-1)

    def to_dict(self) -> dict:
        return {"features": _scaler_state(self.feature_scaler), "target": _scaler_state(self.target_scaler)}

    @classmethod
    def from_dict(cls, state: dict) -> Scaling:
        return cls(_scaler_from(state["features"]), _scaler_from(state["target"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scaling) and self.to_dict() == other.to_dict()
