"""pipeline.models.windows: chronological splits, minimum history, history trimming, and no test-period leakage."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipeline.common import codec
from pipeline.common.settings import BUNDLED_SNAPSHOTS, TrainingConfig
from pipeline.data.sources import CsvSource
from pipeline.models.windows import NotEnoughHistory, build_dataset, min_rows_for, training_history
from tests.support import fetch

PRICE_COLUMNS = ["Open", "High", "Low", "Close"]


@pytest.fixture(scope="module")
def msft() -> pd.DataFrame:
    """The last 400 sessions of the bundled MSFT snapshot (about 1.6 years, up to 2017-11-10)."""
    prices = fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, dt.date(2017, 12, 31))
    return prices.tail(400).reset_index(drop=True)


def tiny(**overrides) -> TrainingConfig:
    values = {"window": 12, "units": 4, "epochs": 1, "history_years": 5.0, "val_fraction": 0.15, "eval_sessions": 80}
    values.update(overrides)
    return TrainingConfig(**values)


def assert_same_split(a, b):
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.tobytes() == b.x.tobytes() and a.y.tobytes() == b.y.tobytes()  # bit-identical, NaN-safe
    assert a.as_of.equals(b.as_of) and a.target_date.equals(b.target_date)
    np.testing.assert_array_equal(a.last_close, b.last_close)
    np.testing.assert_array_equal(a.next_close, b.next_close)


# -- chronological split -------------------------------------------------------------------------


def test_splits_are_chronological_and_do_not_overlap(msft):
    ds = build_dataset(msft, tiny())
    train, val, test = ds.train, ds.val, ds.test
    for split in (train, val, test):
        assert split.as_of.is_monotonic_increasing and split.target_date.is_monotonic_increasing
    assert train.target_date.max() < val.target_date.min()
    assert val.target_date.max() < test.target_date.min()
    assert train.as_of.max() < val.as_of.min() and val.as_of.max() < test.as_of.min()
    targets = [set(s.target_date) for s in (train, val, test)]
    assert not (targets[0] & targets[1] or targets[1] & targets[2] or targets[0] & targets[2])


def test_every_window_forecasts_the_next_session(msft):
    config = tiny()
    ds = build_dataset(msft, config)
    dates = pd.DatetimeIndex(msft["Date"])
    as_of = ds.train.as_of.append(ds.val.as_of).append(ds.test.as_of)
    target = ds.train.target_date.append(ds.val.target_date).append(ds.test.target_date)
    # Every session with a full window behind it and a known next close is used exactly once.
    assert as_of.equals(dates[config.window : len(dates) - 1])
    assert target.equals(dates[config.window + 1 :])
    closes = msft["Close"].to_numpy()
    np.testing.assert_array_equal(ds.test.last_close, closes[config.window + len(ds.train.y) + len(ds.val.y) : -1])
    np.testing.assert_array_equal(ds.test.next_close[-1], closes[-1])
    # y is the standardized log return from last_close to next_close.
    for split in (ds.train, ds.val, ds.test):
        returns = ds.scaler.inverse_target(split.y)
        np.testing.assert_allclose(returns, np.log(split.next_close / split.last_close), atol=1e-6)


@pytest.mark.parametrize("val_fraction, eval_sessions", [(0.1, 40), (0.15, 80), (0.3, 100)])
def test_split_sizes_follow_the_settings(msft, val_fraction, eval_sessions):
    config = tiny(val_fraction=val_fraction, eval_sessions=eval_sessions)
    ds = build_dataset(msft, config)
    n = len(msft) - config.window - 1  # windows that have a known next close
    assert len(ds.val.y) == round(n * val_fraction)
    assert len(ds.test.y) == eval_sessions, "the test split is the last eval_sessions sessions"
    assert len(ds.train.y) == n - len(ds.val.y) - len(ds.test.y)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.shape == (len(split.y), config.window, 2)
        assert len(split.as_of) == len(split.target_date) == len(split.last_close) == len(split.y)


def test_training_windows_are_standardized_with_their_own_statistics(msft):
    ds = build_dataset(msft, tiny())
    flat = ds.train.x.reshape(-1, ds.train.x.shape[-1]).astype("float64")
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(flat.std(axis=0), 1.0, atol=1e-4)
    assert float(np.mean(ds.train.y)) == pytest.approx(0.0, abs=1e-5)


# -- minimum history and trimming ----------------------------------------------------------------


def test_too_little_history_raises_not_enough_history_with_a_clear_message(msft):
    config = tiny(window=20, val_fraction=0.1, eval_sessions=80)
    needed = min_rows_for(config)
    assert needed == 20 + 1 + 80 + 10 + 10, "window + target + test + at least ten validation and training windows"
    short = msft.tail(needed - 1).reset_index(drop=True)
    with pytest.raises(NotEnoughHistory) as excinfo:
        build_dataset(short, config)
    message = str(excinfo.value)
    assert f"{needed - 1} sessions" in message
    assert f"need at least {needed}" in message
    assert "window=20" in message
    assert isinstance(excinfo.value, ValueError)


def test_minimum_history_gives_every_split_at_least_ten_windows(msft):
    config = tiny(window=20, val_fraction=0.1, eval_sessions=80)
    ds = build_dataset(msft.tail(min_rows_for(config)).reset_index(drop=True), config)
    assert min(len(ds.train.y), len(ds.val.y), len(ds.test.y)) >= 10


def test_training_history_keeps_the_most_recent_years(msft):
    end = msft["Date"].max()
    trimmed = training_history(msft, 1.0)
    assert trimmed["Date"].max() == end
    assert trimmed["Date"].min() > end - pd.Timedelta(days=366)
    # Nothing inside the year is dropped.
    expected = msft.loc[msft["Date"] > end - pd.Timedelta(days=365)]
    assert len(trimmed) == len(expected) < len(msft)
    assert trimmed.index.equals(pd.RangeIndex(len(trimmed)))


def test_build_dataset_uses_only_the_trimmed_history(msft):
    config = tiny(history_years=1.0, window=10)
    ds = build_dataset(msft, config)
    trimmed = training_history(msft, 1.0)
    assert len(ds.history) == len(trimmed) < len(msft)
    assert ds.train.as_of[0] == trimmed["Date"].iloc[config.window]
    # Older rows cannot influence the model: changing them leaves the dataset unchanged.
    old = msft["Date"] < trimmed["Date"].min()
    changed = msft.copy()
    changed.loc[old, PRICE_COLUMNS] *= 3.0
    other = build_dataset(changed, config)
    assert other.scaler == ds.scaler
    assert_same_split(other.train, ds.train)


def test_trimming_can_leave_too_little_history(msft):
    with pytest.raises(NotEnoughHistory, match="in the last 0.25 years"):
        build_dataset(msft, tiny(history_years=0.25))


# -- leakage -------------------------------------------------------------------------------------


def test_the_test_period_is_the_sessions_the_test_windows_forecast(msft):
    """The test period is the sessions the test windows forecast; this is what the leakage tests change."""
    ds = build_dataset(msft, tiny())
    mask = msft["Date"] >= ds.test.target_date[0]
    assert pd.DatetimeIndex(msft.loc[mask, "Date"]).equals(ds.test.target_date)


@pytest.fixture(scope="module")
def msft_long() -> pd.DataFrame:
    """Four years of MSFT: room for the default 250-session test span with training and validation before it."""
    prices = fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, dt.date(2017, 12, 31))
    return prices.tail(1000).reset_index(drop=True)


@pytest.mark.parametrize("change", ["times_ten", "random"])
@pytest.mark.parametrize("span", ["tiny", "default 250 sessions"])
def test_changing_the_test_period_leaves_scaler_train_and_validation_bit_identical(msft, msft_long, change, span):
    config, prices = (tiny(), msft) if span == "tiny" else (tiny(window=60, eval_sessions=250), msft_long)
    if span != "tiny":
        assert config.eval_sessions == TrainingConfig().eval_sessions and config.window == TrainingConfig().window
    msft = prices
    original = build_dataset(msft, config)
    test_period = msft["Date"] >= original.test.target_date[0]

    changed = msft.copy()
    if change == "times_ten":
        changed.loc[test_period, PRICE_COLUMNS] *= 10.0
    else:
        rng = np.random.default_rng(123)
        changed.loc[test_period, "Close"] = rng.uniform(1.0, 1000.0, size=int(test_period.sum()))
    other = build_dataset(changed, config)

    # The change reached the test split...
    assert not np.array_equal(other.test.next_close, original.test.next_close)
    assert not np.array_equal(other.test.x, original.test.x)
    # ...but nothing the model is fitted on, scaled with or early-stopped on.
    assert other.scaler == original.scaler
    assert codec.dump(other.scaler) == codec.dump(original.scaler)
    assert_same_split(other.train, original.train)
    assert_same_split(other.val, original.val)


def test_changing_the_validation_period_leaves_the_scaler_and_training_windows_identical(msft):
    config = tiny()
    original = build_dataset(msft, config)
    val_period = msft["Date"].isin(original.val.target_date)
    changed = msft.copy()
    changed.loc[val_period, "Close"] *= 1.5
    other = build_dataset(changed, config)
    assert not np.array_equal(other.val.y, original.val.y)
    assert other.scaler == original.scaler
    assert_same_split(other.train, original.train)


def test_changing_one_training_close_changes_scaler_and_training_windows(msft):
    """The converse: the leakage tests above can fail, because these quantities do react to data."""
    config = tiny()
    original = build_dataset(msft, config)
    row = config.window + 5  # the as-of session of training window 5
    assert msft["Date"].iloc[row] == original.train.as_of[5]
    changed = msft.copy()
    changed.loc[row, "Close"] *= 1.05
    other = build_dataset(changed, config)
    assert other.scaler != original.scaler
    assert not np.array_equal(other.train.x, original.train.x)
    assert not np.array_equal(other.train.y, original.train.y)
    # The scaler change propagates to the validation inputs too (they are scaled with training statistics).
    assert not np.array_equal(other.val.x, original.val.x)
