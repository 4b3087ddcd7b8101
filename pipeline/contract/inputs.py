"""What the contract runs on: the suite definition (JSON, with a severity per expectation) and the table it sees."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.trading_calendar import DEFAULT_EXCHANGE, off_session_days, sessions_missed_before

VOLUME_MEDIAN_WINDOW = 20  # sessions whose median volume a session's volume is compared with


def load_suite_definition(path: Path) -> dict[str, Any]:
    definition = json.loads(Path(path).read_text())
    for expectation in definition.get("expectations", []):
        if expectation.get("severity") not in {"critical", "warning", "info"}:
            raise ValueError(f"{path}: every expectation needs severity critical|warning|info: {expectation}")
    return definition


def contract_frame(prices: pd.DataFrame, exchange: str = DEFAULT_EXCHANGE) -> pd.DataFrame:
    """The table the contract sees: the prices and, measured against the ticker's own history,

    - `LogReturn`: the daily log return between consecutive closes;
    - `LogRange`: the day's log(High / Low);
    - `VolumeToMedian`: the session's volume over the median volume of the previous sessions;
    - `SessionsMissedBefore`: how many exchange sessions are missing before the row (real closures are not
      sessions, so they never count);
    - `OffSessionDay`: 1 on a day the exchange's calendar holds no session (a weekend, a holiday), else 0.

    Sessions are `exchange`'s (an exchange-calendars code: XNYS, XLON, XTKS, ...).

    Never raises on bad values: whatever cannot be measured is NaN, for the contract's own checks to name.
    """
    frame = prices.copy()
    close, high, low = (_numeric(frame, c) for c in ("Close", "High", "Low"))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        frame["LogReturn"] = np.log(close.where(close > 0)).diff()
        frame["LogRange"] = np.log(high.where(high > 0) / low.where(low > 0))
        volume = _numeric(frame, "Volume")
        volume = volume.where(np.isfinite(volume))
        median = volume.shift(1).rolling(VOLUME_MEDIAN_WINDOW, min_periods=5).median()
        frame["VolumeToMedian"] = volume / median.where(median > 0)  # no ratio to a zero or unknown median
    dates = contract_dates(frame)
    if len(dates) and dates.notna().all():
        try:
            frame["SessionsMissedBefore"] = sessions_missed_before(dates, exchange).to_numpy()
            frame["OffSessionDay"] = off_session_days(dates, exchange).astype("int64").to_numpy()
        except (ValueError, OverflowError, TypeError):  # dates the calendar cannot place: the Date checks name them
            frame["SessionsMissedBefore"] = 0
            frame["OffSessionDay"] = 0
    else:  # unparseable dates are the Date expectations' to report; the calendar checks have nothing to measure
        frame["SessionsMissedBefore"] = 0
        frame["OffSessionDay"] = 0
    return frame


def contract_dates(frame: pd.DataFrame) -> pd.Series:
    """The table's Date column as dates, NaT where unreadable (empty without a Date column)."""
    return pd.to_datetime(frame["Date"], errors="coerce") if "Date" in frame else pd.Series(dtype="datetime64[ns]")


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")
