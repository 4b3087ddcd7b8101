"""Training a challenger: windows, the LSTM fit, shrinkage toward persistence and interval calibration, all on
sessions before the test span (the test sessions are only ever used for scoring)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.settings import TrainingConfig
from pipeline.models import conformal
from pipeline.models.features import FEATURE_NAMES
from pipeline.models.forecasters import Forecaster, LstmForecaster
from pipeline.models.shrinkage import shrinkage_toward_persistence
from pipeline.models.windows import Dataset, build_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmStart:
    weights: list
    origin: str  # e.g. "v3", recorded with the run


@dataclass(frozen=True)
class Challenger:
    dataset: Dataset
    forecaster: LstmForecaster
    training_history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    warm_start_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def warm_start_from(champion: Forecaster | None, version: str | None, config: TrainingConfig) -> WarmStart | None:
    """The champion's LSTM weights when they fit today's network; None (and why, in the log) otherwise."""
    from pipeline.models.lstm import weights_fit

    if not isinstance(champion, LstmForecaster):
        log.info(
            "no LSTM champion to warm-start from (%s); training from scratch",
            "none registered" if champion is None else f"champion is {champion.kind}",
        )
        return None
    weights = champion.keras_model.get_weights()
    if champion.window != config.window or not weights_fit(weights, config.window, len(FEATURE_NAMES), config):
        log.info("champion v%s has another architecture; training from scratch", version)
        return None
    log.info("warm start from champion v%s", version)
    return WarmStart(weights, f"v{version}")


def train_challenger(
    history: pd.DataFrame,
    config: TrainingConfig,
    ticker: str,
    warm_start: WarmStart | None = None,
    callbacks: Sequence[Any] = (),
) -> Challenger:
    """Fit a challenger on `history`; `callbacks` (Keras) see every epoch, e.g. to log it live to MLflow."""
    from pipeline.models.lstm import train_lstm

    started = time.perf_counter()
    dataset = build_dataset(history, config)
    windowed = time.perf_counter()
    log.info(
        "%s: %d train / %d validation / %d test windows (test %s..%s)",
        ticker,
        len(dataset.train.y),
        len(dataset.val.y),
        len(dataset.test.y),
        dataset.test.target_date[0].date(),
        dataset.test.target_date[-1].date(),
    )
    trained = train_lstm(
        dataset, config, label=ticker, initial_weights=warm_start.weights if warm_start else None, callbacks=callbacks
    )
    fitted = time.perf_counter()
    # One pass of the network over the validation windows serves both the shrinkage and the calibration.
    returns = validation_returns(trained.keras_model, dataset)
    shrinkage = shrinkage_toward_persistence(returns, np.log(dataset.val.next_close / dataset.val.last_close))
    forecaster = LstmForecaster(trained.keras_model, dataset.scaler, dataset.window, shrinkage)
    val_forecasts = dataset.val.last_close.astype("float64") * np.exp(shrinkage * returns)
    forecaster = forecaster.with_calibration(calibrate_intervals(forecaster, dataset, val_forecasts))
    log.info(
        "%s: trained %d epochs in %.1fs (best %d, shrinkage %.2f)",
        ticker,
        trained.epochs_run,
        fitted - windowed,
        trained.best_epoch,
        shrinkage,
    )
    return Challenger(
        dataset=dataset,
        forecaster=forecaster,
        training_history=trained.history,
        best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run,
        train_seconds=fitted - windowed,
        warm_start_from=warm_start.origin if warm_start else None,
        timings={
            "window": round(windowed - started, 3),
            "train": round(fitted - windowed, 3),
            "calibrate": round(time.perf_counter() - fitted, 3),
            # The first epoch traces the graph; the steady state is what more epochs cost.
            "epoch_steady": round(float(np.median(trained.epoch_seconds[1:])), 3)
            if len(trained.epoch_seconds) > 1
            else round(trained.epoch_seconds[0], 3)
            if trained.epoch_seconds
            else 0.0,
        },
    )


def as_of_positions(dataset: Dataset, as_of: pd.DatetimeIndex) -> np.ndarray:
    """Positions of as-of sessions within the dataset's history (what the interval functions index by)."""
    return pd.DatetimeIndex(dataset.history["Date"]).get_indexer(as_of)


def calibrate_intervals(
    forecaster: LstmForecaster, dataset: Dataset, val_forecasts: np.ndarray | None = None
) -> conformal.IntervalCalibration:
    """Conformal interval quantiles from the challenger's own forecasts on the validation sessions (`val_forecasts`
    when they are already known)."""
    closes = dataset.history["Close"].to_numpy("float64")
    positions = as_of_positions(dataset, dataset.val.as_of)
    forecasts = forecaster.point_forecasts_at(closes, positions) if val_forecasts is None else val_forecasts
    return conformal.calibrate(closes, positions, forecasts)


def validation_returns(keras_model: Any, dataset: Dataset) -> np.ndarray:
    """The network's next log returns on the validation windows (never the test ones), before any shrinkage: how
    much of them held up there is the shrinkage."""
    from pipeline.models.lstm import network_outputs

    scaled = network_outputs(keras_model, dataset.val.x).reshape(-1)
    return dataset.scaler.inverse_target(scaled)
