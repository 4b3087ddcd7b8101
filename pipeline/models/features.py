"""Model inputs computed from raw closes, shared by training and by the served model.

Each window is expressed relative to its own last close, so the inputs mean the same thing whether
the stock trades at $0.10 or $400 and never leave the range the model was trained on. The target
is the next session's log return; a forecast turns back into a price as `close * exp(return)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field, PlainSerializer, PlainValidator
from sklearn.preprocessing import StandardScaler

from pipeline.common import codec

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


# A fitted StandardScaler as spec.json stores it.
StoredScaler = Annotated[StandardScaler, PlainValidator(_scaler_from), PlainSerializer(_scaler_state)]


@dataclass(frozen=True, eq=False)
class Scaling:
    """scikit-learn StandardScalers for the window features (per feature) and the target, fitted on training only.

    In a model's spec.json as `{"features": ..., "target": ...}`, through `pipeline.common.codec`.
    """

    # Specs have always carried a scaler's numbers as `json.dumps` writes them.
    __pydantic_config__ = codec.KEEP_NON_FINITE

    feature_scaler: Annotated[StoredScaler, Field(alias="features")]
    target_scaler: Annotated[StoredScaler, Field(alias="target")]

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

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scaling) and codec.dump(self) == codec.dump(other)
