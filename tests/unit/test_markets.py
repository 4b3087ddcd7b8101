"""Each ticker keeps its own exchange's sessions: the calendar from its Yahoo suffix or the user's map, used by the
contract, freshness, closed-day no-ops, replay and the forecast date."""

from __future__ import annotations

import datetime as dt

import exchange_calendars
import pandas as pd
import pytest

from pipeline.common.markets import YAHOO_SUFFIX_EXCHANGES, UnknownMarket, exchange_for
from pipeline.common.settings import Settings
from pipeline.common.trading_calendar import exchange_calendar, next_session, off_session_days, sessions_between
from pipeline.contract.inputs import contract_frame
from pipeline.contract.runner import validate_prices
from pipeline.data.ingest import StaleData, check_freshness
from pipeline.replay import replay_sessions

D = dt.date
# Tokyo closed for Coming of Age Day, New York open: the Friday before it is the last Tokyo session.
TOKYO_HOLIDAY, TOKYO_FRIDAY = D(2024, 1, 8), D(2024, 1, 5)


@pytest.mark.parametrize(
    "ticker, expected",
    [
        ("MSFT", "XNYS"),
        ("BRK-B", "XNYS"),
        ("7203.T", "XTKS"),
        ("HSBA.L", "XLON"),
        ("0005.HK", "XHKG"),
        ("600519.SS", "XSHG"),
        ("000001.SZ", "XSHG"),
        ("SAP.DE", "XETR"),
        ("MC.PA", "XPAR"),
        ("RY.TO", "XTSE"),
        ("BHP.AX", "XASX"),
    ],
)
def test_the_yahoo_suffix_names_the_exchange(ticker, expected):
    assert exchange_for(ticker) == expected


def test_every_suffix_names_a_calendar_exchange_calendars_has():
    names = set(exchange_calendars.get_calendar_names(include_aliases=True))
    assert set(YAHOO_SUFFIX_EXCHANGES.values()) <= names


def test_the_users_map_wins_and_the_yahoo_symbol_counts_when_the_ticker_is_an_alias():
    assert exchange_for("SAP", {"SAP": "XETR"}) == "XETR"
    assert exchange_for("7203.T", {"7203.T": "XNYS"}) == "XNYS"
    assert exchange_for("TOYOTA", {}, yahoo_symbol="7203.T") == "XTKS"


def test_an_unknown_suffix_or_calendar_is_refused_naming_the_setting():
    with pytest.raises(UnknownMarket, match=r"\.XY.*STOCKPIPE_EXCHANGES"):
        exchange_for("ABC.XY")
    with pytest.raises(ValueError, match="unknown exchange calendar 'XNOPE'"):
        exchange_for("ABC", {"ABC": "XNOPE"})


def test_settings_read_the_map_from_the_environment(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_EXCHANGES", '{"SAP": "XETR"}')
    settings = Settings(tickers=["SAP", "7203.T", "MSFT"])
    assert [settings.exchange(t) for t in settings.tickers] == ["XETR", "XTKS", "XNYS"]


def test_a_calendar_that_begins_later_than_the_default_start_is_built_from_its_own_first_day():
    assert exchange_calendar("XTKS").first_session == pd.Timestamp("1997-01-06")


def tokyo_prices(msft_slice: pd.DataFrame, exchange: str = "XTKS") -> pd.DataFrame:
    """The MSFT slice placed on an exchange's last sessions up to TOKYO_FRIDAY."""
    sessions = sessions_between(D(2022, 1, 1), TOKYO_FRIDAY, exchange)[-len(msft_slice) :]
    return msft_slice.assign(Date=sessions.to_numpy())


def test_a_history_on_tokyos_sessions_is_whole_in_tokyo_and_broken_in_new_york(msft_slice, price_suite):
    prices = tokyo_prices(msft_slice)

    def report(exchange):
        return validate_prices(
            prices, subject="7203.T", suite_definition=price_suite, as_of=TOKYO_FRIDAY, min_rows=100, exchange=exchange
        )

    tokyo, seen_from_new_york = report("XTKS"), report("XNYS")
    assert tokyo.passed and tokyo.failures == [], tokyo.summary()
    assert {f.column for f in seen_from_new_york.warnings} == {"SessionsMissedBefore", "OffSessionDay"}
    assert "2023-07-04" in seen_from_new_york.summary()  # Independence Day: a Tokyo session, no New York one
    new_york = contract_frame(prices, "XNYS")
    # New York's view: days it traded and Tokyo did not are missing, Tokyo's sessions on US holidays are closed days.
    assert new_york["SessionsMissedBefore"].sum() > 0 and new_york["OffSessionDay"].sum() > 0
    assert contract_frame(prices, "XTKS")[["SessionsMissedBefore", "OffSessionDay"]].to_numpy().sum() == 0


def test_off_session_days_are_the_exchanges_closed_days():
    days = pd.Series(pd.to_datetime(["2024-01-05", "2024-01-06", "2024-01-08", "2024-01-09"]))
    assert off_session_days(days, "XTKS").tolist() == [False, True, True, False]
    assert off_session_days(days, "XNYS").tolist() == [False, True, False, False]


def test_freshness_and_the_forecast_date_count_the_tickers_own_sessions(msft_slice):
    prices = tokyo_prices(msft_slice)
    tuesday = D(2024, 1, 9)
    assert next_session(TOKYO_FRIDAY, "XTKS") == tuesday
    assert next_session(TOKYO_FRIDAY, "XNYS") == TOKYO_HOLIDAY
    check_freshness("7203.T", prices, D(2024, 1, 10), max_sessions=2, exchange="XTKS")  # Tue, Wed: 2 behind
    with pytest.raises(StaleData, match="3 XNYS sessions"):
        check_freshness("7203.T", prices, D(2024, 1, 10), max_sessions=2, exchange="XNYS")


def test_replay_runs_every_day_any_tickers_exchange_traded():
    days = replay_sessions(D(2024, 1, 5), D(2024, 1, 9), {"MSFT": None, "7203.T": None}, ["XNYS", "XTKS"])
    assert days == [D(2024, 1, 5), D(2024, 1, 8), D(2024, 1, 9)]
    assert replay_sessions(D(2024, 1, 5), D(2024, 1, 9), {"7203.T": None}, ["XTKS"]) == [D(2024, 1, 5), D(2024, 1, 9)]
