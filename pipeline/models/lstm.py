"""The LSTM: two recurrent layers with dropout and a dense head, trained with early stopping on validation."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.common.settings import TrainingConfig
from pipeline.models.windows import Dataset

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    keras_model: object
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    # Wall time of each epoch: the first includes tracing the graph, the steady state is from the second on.
    epoch_seconds: list[float] = field(default_factory=list)


def build_lstm(window: int, n_features: int, config: TrainingConfig, compiled: bool = True):
    import keras

    seed = config.seed
    # Every random layer gets its own seed so two tickers trained in parallel threads stay reproducible.
    model = keras.Sequential(
        [
            keras.Input(shape=(window, n_features)),
            keras.layers.LSTM(
                config.units,
                return_sequences=True,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 1),
            ),
            keras.layers.Dropout(config.dropout, seed=seed + 2),
            keras.layers.LSTM(
                config.units,
                kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 3),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed + 4),
            ),
            keras.layers.Dropout(config.dropout, seed=seed + 5),
            keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 6)),
        ]
    )
    if compiled:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate), loss="mse")
    return model


class _Trainer:
    """A compiled network kept for the next fit of the same architecture in this thread, with the values every
    variable had when it was built: reset to them, it starts a fit exactly as a new network would (seeded weights,
    zeroed Adam moments, the dropout seeds' first state) without tracing Keras's train and test functions again,
    which cost about 1.9 core-seconds a ticker (measured: 5.3 against 3.4 core-s for three epochs)."""

    def __init__(self, key: tuple, model: Any):
        self.key = key
        self.model = model
        model.optimizer.build(model.trainable_variables)
        self.start = [v.numpy() for v in self._variables()]

    def _variables(self) -> list[Any]:
        return [*self.model.variables, *self.model.optimizer.variables]

    def reset(self) -> Any:
        for variable, value in zip(self._variables(), self.start, strict=True):
            variable.assign(value)
        return self.model


# One per thread: tickers train in parallel threads (or one per Dask worker process), each fit on its own network.
_trainers = threading.local()


def trainer(window: int, n_features: int, config: TrainingConfig) -> Any:
    """This thread's compiled network for these settings, reset to its seeded start."""
    key = (window, n_features, config.units, config.dropout, config.learning_rate, config.seed)
    kept = getattr(_trainers, "kept", None)
    if kept is None or kept.key != key:
        # Another architecture replaces the kept one: a thread holds one network, however many tickers it trains.
        kept = _trainers.kept = _Trainer(key, build_lstm(window, n_features, config))
    return kept.reset()


def detached_copy(model: Any, window: int, n_features: int, config: TrainingConfig) -> Any:
    """The trained weights in a network of their own, so what a ticker keeps is never changed by the next fit in the
    same thread (compiled as a new one would be: compiling traces nothing, only a later fit or evaluate does)."""
    copy = build_lstm(window, n_features, config)
    copy.set_weights(model.get_weights())
    return copy


# One per thread and architecture: forecasting networks whose compiled predict function is traced once. A thread
# meets one architecture, two while the settings change under a champion of the old one; more are dropped.
_forecasters = threading.local()
FORECASTING_NETWORKS_KEPT = 2


def network_outputs(keras_model: Any, x: np.ndarray) -> np.ndarray:
    """`keras_model`'s outputs on windows `x`, computed by this thread's compiled network of the same architecture
    loaded with its weights. An eager call runs the recurrence op by op (0.4 core-s for 250 windows, measured); the
    compiled one takes 0.04 once traced, and gives the same numbers. A network of another shape is called as is."""
    _, window, n_features = keras_model.input_shape
    units = keras_model.layers[0].units if hasattr(keras_model.layers[0], "units") else None
    weights = keras_model.get_weights()
    kept: dict = _forecasters.__dict__.setdefault("networks", {})
    key = (window, n_features, units)
    if key not in kept:
        if units is None:
            return np.asarray(keras_model(x, training=False))
        while len(kept) >= FORECASTING_NETWORKS_KEPT:
            kept.pop(next(iter(kept)))
        kept[key] = build_lstm(window, n_features, TrainingConfig(window=window, units=units), compiled=False)
    network = kept[key]
    if [w.shape for w in network.get_weights()] != [np.shape(w) for w in weights]:
        return np.asarray(keras_model(x, training=False))
    network.set_weights(weights)
    return np.asarray(network.predict_on_batch(x))


def weights_fit(weights: list, window: int, n_features: int, config: TrainingConfig) -> bool:
    """True when saved weights have exactly the shapes of the network these settings build."""
    expected = [w.shape for w in build_lstm(window, n_features, config, compiled=False).get_weights()]
    return [tuple(np.shape(w)) for w in weights] == [tuple(shape) for shape in expected]


def _epoch_logger(label: str, epochs: int):
    """Each epoch's losses in the run log, for a person following the run (MLflow gets them from its own callback)."""
    import keras

    def log_epoch(epoch: int, logs: dict | None) -> None:
        logs = logs or {}
        log.info(
            "%s: epoch %d/%d loss=%.4f val_loss=%.4f",
            label,
            epoch + 1,
            epochs,
            logs.get("loss", np.nan),
            logs.get("val_loss", np.nan),
        )

    return keras.callbacks.LambdaCallback(on_epoch_end=log_epoch)


def train_lstm(
    dataset: Dataset,
    config: TrainingConfig,
    label: str = "model",
    initial_weights: list | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainedModel:
    """Fit from fresh seeded weights, or, given `initial_weights` (a warm start), for `warm_start_epochs` only.

    `callbacks` see every epoch (tracking); the log shows each epoch's losses either way.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    n_features = dataset.train.x.shape[-1]
    model = trainer(dataset.window, n_features, config)
    epochs = config.epochs
    starting_val_loss = np.inf
    if initial_weights is not None:
        model.set_weights(initial_weights)
        epochs = config.warm_start_epochs
        starting_val_loss = float(model.evaluate(dataset.val.x, dataset.val.y, batch_size=config.batch_size, verbose=0))
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=min(config.patience, epochs), restore_best_weights=True
    )
    clock: list[float] = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: clock.append(time.perf_counter()),
        on_epoch_end=lambda epoch, logs: clock.__setitem__(-1, time.perf_counter() - clock[-1]),
    )
    fit = model.fit(
        dataset.train.x,
        dataset.train.y,
        validation_data=(dataset.val.x, dataset.val.y),
        epochs=epochs,
        batch_size=config.batch_size,
        callbacks=[stop, timer, _epoch_logger(label, epochs), *callbacks],
        verbose=0,
    )
    history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    val_losses = history.get("val_loss", [])
    best = int(np.argmin(val_losses)) + 1 if val_losses else len(history.get("loss", []))
    if val_losses and min(val_losses) >= starting_val_loss:
        # Fine-tuning only made validation worse: the champion's own weights are the best start and finish.
        model.set_weights(initial_weights)
        best = 0
    return TrainedModel(
        keras_model=detached_copy(model, dataset.window, n_features, config),
        history=history,
        best_epoch=best,
        epochs_run=len(history.get("loss", [])),
        epoch_seconds=clock,
    )
