"""A Tokyo ticker's day on a real store, MLflow registry and (tiny) training: its contract, its closed days and the
date of the forecast it serves are Tokyo's, not New York's."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from pipeline.common.outcome import Decision
from pipeline.common.trading_calendar import is_session, sessions_between
from pipeline.daily import DailyContext, run_ticker
from tests.support import SNAPSHOTS, tiny_daily_context

TICKER = "7203.T"
# Coming of Age Day: Tokyo closed, New York open. The Friday before is Tokyo's last session, Tuesday its next.
FRIDAY, HOLIDAY, TUESDAY = dt.date(2024, 1, 5), dt.date(2024, 1, 8), dt.date(2024, 1, 9)


@pytest.fixture
def ctx(tmp_path) -> DailyContext:
    """Three years of MSFT's prices placed on Tokyo's sessions up to FRIDAY, as a user's export of 7203.T."""
    exports = tmp_path / "exports"
    exports.mkdir()
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv").tail(760).reset_index(drop=True)
    sessions = sessions_between(dt.date(2020, 1, 1), FRIDAY, "XTKS")[-len(prices) :]
    prices.assign(Date=sessions.strftime("%Y-%m-%d")).to_csv(exports / f"{TICKER}.csv", index=False)
    return tiny_daily_context(tmp_path, exports, today=HOLIDAY, max_staleness_sessions=0)


def test_a_tokyo_ticker_keeps_tokyos_sessions_through_its_day(ctx):
    assert is_session(HOLIDAY, "XNYS") and not is_session(HOLIDAY, "XTKS")

    decided = run_ticker(TICKER, ctx, as_of=FRIDAY)
    assert decided.succeeded and decided.decision in {Decision.promoted, Decision.kept}, decided.reason
    # The contract held the history to Tokyo's sessions: none missing, none on a closed day (New York's calendar
    # would warn of both, tests/unit/test_markets.py).
    validation = json.loads((ctx.reports_dir / TICKER / "validation.json").read_text())
    assert [f for report in validation for f in report["failures"]] == []
    # The forecast served is for Tokyo's next session, over the holiday.
    served = ctx.forecast_log.read(TICKER)
    assert served["target"].astype(str).tolist()[-1] == TUESDAY.isoformat()

    closed = run_ticker(TICKER, ctx, as_of=HOLIDAY)
    assert closed.decision is Decision.skipped and "market closed on 2024-01-08 (XTKS)" in closed.reason
    assert closed.champion_version == decided.champion_version
