"""Where prices come from: bundled snapshot, a folder of CSV exports, or Yahoo Finance.

Every source returns the store's one schema: a `Date` column of tz-naive session dates and float
OHLC with integer volume, oldest first. Sources take an `as_of` date and hide rows after it (so the bundled snapshot
behaves like a live feed on that day), except rows dated after today: those are corrupt, and the data contract must
see them to refuse the batch. Each answer also keeps the bytes exactly as they arrived, for the quarantine.

Data files are untrusted: they are read only if they are regular files inside their folder, and messages never
quote their content.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from pipeline.common.files import UnsafeInput, read_regular_file
from pipeline.common.redact import excerpt
from pipeline.common.settings import DEFAULT_MAX_INPUT_BYTES
from pipeline.common.symbols import validate_ticker

log = logging.getLogger(__name__)

PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
COLUMNS = ["Date", *PRICE_COLUMNS, "Volume"]


class SourceError(RuntimeError):
    """A source could not deliver prices for a ticker (unknown symbol, unreadable file, network)."""


class TransientSourceError(SourceError):
    """Worth retrying: rate limits, network and DNS failures."""


class UnknownSymbol(SourceError):
    """The provider does not know the symbol, or it is delisted: retrying cannot help."""


# Volumes above this cannot be stored exactly (int64, and float64 for the contract's arithmetic).
MAX_VOLUME = 2**53


@dataclass(frozen=True)
class Received:
    """One answer from a source: the normalised rows, and the bytes as they arrived (kept if the batch is refused)."""

    rows: pd.DataFrame
    raw: bytes = b""
    raw_name: str = "batch.csv"


class PriceSource(Protocol):
    @property
    def name(self) -> str: ...

    def receive(self, ticker: str, since: dt.date | None, as_of: dt.date) -> Received:
        """Rows with `since` < Date <= `as_of` (all rows up to `as_of` when `since` is None), plus rows dated after
        today, which only corrupt data can hold."""
        ...

    def default_as_of(self, ticker: str) -> dt.date | None:
        """The day a run without --as-of stands on: None means today."""
        ...


def describe_columns(columns) -> str:
    """Column names for an error message, without echoing content: a header row may be anything (an environment)."""
    shown = [
        str(c) if re.fullmatch(r"[A-Za-z][A-Za-z0-9 _.-]{0,19}", str(c)) else "<unreadable>" for c in list(columns)[:8]
    ]
    more = f" and {len(columns) - 8} more" if len(columns) > 8 else ""
    return f"{len(columns)} column(s): {', '.join(shown)}{more}"


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce any price table to the store schema without dropping or repairing bad rows.

    Bad values (NaN, negative prices, duplicates) are kept on purpose: deciding about them is the
    data contract's job, and it can only name what it sees.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SourceError(f"price table lacks column(s) {missing}; got {describe_columns(frame.columns)}")
    out = frame[COLUMNS].copy()
    try:
        dates = pd.to_datetime(out["Date"], errors="coerce")
    except ValueError:
        # Mixed UTC offsets (a yfinance CSV export spanning a DST change): keep each row's local date.
        dates = pd.to_datetime(out["Date"].map(_local_wall_time), errors="coerce")
    if getattr(dates.dt, "tz", None) is not None:
        # Yahoo stamps sessions at exchange-local midnight; the session date is what we keep.
        dates = dates.dt.tz_localize(None)
    # A date the store's type cannot hold (year 3000, year 1) becomes missing, which the contract names as a row
    # without a readable date, instead of the cast failing here.
    dates = dates.where((dates >= pd.Timestamp.min) & (dates <= pd.Timestamp.max))
    out["Date"] = dates.dt.normalize().astype("datetime64[ns]")
    for column in PRICE_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    out["Volume"] = _volume(pd.to_numeric(out["Volume"], errors="coerce"))
    return out.sort_values("Date", kind="stable").reset_index(drop=True)


def _volume(volume: pd.Series) -> pd.Series:
    """Integer volume where every value can be one; otherwise floats, so the contract sees and names the bad rows
    (infinite, fractional beyond rounding, or too large to store) instead of a cast failing here."""
    values = volume.to_numpy(dtype="float64", na_value=np.nan)
    finite = values[~np.isnan(values)]
    if not (np.isfinite(finite).all() and (np.abs(finite) <= MAX_VOLUME).all()):
        return volume.astype("float64")
    rounded = volume.astype("float64").round()
    return rounded.astype("Int64") if np.isnan(values).any() else rounded.astype("int64")


def _local_wall_time(value: Any) -> Any:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp


def _window(frame: pd.DataFrame, since: dt.date | None, as_of: dt.date, today: dt.date) -> pd.DataFrame:
    """Rows in (since, as_of]; rows whose date could not be read, or that lie after today, are kept for the
    contract to name: hiding them would merge the rest of a corrupt batch without a word."""
    keep = frame["Date"] <= pd.Timestamp(as_of)
    if since is not None:
        keep &= frame["Date"] > pd.Timestamp(since)
    corrupt = frame["Date"].isna() | (frame["Date"] > pd.Timestamp(today))
    return frame.loc[keep | corrupt].reset_index(drop=True)


def _today() -> dt.date:
    return dt.date.today()


@dataclass(frozen=True)
class CsvSource:
    """`<TICKER>.csv` files with columns Date, Open, High, Low, Close, Volume (the bundled snapshot too)."""

    folder: Path
    name: str = "csv"
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    today: Callable[[], dt.date] = field(default=_today, compare=False)

    def path(self, ticker: str) -> Path:
        return Path(self.folder) / f"{validate_ticker(ticker)}.csv"

    def read(self, ticker: str) -> tuple[pd.DataFrame, bytes]:
        """The whole file, normalised, and its bytes."""
        path = self.path(ticker)
        if not path.exists() and not path.is_symlink():
            raise SourceError(f"no price file for {ticker}: {path} does not exist")
        try:
            raw = read_regular_file(Path(self.folder), path.name, self.max_bytes)
        except (UnsafeInput, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SourceError(f"refusing to read {path}: {reason}") from None
        try:
            frame = pd.read_csv(io.BytesIO(raw))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
            raise SourceError(f"cannot parse {path} as CSV: {_parse_problem(exc)}") from None
        return normalize(frame), raw

    def receive(self, ticker: str, since: dt.date | None, as_of: dt.date) -> Received:
        frame, raw = self.read(ticker)
        return Received(_window(frame, since, as_of, self.today()), raw, f"{validate_ticker(ticker)}.csv")

    def default_as_of(self, ticker: str) -> dt.date | None:
        """The bundled snapshot stands on its own last session, so a run on it is a faithful day of that data;
        a folder of the user's exports stands on today, like a live feed."""
        if self.name != "snapshot":
            return None
        dates = self.read(ticker)[0]["Date"].dropna()
        return None if dates.empty else dates.max().date()


