"""Which sessions a replay runs, and when a replay would be unfair and must be refused."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pipeline.common.trading_calendar import DEFAULT_EXCHANGE, sessions_between


class ReplayRefused(ValueError):
    pass


def replay_sessions(
    start: dt.date, end: dt.date, data_ends: dict[str, dt.date | None], exchanges: Iterable[str] = (DEFAULT_EXCHANGE,)
) -> list[dt.date]:
    """The days from `start` to `end` on which any of `exchanges` traded, as the daily schedule would have run them
    (each ticker's own closed days are no-ops then).

    `data_ends` maps each ticker to the last date its store or champion already covers. Replaying into
    the past of a champion would score it on days it was trained on, so that is refused.
    """
    if end < start:
        raise ReplayRefused(f"replay end {end} is before its start {start}")
    ahead = {t: d for t, d in data_ends.items() if d is not None and d > start}
    if ahead:
        detail = ", ".join(f"{t} through {d}" for t, d in sorted(ahead.items()))
        raise ReplayRefused(
            f"cannot replay from {start}: the state already holds data or a champion trained on later days "
            f"({detail}); start after that date, or use a fresh STOCKPIPE_HOME"
        )
    sessions = sorted({stamp.date() for exchange in set(exchanges) for stamp in sessions_between(start, end, exchange)})
    if not sessions:
        raise ReplayRefused(f"no trading sessions between {start} and {end}")
    return sessions
