"""Where prices come from: bundled snapshot, a folder of CSV exports, or Yahoo Finance.

Every source returns the store's one schema: a `Date` column of tz-naive session dates and float
OHLC with integer volume, oldest first. Sources take an `as_of` date and hide rows after it (so the bundled snapshot
behaves like a live feed on that day), except rows dated after today: those are corrupt, and the data contract must
see them to refuse the batch. Each answer also keeps the bytes exactly as they arrived, for the quarantine.

Data files are untrusted: they are read only if they are regular files inside their folder, and messages never
quote their content. The shapes of CSV export they may come in (headers, delimiters, number and date formats,
`Adj Close`) are pipeline.data.csv_shapes'.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from pipeline.common.files import UnsafeInput, read_regular_file
from pipeline.common.redact import excerpt
from pipeline.common.settings import DEFAULT_MAX_INPUT_BYTES
from pipeline.common.symbols import validate_ticker
from pipeline.data.csv_shapes import ShapeError, adjusted, canonical_columns, read_table, session_dates, shown

log = logging.getLogger(__name__)

PRICE_COLUMNS = ["Open", "High", "Low", "Close"]
COLUMNS = ["Date", *PRICE_COLUMNS, "Volume"]


class SourceError(RuntimeError):
    """A source could not deliver prices for a ticker (unknown symbol, unreadable file, network)."""


class TransientSourceError(SourceError):
    """Worth retrying: rate limits, network and DNS failures."""


class UnknownSymbol(SourceError):
    """The provider does not know the symbol, or it is delisted: retrying cannot help."""


class UnreadablePrices(SourceError):
    """The source answered, but not with a price table that can be read (its columns, its format): a refused batch,
    kept with the bytes as they arrived so it can be quarantined like any other."""

    def __init__(self, message: str, raw: bytes = b"", raw_name: str = "batch.csv"):
        super().__init__(message)
        self.raw = raw
        self.raw_name = raw_name


# Volumes above this cannot be stored exactly (int64, and float64 for the contract's arithmetic).
MAX_VOLUME = 2**53


@dataclass(frozen=True)
class Received:
    """One answer from a source: the normalised rows, and the bytes as they arrived (kept if the batch is refused).
    `notes` say how the rows were derived from those bytes when it matters to what is stored (an `Adj Close`
    applied): worth a line in the run's log and a tag on its record."""

    rows: pd.DataFrame
    raw: bytes = b""
    raw_name: str = "batch.csv"
    notes: tuple[str, ...] = ()


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
    """Column names for an error message: printable names as they are (cut short), anything shaped like an
    environment entry masked, since a header row may be anything."""
    names = [shown(c) for c in list(columns)[:8]]
    more = f" and {len(columns) - 8} more" if len(columns) > 8 else ""
    return f"{len(columns)} column(s): {', '.join(names)}{more}"


# Why a missing column cannot be filled in: the data contract (expectations/prices.json) checks each of them.
_REQUIRED_BECAUSE = {"Volume": "the data contract requires every session's volume"}


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Coerce any price table to the store schema without dropping or repairing bad rows."""
    return normalized(frame)[0]


def normalized(frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Any price table in the store schema, and notes on how it was derived (an `Adj Close` applied).

    Headers are matched through csv_shapes' aliases. Bad values (NaN, negative prices, duplicates) are kept on
    purpose: deciding about them is the data contract's job, and it can only name what it sees.
    """
    try:
        frame = canonical_columns(frame)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            why = "".join(f" ({_REQUIRED_BECAUSE[c]})" for c in missing if c in _REQUIRED_BECAUSE)
            raise UnreadablePrices(
                f"price table lacks column(s) {missing}{why}; got {describe_columns(frame.columns)}"
                " (headers are matched ignoring case, spaces and punctuation, with the README's aliases)"
            )
        frame, notes = adjusted(frame)
        out = frame[COLUMNS].copy()
        out["Date"] = session_dates(out["Date"])
    except ShapeError as exc:
        raise UnreadablePrices(str(exc)) from None
    for column in PRICE_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64")
    out["Volume"] = _volume(pd.to_numeric(out["Volume"], errors="coerce"))
    return out.sort_values("Date", kind="stable").reset_index(drop=True), notes


def _volume(volume: pd.Series) -> pd.Series:
    """Integer volume where every value can be one; otherwise floats, so the contract sees and names the bad rows
    (infinite, fractional beyond rounding, or too large to store) instead of a cast failing here."""
    values = volume.to_numpy(dtype="float64", na_value=np.nan)
    finite = values[~np.isnan(values)]
    if not (np.isfinite(finite).all() and (np.abs(finite) <= MAX_VOLUME).all()):
        return volume.astype("float64")
    rounded = volume.astype("float64").round()
    return rounded.astype("Int64") if np.isnan(values).any() else rounded.astype("int64")


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
    """`<TICKER>.csv` files with columns Date, Open, High, Low, Close, Volume (the bundled snapshot too), in any of
    the shapes csv_shapes reads."""

    folder: Path
    name: str = "csv"
    max_bytes: int = DEFAULT_MAX_INPUT_BYTES
    today: Callable[[], dt.date] = field(default=_today, compare=False)

    def path(self, ticker: str) -> Path:
        return Path(self.folder) / f"{validate_ticker(ticker)}.csv"

    def read(self, ticker: str) -> tuple[pd.DataFrame, bytes]:
        """The whole file, normalised, and its bytes."""
        frame, raw, _ = self._read(ticker)
        return frame, raw

    def _read(self, ticker: str) -> tuple[pd.DataFrame, bytes, tuple[str, ...]]:
        """The whole file, normalised, its bytes and how it was read; a file that was read but cannot be understood
        raises `UnreadablePrices` with its bytes."""
        path = self.path(ticker)
        if not path.exists() and not path.is_symlink():
            raise SourceError(f"no price file for {ticker}: {path} does not exist")
        try:
            raw = read_regular_file(Path(self.folder), path.name, self.max_bytes)
        except (UnsafeInput, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SourceError(f"refusing to read {path}: {reason}") from None
        try:
            table = read_table(raw)
            frame, notes = normalized(table.frame)
        except (ShapeError, UnreadablePrices) as exc:
            raise UnreadablePrices(f"cannot read {path}: {exc}", raw, path.name) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
            raise UnreadablePrices(f"cannot parse {path} as CSV: {_parse_problem(exc)}", raw, path.name) from None
        return frame, raw, notes

    def receive(self, ticker: str, since: dt.date | None, as_of: dt.date) -> Received:
        frame, raw, notes = self._read(ticker)
        for note in notes:
            log.info("%s: %s", ticker, note)
        return Received(_window(frame, since, as_of, self.today()), raw, f"{validate_ticker(ticker)}.csv", notes)

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
        answer, name = raw.to_csv(index=False).encode(), f"{validate_ticker(ticker)}.yahoo.csv"
        try:
            rows, notes = normalized(raw)
        except UnreadablePrices as exc:
            raise UnreadablePrices(f"{ticker}: Yahoo's answer for {symbol}: {exc}", answer, name) from None
        return Received(_window(rows, since, as_of, self.today()), answer, name, notes)


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
