"""The synthetic benchmark universe (bench/universe.py): deterministic, in the store's schema, on consecutive New York
sessions ending where asked, bars consistent, the bundled data contract passed, and files CsvSource reads back as
generated."""

from __future__ import annotations

import datetime as dt
import sys

import numpy as np
import pandas as pd
import pytest

from bench.universe import csv_bytes, main, synthetic_universe, ticker_names, universe_sessions, write_universe
from pipeline.common.settings import BUNDLED_SNAPSHOTS, TrainingConfig
from pipeline.common.symbols import TICKER_PATTERN
from pipeline.common.trading_calendar import off_session_days, sessions_between, sessions_missed_before
from pipeline.contract.runner import validate_prices
from pipeline.data.sources import COLUMNS, CsvSource
from pipeline.models.windows import min_rows_for

MSFT_LAST_SESSION = dt.date(2017, 11, 10)
YEARS = 3


@pytest.fixture(scope="module")
def universe() -> dict[str, pd.DataFrame]:
    return synthetic_universe(3, years=YEARS)


def test_names_are_numbered_valid_tickers_and_the_count_is_kept(universe):
    assert list(universe) == ["SYN001", "SYN002", "SYN003"]
    assert ticker_names(1000)[0] == "SYN0001" and ticker_names(1000)[-1] == "SYN1000"
    assert all(TICKER_PATTERN.fullmatch(name) for name in ticker_names(1000))
    assert synthetic_universe(0, years=1) == {}


def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_series(universe):
    again = synthetic_universe(3, years=YEARS)
    for name, frame in universe.items():
        pd.testing.assert_frame_equal(again[name], frame)
        assert csv_bytes(again[name]) == csv_bytes(frame)
    other = synthetic_universe(3, years=YEARS, seed=1)
    assert all(not other[name]["Close"].equals(frame["Close"]) for name, frame in universe.items())
    # Each ticker draws from its own stream: a smaller universe is the start of a larger one.
    pd.testing.assert_frame_equal(synthetic_universe(1, years=YEARS)["SYN001"], universe["SYN001"])
    # Tickers differ from one another, even those resampling the same source.
    assert not universe["SYN001"]["Close"].equals(universe["SYN003"]["Close"])


def test_frames_are_in_the_store_schema(universe):
    for frame in universe.values():
        assert list(frame.columns) == COLUMNS
        assert frame.dtypes.astype(str).tolist() == ["datetime64[ns]", *["float64"] * 4, "int64"]
        assert isinstance(frame.index, pd.RangeIndex) and frame.index.start == 0
        assert frame.notna().all().all()


def test_dates_are_every_new_york_session_up_to_the_requested_end(universe):
    dates = universe["SYN001"]["Date"]
    assert dates.iloc[-1].date() == MSFT_LAST_SESSION  # the default end: bundled MSFT's last session
    expected = sessions_between(dates.iloc[0].date(), MSFT_LAST_SESSION)
    assert pd.DatetimeIndex(dates).equals(expected)
    assert abs(len(dates) - YEARS * 252) < 10
    assert sessions_missed_before(dates).eq(0).all() and not off_session_days(dates).any()
    assert all(frame["Date"].equals(dates) for frame in universe.values())

    asked = synthetic_universe(1, years=1, end=dt.date(2018, 12, 31))["SYN001"]["Date"]
    assert asked.iloc[-1].date() == dt.date(2018, 12, 31)
    assert pd.DatetimeIndex(asked).equals(sessions_between(asked.iloc[0].date(), dt.date(2018, 12, 31)))
    # A closed day as the end: the session before it.
    assert universe_sessions(1, dt.date(2018, 12, 30))[-1] == pd.Timestamp("2018-12-28")


def test_bars_are_consistent_and_the_path_continuous(universe):
    for frame in universe.values():
        assert (frame[["Open", "High", "Low", "Close"]] > 0).all().all()
        assert (frame["High"] >= frame[["Open", "Close"]].max(axis=1)).all()
        assert (frame["Low"] <= frame[["Open", "Close"]].min(axis=1)).all()
        assert (frame["Volume"] >= 1).all()
        moves = np.log(frame["Close"]).diff().abs().dropna()
        assert moves.max() < 0.36  # the sources' own moves: MSFT's worst day is -0.357
        assert (moves > 0.15).mean() <= 0.005
        assert (np.log(frame["High"] / frame["Low"]) < 0.36).all()


def test_the_bundled_contract_passes_without_a_warning(universe, price_suite):
    for name in ("SYN001", "SYN002"):  # one from each source
        report = validate_prices(
            universe[name],
            subject=name,
            suite_definition=price_suite,
            as_of=MSFT_LAST_SESSION,
            min_rows=min_rows_for(TrainingConfig()),
        )
        assert report.critical_failures == [], [f.describe() for f in report.critical_failures]
        assert report.warnings == [], [f.describe() for f in report.warnings]


def test_written_files_read_back_unchanged_in_the_snapshots_shape(universe, tmp_path):
    folder = tmp_path / "universe"
    assert write_universe(folder, 3, years=YEARS) == list(universe)
    assert sorted(p.name for p in folder.iterdir()) == [f"{name}.csv" for name in universe]
    header = (BUNDLED_SNAPSHOTS / "MSFT.csv").read_text().splitlines()[0]
    source = CsvSource(folder)
    for name, frame in universe.items():
        raw = (folder / f"{name}.csv").read_bytes()
        assert raw == csv_bytes(frame)
        assert raw.decode().splitlines()[0] == header and raw.endswith(b"\n") and b"\r" not in raw
        read, _ = source.read(name)
        pd.testing.assert_frame_equal(read, frame)
        received = source.receive(name, None, MSFT_LAST_SESSION)
        pd.testing.assert_frame_equal(received.rows, frame)


def test_the_command_line_writes_the_files_and_prints_the_tickers(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["universe.py", "--count", "2", "--out", str(tmp_path), "--years", "1"])
    main()
    assert capsys.readouterr().out.split() == ["SYN001", "SYN002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SYN001.csv", "SYN002.csv"]


@pytest.mark.parametrize("kwargs", [{"count": -1}, {"count": 1, "years": 0}, {"count": 1, "seed": -1}])
def test_impossible_requests_are_refused(kwargs):
    with pytest.raises(ValueError):
        synthetic_universe(**kwargs)


def test_a_span_before_the_calendar_is_refused():
    with pytest.raises(ValueError, match="calendar"):
        universe_sessions(40, dt.date(2017, 11, 10))