def _parse_problem(exc: Exception) -> str:
    """What pandas could not parse, without the offending text (which may be anything)."""
    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    text = str(exc)
    if match := re.search(r"Expected \d+ fields in line \d+, saw \d+", text):
        return match.group(0)
    return type(exc).__name__


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
        raise TransientSourceError(f"Yahoo rate limit (HTTP 429) for {symbol}: {excerpt(exc)}") from exc
    except YFTzMissingError as exc:
        raise UnknownSymbol(f"Yahoo does not know {symbol!r} (unknown or delisted symbol): {excerpt(exc)}") from exc
    except YFPricesMissingError as exc:
        if start is None:  # not even one price in the symbol's whole history
            raise UnknownSymbol(
                f"Yahoo has no prices at all for {symbol!r} (unknown or delisted symbol): {excerpt(exc)}"
            ) from exc
        return pd.DataFrame(columns=COLUMNS)
    except (OSError, ConnectionError) as exc:
        raise TransientSourceError(f"network error reaching Yahoo for {symbol}: {excerpt(exc)}") from exc
    except Exception as exc:
        if _is_network_error(exc):
            raise TransientSourceError(f"network error reaching Yahoo for {symbol}: {excerpt(exc)}") from exc
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
    today: Callable[[], dt.date] = field(default=_today, compare=False)

    def default_as_of(self, ticker: str) -> dt.date | None:
        return None

    def receive(self, ticker: str, since: dt.date | None, as_of: dt.date) -> Received:
        symbol = self.symbols.get(validate_ticker(ticker), ticker)
        start = None if since is None else since + dt.timedelta(days=1)
        if start is not None and start > as_of:
            return Received(normalize(pd.DataFrame(columns=COLUMNS)))
        try:
            raw = self.download(symbol, start, as_of)
        except SourceError as exc:
            raise type(exc)(f"{ticker}: {exc}") from exc
        except Exception as exc:  # yfinance raises many unrelated types; name the ticker and keep the cause
            raise SourceError(
                f"{ticker}: Yahoo download failed for {symbol}: {type(exc).__name__}: {excerpt(exc)}"
            ) from exc
        if raw.empty:
            return Received(normalize(pd.DataFrame(columns=COLUMNS)))
        answer = raw.to_csv(index=False).encode()
        return Received(
            _window(normalize(raw), since, as_of, self.today()), answer, f"{validate_ticker(ticker)}.yahoo.csv"
        )


def build_source(
    kind: str,
    *,
    folder: Path | None = None,
    yahoo_symbols: dict[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
) -> PriceSource:
    """The source for a kind; file sources need the folder that `Settings.price_folder()` checked."""
    if kind in ("snapshot", "csv"):
        if folder is None:
            raise ValueError(f"source {kind!r} needs a folder of <TICKER>.csv files")
        return CsvSource(Path(folder), name=kind, max_bytes=max_bytes)
    if kind == "yahoo":
        return YahooSource(yahoo_symbols or {})
    raise ValueError(f"unknown source {kind!r}: use snapshot, csv or yahoo")
