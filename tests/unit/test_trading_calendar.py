"""Trading sessions come from exchange-calendars (XNYS), including the real closures in the bundled data."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipeline.common.trading_calendar import is_session, last_session_on_or_before, next_session, sessions_missed_before
from pipeline.contract.inputs import contract_frame
from pipeline.replay import ReplayRefused, replay_sessions

D = dt.date


@pytest.mark.parametrize(
    "day, expected",
    [
        (D(2017, 11, 10), True),  # a Friday
        (D(2017, 11, 11), False),  # Saturday
        (D(2017, 11, 23), False),  # Thanksgiving
        (D(2001, 9, 12), False),  # closed after 9/11
        (D(2012, 10, 29), False),  # hurricane Sandy
        (D(1987, 10, 19), True),  # the crash was a session
    ],
)
def test_sessions_include_real_closures(day, expected):
    assert is_session(day) is expected


def test_next_session_skips_weekends_and_holidays():
    assert next_session(D(2017, 11, 10)) == D(2017, 11, 13)
    assert next_session(D(2017, 11, 22)) == D(2017, 11, 24)
    assert next_session(D(2017, 11, 11)) == D(2017, 11, 13)
    assert last_session_on_or_before(D(2017, 11, 12)) == D(2017, 11, 10)


def test_missing_sessions_are_counted_but_closures_are_not():
    dates = pd.Series(pd.to_datetime(["2001-09-07", "2001-09-10", "2001-09-17", "2017-11-06", "2017-11-08"]))
    # 10 -> 17 September 2001 skips the closure (11-14) only; 6 -> 8 November 2017 skips a real session.
    gaps = sessions_missed_before(dates)
    assert gaps.tolist()[:3] == [0, 0, 0]
    assert gaps.iloc[4] == 1


def test_the_bundled_histories_lack_only_the_sessions_their_readme_admits():
    msft = pd.read_csv("data/snapshots/MSFT.csv")
    gaps = sessions_missed_before(msft["Date"])
    assert gaps.sum() == 2 and gaps.max() == 1
    assert sessions_missed_before(pd.read_csv("data/snapshots/GSPC.csv")["Date"]).sum() == 0


def test_the_contract_sees_the_gaps():
    prices = pd.DataFrame(
        {
            "Date": pd.to_datetime(["2017-11-06", "2017-11-07", "2017-11-13"]),
            "Open": 1.0,
            "High": 1.0,
            "Low": 1.0,
            "Close": 1.0,
            "Volume": 1,
        }
    )
    assert contract_frame(prices)["SessionsMissedBefore"].tolist() == [0, 0, 3]


def test_replay_runs_the_sessions_between_two_dates():
    sessions = replay_sessions(D(2017, 11, 20), D(2017, 11, 26), {"MSFT": None})
    assert sessions == [D(2017, 11, 20), D(2017, 11, 21), D(2017, 11, 22), D(2017, 11, 24)]


def test_replay_into_the_past_of_a_champion_is_refused():
    with pytest.raises(ReplayRefused, match="GSPC through 2017-11-10"):
        replay_sessions(D(2017, 11, 1), D(2017, 11, 30), {"MSFT": D(2017, 10, 31), "GSPC": D(2017, 11, 10)})
    assert replay_sessions(D(2017, 11, 10), D(2017, 11, 10), {"GSPC": D(2017, 11, 10)}) == [D(2017, 11, 10)]
    with pytest.raises(ReplayRefused, match="no trading sessions"):
        replay_sessions(D(2017, 11, 11), D(2017, 11, 12), {})
    with pytest.raises(ReplayRefused, match="before its start"):
        replay_sessions(D(2017, 11, 12), D(2017, 11, 11), {})
