"""pipeline.models.features: strided windows against a plain loop, next-session targets, the scaling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.common import codec
from pipeline.models.features import (
    FEATURE_NAMES,
    Scaling,
    next_log_returns,
    window_features,
)


def random_walk(n: int, seed: int = 0, start: float = 50.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return start * np.exp(np.cumsum(rng.normal(0.0, 0.02, size=n)))


def loop_reference(closes: np.ndarray, window: int) -> np.ndarray:
    """Window i ends at close index i + window and covers closes i+1 .. i+window (one Python loop per value)."""
    log_close = np.log(np.asarray(closes, dtype="float64"))
    out = []
    for i in range(len(closes) - window):
        last = i + window
        rows = []
        for j in range(i + 1, last + 1):
            rows.append([log_close[j] - log_close[last], log_close[j] - log_close[j - 1]])
        out.append(rows)
    return np.asarray(out, dtype="float64").reshape(-1, window, 2)


@pytest.mark.parametrize("n, window", [(25, 5), (40, 12), (13, 12)])
def test_window_features_match_a_loop_reference(n, window):
    closes = random_walk(n, seed=n)
    got = window_features(closes, window)
    expected = loop_reference(closes, window)
    assert got.shape == (n - window, window, len(FEATURE_NAMES)) == expected.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_window_features_columns_mean_level_vs_last_and_return():
    closes = np.array([1.0, 2.0, 4.0, 8.0, 4.0])
    got = window_features(closes, 3)
    ln2 = np.log(2.0)
    # Window 0 ends at close 3 (8.0) and covers closes 2.0, 4.0, 8.0.
    np.testing.assert_allclose(got[0, :, 0], [-2 * ln2, -ln2, 0.0], atol=1e-7)
    np.testing.assert_allclose(got[0, :, 1], [ln2, ln2, ln2], atol=1e-7)
    # Window 1 ends at close 4 (4.0) and covers 4.0, 8.0, 4.0.
    np.testing.assert_allclose(got[1, :, 0], [0.0, ln2, 0.0], atol=1e-7)
    np.testing.assert_allclose(got[1, :, 1], [ln2, ln2, -ln2], atol=1e-7)
    # The last level is always 0: every window is expressed relative to its own last close.
    assert np.all(got[:, -1, 0] == 0.0)


def test_window_features_are_scale_free():
    closes = random_walk(60, seed=3)
    np.testing.assert_allclose(window_features(closes * 1000.0, 10), window_features(closes, 10), atol=1e-6)


def test_window_features_need_window_plus_one_closes():
    window = 8
    assert window_features(random_walk(window, seed=1), window).shape == (0, window, 2)
    assert window_features(random_walk(window + 1, seed=1), window).shape == (1, window, 2)


def test_next_log_returns_are_the_move_after_each_windows_last_close():
    closes = random_walk(30, seed=7)
    window = 6
    targets = next_log_returns(closes, window)
    assert targets.shape == (len(closes) - window,)
    assert np.isnan(targets[-1])
    for i in range(len(targets) - 1):
        as_of = i + window  # window i's last close (see window_features)
        assert targets[i] == pytest.approx(np.log(closes[as_of + 1] / closes[as_of]), rel=1e-12, abs=1e-15)
    assert not np.isnan(targets[:-1]).any()


def test_next_log_returns_align_with_window_features():
    closes = random_walk(40, seed=11)
    window = 5
    features = window_features(closes, window)
    targets = next_log_returns(closes, window)
    assert len(features) == len(targets)
    # The target of window i is the log return that becomes the last feature of window i + 1.
    np.testing.assert_allclose(targets[:-1], features[1:, -1, 1], rtol=1e-6, atol=1e-7)


def test_scaling_fit_transform_inverse_round_trip():
    rng = np.random.default_rng(5)
    features = np.stack([rng.normal(3.0, 2.0, size=(50, 7)), rng.normal(-1.0, 0.5, size=(50, 7))], axis=-1).astype(
        "float32"
    )
    targets = rng.normal(0.001, 0.02, size=50)
    scaling = Scaling.fit(features, targets)

    flat = features.reshape(-1, 2).astype("float64")
    np.testing.assert_allclose(scaling.feature_scaler.mean_, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaling.feature_scaler.scale_, flat.std(axis=0), rtol=1e-12)
    assert scaling.target_scaler.mean_[0] == pytest.approx(targets.mean(), rel=1e-12)

    scaled = scaling.features(features)
    assert scaled.dtype == np.float32 and scaled.shape == features.shape
    np.testing.assert_allclose(scaled.reshape(-1, 2).mean(axis=0), [0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(scaled.reshape(-1, 2).std(axis=0), [1.0, 1.0], atol=1e-5)

    scaled_targets = scaling.target(targets)
    assert scaled_targets.dtype == np.float32
    assert abs(float(np.mean(scaled_targets))) < 1e-5
    np.testing.assert_allclose(scaling.inverse_target(scaled_targets), targets, rtol=0, atol=1e-8)


def test_scaling_constant_inputs_do_not_divide_by_zero():
    features = np.ones((4, 3, 2), dtype="float32")
    targets = np.full(4, 0.5)
    scaling = Scaling.fit(features, targets)
    assert np.all(np.isfinite(scaling.features(features)))
    np.testing.assert_allclose(scaling.inverse_target(scaling.target(targets)), targets)


def test_scaling_round_trips_through_plain_json():
    """Models are stored as data: the fitted scalers travel as JSON numbers, never as a pickle."""
    rng = np.random.default_rng(9)
    features = rng.normal(size=(10, 4, 2))
    scaling = Scaling.fit(features, rng.normal(size=10))
    rebuilt = codec.load(Scaling, json.loads(json.dumps(codec.dump(scaling))))
    assert rebuilt == scaling
    np.testing.assert_array_equal(rebuilt.features(features), scaling.features(features))
    assert set(codec.dump(scaling)) == {"features", "target"}
