"""pipeline.models.lstm's training: seeded and reproducible (alone and in parallel threads), blind to the test split,
early stopping on validation loss, a warm start that keeps its initial weights when training only hurts.

Trainings are tiny (window 10, 4-8 units, 2-8 epochs on ~230 windows) and take a few seconds each.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS
from pipeline.data.sources import CsvSource
from pipeline.models.windows import build_dataset
from tests.support import fetch
from tests.support import tiny_lstm_config as tiny

keras = pytest.importorskip("keras")

from pipeline.models.lstm import TrainedModel, build_lstm, train_lstm  # noqa: E402

# Same data, config and seed must give the same network to this tolerance (CPU kernels are deterministic).
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, dt.date(2017, 12, 31)).tail(300).reset_index(drop=True)


@pytest.fixture(scope="module")
def dataset(prices):
    return build_dataset(prices, tiny())


@pytest.fixture(scope="module")
def trained(dataset) -> TrainedModel:
    return train_lstm(dataset, tiny())


def predict(model, x) -> np.ndarray:
    return np.asarray(model(x, training=False)).reshape(-1)


def assert_same_training(a: TrainedModel, b: TrainedModel, x: np.ndarray):
    assert a.history.keys() == b.history.keys() == {"loss", "val_loss"}
    for key in a.history:
        np.testing.assert_allclose(a.history[key], b.history[key], rtol=0, atol=TOLERANCE)
    assert (a.best_epoch, a.epochs_run) == (b.best_epoch, b.epochs_run)
    for wa, wb in zip(a.keras_model.get_weights(), b.keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(wa, wb, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(predict(a.keras_model, x), predict(b.keras_model, x), rtol=0, atol=TOLERANCE)


# -- training ------------------------------------------------------------------------------------


def test_train_lstm_records_losses_and_returns_a_working_model(trained, dataset):
    assert trained.epochs_run == len(trained.history["loss"]) == len(trained.history["val_loss"])
    assert 1 <= trained.epochs_run <= 2
    assert trained.best_epoch == int(np.argmin(trained.history["val_loss"])) + 1
    out = predict(trained.keras_model, dataset.test.x)
    assert out.shape == (len(dataset.test.y),)
    assert np.all(np.isfinite(out))


def test_train_lstm_is_deterministic(trained, dataset):
    again = train_lstm(dataset, tiny())
    assert_same_training(trained, again, dataset.test.x)


def test_training_in_parallel_threads_is_as_reproducible_as_alone(trained, dataset):
    """The daily flow trains two tickers side by side; per-layer seeds must keep that reproducible."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = [pool.submit(train_lstm, dataset, tiny(), f"thread-{i}") for i in range(2)]
        results = [run.result(timeout=300) for run in runs]
    for result in results:
        assert_same_training(trained, result, dataset.test.x)


def test_a_thread_that_trained_another_ticker_trains_as_a_fresh_thread_and_leaves_it_alone(trained, dataset, prices):
    """A thread keeps its compiled network for the next fit (no retracing): that fit starts from the seeded state,
    whatever the thread trained before, and the model an earlier fit returned is not changed by it."""
    from concurrent.futures import ThreadPoolExecutor

    other = build_dataset(prices.assign(Close=prices["Close"] * np.linspace(1.0, 1.3, len(prices))), tiny())

    def two_in_one_thread() -> tuple[TrainedModel, np.ndarray, TrainedModel]:
        first = train_lstm(other, tiny(), "other")
        before = predict(first.keras_model, other.test.x)
        return first, before, train_lstm(dataset, tiny(), "this")

    with ThreadPoolExecutor(max_workers=1) as pool:
        first, before, second = pool.submit(two_in_one_thread).result(timeout=300)
    assert_same_training(trained, second, dataset.test.x)
    np.testing.assert_array_equal(predict(first.keras_model, other.test.x), before)
    assert second.keras_model is not first.keras_model


def test_training_never_reads_the_test_split(trained, dataset):
    """Early stopping and fitting see train and validation only: garbage in the test split changes nothing."""
    poisoned_test = dataclasses.replace(
        dataset.test, x=np.full_like(dataset.test.x, np.nan), y=np.full_like(dataset.test.y, 1e6)
    )
    again = train_lstm(dataclasses.replace(dataset, test=poisoned_test), tiny())
    assert_same_training(trained, again, dataset.val.x)


def adversarial(dataset):
    """Train targets the last input return; validation wants its opposite, so learning hurts validation."""
    train = dataclasses.replace(dataset.train, y=dataset.train.x[:, -1, 1].copy())
    val = dataclasses.replace(dataset.val, y=-dataset.val.x[:, -1, 1].copy())
    return dataclasses.replace(dataset, train=train, val=val)


ADVERSARIAL = {"units": 8, "epochs": 8, "patience": 2, "dropout": 0.0, "learning_rate": 0.01}


def test_early_stopping_follows_validation_loss_and_restores_the_best_weights(dataset):
    data = adversarial(dataset)
    config = tiny(**ADVERSARIAL)
    result = train_lstm(data, config)
    loss, val_loss = result.history["loss"], result.history["val_loss"]
    # The training loss kept falling, yet training stopped: the monitored quantity is the validation loss.
    assert loss[-1] < loss[0]
    assert result.epochs_run < config.epochs
    best = int(np.argmin(val_loss))
    assert result.epochs_run == best + 1 + config.patience
    assert result.best_epoch == best + 1
    # The returned network is the best validation epoch's, not the last one's.
    restored = float(result.keras_model.evaluate(data.val.x, data.val.y, batch_size=config.batch_size, verbose=0))
    assert restored == pytest.approx(val_loss[best], rel=1e-5)
    assert restored < val_loss[-1]


def test_warm_start_that_only_hurts_validation_keeps_the_initial_weights(dataset):
    data = adversarial(dataset)
    config = tiny(**ADVERSARIAL, warm_start_epochs=3)
    initial = build_lstm(data.window, 2, config).get_weights()
    result = train_lstm(data, config, initial_weights=initial)
    assert result.epochs_run <= 3
    assert result.best_epoch == 0
    for got, want in zip(result.keras_model.get_weights(), initial, strict=True):
        np.testing.assert_array_equal(got, want)
