"""The forecasts the champion served, one Parquet file per ticker (`forecasts/<TICKER>.parquet`), kept to be scored
when their target session arrives.

One row per target session and model version: recording a forecast again (a re-run of the day, a retried flow)
replaces that row, so nothing is counted twice. The file is replaced atomically, like the price store: a run killed
while recording leaves the previous file whole, never a torn row (and the next recording removes the dead writer's
temporary file).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.common.files import atomic_write
from pipeline.common.symbols import validate_ticker
from pipeline.data.tables import read_columns

KEY = ["target", "model_version"]
BOUNDS = ["lower_80", "upper_80", "lower_95", "upper_95"]
COLUMNS = ["as_of", "target", "model_version", "last_close", "point", *BOUNDS, "interval_method", "recorded_at"]


class ForecastLogUnreadable(RuntimeError):
    """A ticker's forecast file cannot be read: that ticker loses its live record until the file is moved aside."""


@dataclass(frozen=True)
class ServedForecast:
    as_of: dt.date
    target: dt.date
    model_version: str
    last_close: float
    point: float
    lower_80: float | None
    upper_80: float | None
    lower_95: float | None
    upper_95: float | None
    interval_method: str | None


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype="object") for column in COLUMNS})
    for column in ("last_close", "point", *BOUNDS):
        frame[column] = frame[column].astype("float64")
    for column in ("as_of", "target"):
        frame[column] = pd.to_datetime(frame[column])
    return frame


@dataclass(frozen=True)
class ForecastLog:
    root: Path

    def path(self, ticker: str) -> Path:
        return Path(self.root) / f"{validate_ticker(ticker)}.parquet"

    def read(self, ticker: str) -> pd.DataFrame:
        """Every recorded forecast of the ticker, oldest target first (an empty frame when there are none)."""
        path = self.path(ticker)
        if not path.exists():
            return _empty()
        frame = read_columns(
            path,
            COLUMNS,
            lambda exc: ForecastLogUnreadable(
                f"{path} is unreadable ({type(exc).__name__}); move it aside: the next run starts a new record"
            ),
        )
        return frame.sort_values(["target", "model_version"]).reset_index(drop=True)

    def record(self, ticker: str, forecast: ServedForecast, recorded_at: str) -> None:
        """Add the forecast, replacing one already recorded for the same target session and model version."""
        row = pd.DataFrame(
            [
                {
                    **{name: getattr(forecast, name) for name in COLUMNS if hasattr(forecast, name)},
                    "as_of": pd.Timestamp(forecast.as_of),
                    "target": pd.Timestamp(forecast.target),
                    "recorded_at": recorded_at,
                }
            ]
        )
        for column in BOUNDS:
            row[column] = row[column].astype("float64")
        old = self.read(ticker)
        keep = ~((old["target"] == pd.Timestamp(forecast.target)) & (old["model_version"] == forecast.model_version))
        frames = [frame for frame in (old.loc[keep], row[COLUMNS]) if not frame.empty]
        table = pd.concat(frames, ignore_index=True).sort_values(KEY).reset_index(drop=True)
        path = self.path(ticker)
        # Recorded under the ticker's lock, so a temporary file beside it is a killed writer's: never renamed, unread.
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)
        atomic_write(path, lambda handle: table.to_parquet(handle, index=False))
