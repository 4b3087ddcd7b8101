"""Exchange trading sessions from a maintained calendar (exchange-calendars), never hand-written holiday rules."""

from __future__ import annotations

import datetime as dt
from functools import lru_cache

import pandas as pd

DEFAULT_EXCHANGE = "XNYS"
# exchange-calendars starts 20 years back by default; the bundled MSFT history starts in 1986.
EARLIEST = "1985-01-01"


@lru_cache(maxsize=16)
def exchange_calendar(exchange: str = DEFAULT_EXCHANGE):
    import exchange_calendars

    try:
        return exchange_calendars.get_calendar(exchange, start=EARLIEST)
    except ValueError:  # some calendars begin later (Tokyo's in 1997): from their own first day, then
        start = _earliest_of(exchange)
        if start is None:
            raise
        return exchange_calendars.get_calendar(exchange, start=start)


def _earliest_of(exchange: str) -> pd.Timestamp | None:
    """The first day the exchange's calendar can be built from: its class's `bound_min` (exchange-calendars' own)."""
    import exchange_calendars

    bound = type(exchange_calendars.get_calendar(exchange)).bound_min()
    return None if bound is None else max(pd.Timestamp(EARLIEST), pd.Timestamp(bound))


def is_session(day: dt.date, exchange: str = DEFAULT_EXCHANGE) -> bool:
    calendar = exchange_calendar(exchange)
    stamp = pd.Timestamp(day)
    if stamp > calendar.last_session or stamp < calendar.first_session:
        return stamp.dayofweek < 5  # beyond the calendar's horizon: weekdays are the best guess
    return bool(calendar.is_session(stamp))


def off_session_days(dates: pd.Series, exchange: str = DEFAULT_EXCHANGE) -> pd.Series:
    """For each date, True when the exchange's calendar knows the day and holds no session on it (a weekend, a
    holiday). Days outside the calendar's span are not judged."""
    days = pd.to_datetime(pd.Series(dates)).reset_index(drop=True).dt.normalize()
    if days.empty:
        return pd.Series([], dtype="bool")
    calendar = exchange_calendar(exchange)
    inside = (days >= calendar.first_session) & (days <= calendar.last_session)
    sessions = sessions_between(days.min().date(), days.max().date(), exchange)
    return inside & ~days.isin(sessions)


def next_session(day: dt.date, exchange: str = DEFAULT_EXCHANGE) -> dt.date:
    """The first trading session strictly after `day`."""
    calendar = exchange_calendar(exchange)
    stamp = pd.Timestamp(day)
    if calendar.is_session(stamp):
        return calendar.next_session(stamp).date()
    return calendar.date_to_session(stamp, direction="next").date()


def last_session_on_or_before(day: dt.date, exchange: str = DEFAULT_EXCHANGE) -> dt.date:
    calendar = exchange_calendar(exchange)
    stamp = min(pd.Timestamp(day), calendar.last_session)
    return calendar.date_to_session(stamp, direction="previous").date()


def sessions_between(first: dt.date, last: dt.date, exchange: str = DEFAULT_EXCHANGE) -> pd.DatetimeIndex:
    """Every session from `first` to `last`, both included, as tz-naive midnight timestamps."""
    calendar = exchange_calendar(exchange)
    start = max(pd.Timestamp(first), calendar.first_session)
    end = min(pd.Timestamp(last), calendar.last_session)
    if start > end:
        return pd.DatetimeIndex([])
    return calendar.sessions_in_range(start, end)


def sessions_missed_before(dates: pd.Series, exchange: str = DEFAULT_EXCHANGE) -> pd.Series:
    """For each stored date, how many exchange sessions lie strictly between it and the previous stored date.

    Zero everywhere means no session is missing; the exchange's real closures (September 2001, say) are not
    sessions, so they never count.
    """
    days = pd.to_datetime(pd.Series(dates)).reset_index(drop=True)
    if days.empty:
        return pd.Series([], dtype="int64")
    sessions = sessions_between(days.min().date(), days.max().date(), exchange)
    position = sessions.searchsorted(days.to_numpy())
    gaps = pd.Series(position).diff().fillna(1).astype("int64") - 1
    return gaps.clip(lower=0)
