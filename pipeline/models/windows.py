"""Chronological train / validation / test windows with scaling fitted on the training part only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.common.settings import TrainingConfig
from pipeline.models.features import Scaling, next_log_returns, window_features


class NotEnoughHistory(ValueError):
    pass


@dataclass(frozen=True)
class Split:
    """Windows of one period. `as_of` is each window's last session, `target_date` the one it forecasts."""

    x: np.ndarray
    y: np.ndarray
    as_of: pd.DatetimeIndex
    target_date: pd.DatetimeIndex
    last_close: np.ndarray
    next_close: np.ndarray


@dataclass(frozen=True)
class Dataset:
    history: pd.DataFrame
    train: Split
    val: Split
    test: Split
    scaler: Scaling
    window: int


def training_history(prices: pd.DataFrame, history_years: float) -> pd.DataFrame:
    """The most recent `history_years` of sessions, ending at the last stored date."""
    end = prices["Date"].max()
    start = end - pd.DateOffset(days=round(history_years * 365.25))
    return prices.loc[prices["Date"] > start].reset_index(drop=True)


# Fewest windows the training and validation splits may have.
SMALLEST_SPLIT = 10


def split_sizes(n_windows: int, config: TrainingConfig) -> tuple[int, int, int]:
    """Train, validation and test window counts: the test split is the last `eval_sessions` windows, validation a
    fraction of all windows just before it, training everything earlier."""
    n_test = config.eval_sessions
    n_val = max(SMALLEST_SPLIT, round(n_windows * config.val_fraction))
    return n_windows - n_val - n_test, n_val, n_test


def min_rows_for(config: TrainingConfig) -> int:
    """Fewest sessions that still give every split enough windows."""
    # Each session gives one window except the first `window` (history only) and the last (no target yet).
    windows = config.eval_sessions + SMALLEST_SPLIT
    while split_sizes(windows, config)[0] < SMALLEST_SPLIT:
        windows += 1
    return windows + config.window + 1


def build_dataset(prices: pd.DataFrame, config: TrainingConfig) -> Dataset:
    history = training_history(prices, config.history_years)
    if len(history) < min_rows_for(config):
        raise NotEnoughHistory(
            f"{len(history)} sessions in the last {config.history_years} years; "
            f"need at least {min_rows_for(config)} for window={config.window}"
        )
    closes = history["Close"].to_numpy(dtype="float64")
    dates = pd.DatetimeIndex(history["Date"])
    features = window_features(closes, config.window)[:-1]  # the last window has no target yet
    targets = next_log_returns(closes, config.window)[:-1]
    as_of_index = np.arange(config.window, len(closes) - 1)

    n = len(targets)
    n_train, n_val, _n_test = split_sizes(n, config)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}

    train_lo, train_hi = bounds["train"]
    scaler = Scaling.fit(features[train_lo:train_hi], targets[train_lo:train_hi])

    def split(lo: int, hi: int) -> Split:
        idx = as_of_index[lo:hi]
        return Split(
            x=scaler.features(features[lo:hi]),
            y=scaler.target(targets[lo:hi]),
            as_of=dates[idx],
            target_date=dates[idx + 1],
            last_close=closes[idx],
            next_close=closes[idx + 1],
        )

    return Dataset(
        history=history,
        train=split(*bounds["train"]),
        val=split(*bounds["val"]),
        test=split(*bounds["test"]),
        scaler=scaler,
        window=config.window,
    )
