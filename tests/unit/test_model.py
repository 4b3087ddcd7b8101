"""pipeline.models.lstm: the LSTM's architecture and initial weights, built and never trained (training runs in
tests/integration/test_lstm_training.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import tiny_lstm_config as tiny

keras = pytest.importorskip("keras")

from pipeline.models.lstm import build_lstm, weights_fit  # noqa: E402

# -- architecture --------------------------------------------------------------------------------


def test_build_lstm_is_two_lstm_layers_with_dropout_and_a_dense_head():
    config = tiny(units=6, dropout=0.3, learning_rate=0.005)
    model = build_lstm(12, 2, config)
    layers = model.layers
    assert [type(layer).__name__ for layer in layers] == ["LSTM", "Dropout", "LSTM", "Dropout", "Dense"]
    first, drop1, second, drop2, head = layers
    assert first.units == 6 and first.return_sequences is True
    assert second.units == 6 and second.return_sequences is False
    assert drop1.rate == pytest.approx(0.3) and drop2.rate == pytest.approx(0.3)
    assert head.units == 1
    assert tuple(model.input_shape) == (None, 12, 2)
    assert tuple(model.output_shape) == (None, 1)
    # LSTM parameters: 4 gates x (units x (inputs + units) + units).
    assert first.count_params() == 4 * (6 * (2 + 6) + 6)
    assert second.count_params() == 4 * (6 * (6 + 6) + 6)
    assert head.count_params() == 6 + 1
    assert model.loss == "mse"
    assert type(model.optimizer).__name__ == "Adam"
    assert float(model.optimizer.learning_rate) == pytest.approx(0.005)


def test_build_lstm_initial_weights_depend_on_the_seed_only():
    same = [build_lstm(10, 2, tiny(seed=7)).get_weights() for _ in range(2)]
    for a, b in zip(*same, strict=True):
        np.testing.assert_array_equal(a, b)
    other = build_lstm(10, 2, tiny(seed=8)).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(same[0], other, strict=True))


def test_weights_fit_checks_shapes():
    config = tiny(units=4)
    weights = build_lstm(10, 2, config).get_weights()
    assert weights_fit(weights, 10, 2, config)
    assert not weights_fit(weights, 10, 2, tiny(units=5))
    assert not weights_fit(weights, 10, 3, config)
    assert not weights_fit(weights[:-1], 10, 2, config)
