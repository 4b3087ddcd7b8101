"""Per-ticker price history in Parquet, merged incrementally and replaced atomically."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from filelock import FileLock

from pipeline.common.files import atomic_write, private_dir
from pipeline.common.symbols import validate_ticker
from pipeline.data.sources import COLUMNS, normalize
from pipeline.data.tables import read_columns


def merge_new_rows(history: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
    """Append the batch's rows dated after the stored history; re-merging the same batch is a no-op."""
    if history.empty:
        return batch.reset_index(drop=True)
    newer = batch.loc[batch["Date"] > history["Date"].max()]
    return pd.concat([history, newer], ignore_index=True)


def overlap_disagreement(history: pd.DataFrame, fetched: pd.DataFrame, rtol: float = 1e-4) -> str | None:
    """How re-fetched rows for already-stored dates differ from the store, or None when they agree.

    A provider re-adjusts its whole history after a split or dividend, so a disagreement on the overlap
    means the stored history is stale as a whole, not that one row changed.
    """
    if history.empty or fetched.empty:
        return None
    both = history.merge(fetched, on="Date", suffixes=("_stored", "_fetched"))
    for column in ("Close", "Open", "High", "Low"):
        stored, fresh = both[f"{column}_stored"].to_numpy(float), both[f"{column}_fetched"].to_numpy(float)
        differs = ~np.isclose(stored, fresh, rtol=rtol, atol=0.0, equal_nan=True)
        if differs.any():
            first = int(np.argmax(differs))
            day = both["Date"].iloc[first].strftime("%Y-%m-%d")
            return f"{column} on {day} was {stored[first]:.6g} in the store and is {fresh[first]:.6g} now"
    return None


def digest(prices: pd.DataFrame) -> str:
    """A content hash of a price table, stable across processes and file formats."""
    hashed = pd.util.hash_pandas_object(prices[COLUMNS], index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


class StoreUnreadable(RuntimeError):
    """A ticker's stored history cannot be read (torn, truncated or foreign file): that ticker's failure only."""


def to_store_schema(prices: pd.DataFrame) -> pd.DataFrame:
    """The exact types the store keeps, applied to admitted prices (the contract has already judged every value)."""
    out = prices[COLUMNS].reset_index(drop=True).copy()
    volume = out["Volume"]
    out["Volume"] = volume.astype("Int64") if volume.isna().any() else volume.astype("int64")
    return out


@dataclass(frozen=True)
class PriceStore:
    root: Path
    locks: Path

    def path(self, ticker: str) -> Path:
        return Path(self.root) / f"{validate_ticker(ticker)}.parquet"

    def tickers(self) -> list[str]:
        root = Path(self.root)
        return sorted(p.stem for p in root.glob("*.parquet")) if root.is_dir() else []

    def read(self, ticker: str) -> pd.DataFrame:
        path = self.path(ticker)
        if not path.exists():
            return normalize(pd.DataFrame(columns=COLUMNS))
        return read_columns(
            path,
            COLUMNS,
            lambda exc: StoreUnreadable(
                f"{path} is unreadable ({type(exc).__name__}); move it aside and run again to rebuild "
                f"{ticker}'s history from the source (the model registry is not affected)"
            ),
        )

    def last_date(self, ticker: str) -> dt.date | None:
        history = self.read(ticker)
        return None if history.empty else history["Date"].max().date()

    def write(self, ticker: str, prices: pd.DataFrame) -> None:
        """Replace the ticker's history; readers see the old file or the new one, never a torn one."""
        table = to_store_schema(prices)
        atomic_write(self.path(ticker), lambda handle: table.to_parquet(handle, index=False))

    @contextmanager
    def lock(self, ticker: str, timeout: float = -1) -> Iterator[None]:
        """Serialise everything that reads, trains on and promotes one ticker, across processes."""
        private_dir(Path(self.locks))
        with FileLock(Path(self.locks) / f"{validate_ticker(ticker)}.lock", timeout=timeout, mode=0o600):
            yield
