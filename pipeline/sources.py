"""Where prices come from: bundled snapshot, a folder of CSV exports, or Yahoo Finance.

Every source returns the store's one schema: a `Date` column of tz-naive session dates and float
OHLC with integer volume, oldest first. Sources take an `as_of` date and never return rows after it,
so the bundled snapshot behaves like a live feed on that day.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from pipeline.symbols import validate_ticker

log = logging.getLogger(__name__)

PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
COLUMNS = ["Date", *PRICE_COLUMNS, "Volume"]


class SourceError(RuntimeError):
    """A source could not deliver prices for a ticker (unknown symbol, unreadable file, network)."""


class TransientSourceError(SourceError):
    """Worth retrying: rate limits, network and DNS failures."""


class UnknownSymbol(SourceError):
    """The provider does not know the symbol, or it is delisted: retrying cannot help."""


class PriceSource(Protocol):
    name: str

    def fetch(self, ticker: str, since: dt.date | None, as_of: dt.date) -> pd.DataFrame:
        """Rows with `since` < Date <= `as_of` (all rows up to `as_of` when `since` is None)."""
        ...


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce any price table to the store schema without dropping or repairing bad rows.

    Bad values (NaN, negative prices, duplicates) are kept on purpose: deciding about them is the
    data contract's job, and it can only name what it sees.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(f"price table lacks column(s) {missing}; got {list(frame.columns)}")
    out = frame[COLUMNS].copy()
    try:
        dates = pd.to_datetime(out["Date"], errors="coerce")
    except ValueError:
        # Mixed UTC offsets (a yfinance CSV export spanning a DST change): keep each row's local date.
        dates = pd.to_datetime(out["Date"].map(_local_wall_time), errors="coerce")
    if getattr(dates.dt, "tz", None) is not None:
        # Yahoo stamps sessions at exchange-local midnight; the session date is what we keep.
        dates = dates.dt.tz_localize(None)
    out["Date"] = dates.dt.normalize().astype("datetime64[ns]")
    for column in PRICE_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    volume = pd.to_numeric(out["Volume"], errors="coerce")
    out["Volume"] = volume.round().astype("Int64") if volume.isna().any() else volume.round().astype("int64")
    return out.sort_values("Date", kind="stable").reset_index(drop=True)


def _local_wall_time(value: object) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _window(frame: pd.DataFrame, since: dt.date | None, as_of: dt.date) -> pd.DataFrame:
    """Rows in (since, as_of]; rows whose date could not be read are kept for the contract to name."""
    keep = frame["Date"] <= pd.Timestamp(as_of)
    if since is not None:
        keep &= frame["Date"] > pd.Timestamp(since)
    return frame.loc[keep | frame["Date"].isna()].reset_index(drop=True)


@dataclass(frozen=True)
class CsvSource:
    """`<TICKER>.csv` files with columns Date, Open, High, Low, Close, Volume (the bundled snapshot too)."""

    folder: Path
    name: str = "csv"

    def fetch(self, ticker: str, since: dt.date | None, as_of: dt.date) -> pd.DataFrame:
        path = Path(self.folder) / f"{validate_ticker(ticker)}.csv"
        if not path.is_file():
            raise SourceError(f"no price file for {ticker}: {path} does not exist")
        try:
            raw = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot parse {path}: {exc}") from exc
        return _window(normalize(raw), since, as_of)


HistoryDownloader = Callable[[str, dt.date | None, dt.date], pd.DataFrame]


def yfinance_history(symbol: str, start: dt.date | None, end_inclusive: dt.date) -> pd.DataFrame:
    """Daily bars from Yahoo through yfinance, split- and dividend-adjusted (auto_adjust=True).

    yfinance's failures are sorted into ours: rate limits and network errors are transient (the
    orchestrator retries them), an unknown or delisted symbol is not, and "no prices in this range" for
    a known symbol is an empty answer (the exchange was closed).
    """
    # Imported here so TensorFlow can never be imported first (yfinance issue 2528) on this path.
    import yfinance as yf
    from yfinance.exceptions import YFPricesMissingError, YFRateLimitError, YFTzMissingError

    # Raise instead of logging and returning an empty frame, which would look like a closed market.
    yf.config.debug.hide_exceptions = False
    kwargs = {"interval": "1d", "auto_adjust": True, "actions": False}
    end = end_inclusive + dt.timedelta(days=1)  # yfinance's `end` is exclusive
    ticker = yf.Ticker(symbol)
    try:
        if start is None:
            history = ticker.history(period="max", end=end.isoformat(), **kwargs)
        else:
            history = ticker.history(start=start.isoformat(), end=end.isoformat(), **kwargs)
    except YFRateLimitError as exc:
        raise TransientSourceError(f"Yahoo rate limit (HTTP 429) for {symbol}: {exc}") from exc
    except YFTzMissingError as exc:
        raise UnknownSymbol(f"Yahoo does not know {symbol!r} (unknown or delisted symbol): {exc}") from exc
    except YFPricesMissingError as exc:
        if start is None:  # not even one price in the symbol's whole history
            raise UnknownSymbol(f"Yahoo has no prices at all for {symbol!r} (unknown or delisted symbol): {exc}") from exc
        return pd.DataFrame(columns=COLUMNS)
    except (OSError, ConnectionError) as exc:
        raise TransientSourceError(f"network error reaching Yahoo for {symbol}: {exc}") from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise TransientSourceError(f"network error reaching Yahoo for {symbol}: {exc}") from exc
        raise
    return history.reset_index()


def _is_network_error(exc: BaseException) -> bool:
    """curl_cffi's and requests' connection, DNS and timeout errors, without importing either here."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "DNSError", "CurlError", "ProxyError", "SSLError"})


@dataclass(frozen=True)
class YahooSource:
    """Live prices. The downloader is injected so tests can run yfinance against recorded answers."""

    symbols: dict[str, str]
    download: HistoryDownloader = yfinance_history
    name: str = "yahoo"

    def fetch(self, ticker: str, since: dt.date | None, as_of: dt.date) -> pd.DataFrame:
        symbol = self.symbols.get(validate_ticker(ticker), ticker)
        start = None if since is None else since + dt.timedelta(days=1)
        if start is not None and start > as_of:
            return normalize(pd.DataFrame(columns=COLUMNS))
        try:
            raw = self.download(symbol, start, as_of)
        except SourceError as exc:
            raise type(exc)(f"{ticker}: {exc}") from exc
        except Exception as exc:  # yfinance raises many unrelated types; name the ticker and keep the cause
            raise SourceError(f"{ticker}: Yahoo download failed for {symbol}: {type(exc).__name__}: {exc}") from exc
        if raw.empty:
            return normalize(pd.DataFrame(columns=COLUMNS))
        return _window(normalize(raw), since, as_of)


def build_source(kind: str, *, folder: Path | None = None, yahoo_symbols: dict[str, str] | None = None) -> PriceSource:
    if kind in ("snapshot", "csv"):
        if folder is None:
            raise ValueError(f"source {kind!r} needs a folder of <TICKER>.csv files")
        if not Path(folder).is_dir():
            raise ValueError(f"source {kind!r}: {folder} is not a directory")
        return CsvSource(Path(folder), name=kind)
    if kind == "yahoo":
        return YahooSource(yahoo_symbols or {})
    raise ValueError(f"unknown source {kind!r}: use snapshot, csv or yahoo")
