"""The shapes real CSV exports come in, read into the store's columns, or refused with the reason.

What is accepted (the README's "Using it" shows the same table):

- **Headers** are matched ignoring case, spaces and punctuation (`adj. close` is `Adj Close`), through `ALIASES`;
  other columns are ignored, two columns that mean the same thing are refused.
- **Delimiters**: comma, semicolon, tab or `|`, found from the header line (or Excel's `sep=` first line); any other
  is refused, named.
- **Numbers** may carry a currency symbol and thousands separators; the decimal mark is whichever the prices prove
  (`1.234,50`, `83,79` or `1,234.50`, `83.79`), and a file proving both is refused. Without proof it is a comma in a
  semicolon file (a spreadsheet in a decimal-comma locale), a point otherwise. Volumes may be written `26.83M`.
- **Dates** as ISO `YYYY-MM-DD` (with or without a time or an offset), month names (`Nov 10, 2017`), or day and month
  in either order (`11/10/2017`): the order is the one every value reads in, else the one under which the column is a
  daily series; when both readings fit, the file is refused as ambiguous.
- **`Adj Close`**, when present, is applied as Yahoo's own auto-adjustment is (what `--source yahoo` serves): Open,
  High, Low and Close are scaled by Adj Close / Close, Volume is kept as exported, so a history does not change when
  its source does.

Messages quote column names only through `excerpt` (short, single-line, assignments masked), never cell values.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.redact import excerpt

PRICES = ("Open", "High", "Low", "Close", "Adj Close")

# Each store column and the header spellings that mean it; a header matches when its key (`header_key`) does, so
# `CLOSE`, `close ` and `Close*` (Yahoo's web table) need no entry of their own.
ALIASES: dict[str, tuple[str, ...]] = {
    "Date": ("Date", "Datetime", "Timestamp"),
    "Open": ("Open",),
    "High": ("High",),
    "Low": ("Low",),
    "Close": ("Close", "Close/Last", "Last", "Price"),
    "Adj Close": ("Adj Close", "Adj. Close", "Adjusted Close"),
    "Volume": ("Volume", "Vol.", "Vol"),
}

DELIMITERS = {",": "a comma", ";": "a semicolon", "\t": "a tab", "|": "'|'"}


class ShapeError(ValueError):
    """A table whose shape cannot be read into the store's columns; the message says why, without its content."""


def header_key(name: object) -> str:
    """A header as matched: compatibility-folded, case-folded, letters and digits only."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", str(name)).casefold())


_KEYS = {header_key(spelling): column for column, spellings in ALIASES.items() for spelling in spellings}


def shown(name: object) -> str:
    """A column name fit for a message: printable text stays readable, cut short, with anything shaped like an
    environment entry masked (a header row may be anything)."""
    return repr(excerpt(name, 30, mask_assignments=True))


def canonical_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every recognised header renamed to its store column; two headers for one column are refused."""
    found: dict[str, list[Any]] = {}
    for name in frame.columns:
        if (column := _KEYS.get(header_key(name))) is not None:
            found.setdefault(column, []).append(name)
    clashes = {column: names for column, names in found.items() if len(names) > 1}
    if clashes:
        column, names = next(iter(clashes.items()))
        raise ShapeError(f"columns {', '.join(shown(n) for n in names)} all read as {column}: keep one")
    return frame.rename(columns={names[0]: column for column, names in found.items()})


@dataclass(frozen=True)
class Table:
    """A CSV file as read: store columns renamed, prices and volume as floats (NaN where a cell is not a number),
    dates still text."""

    frame: pd.DataFrame
    delimiter: str
    decimal: str


def read_table(raw: bytes) -> Table:
    """Bytes of a CSV export as a table of store columns. Raises `ShapeError`, or pandas' own parse errors."""
    text = _decode(raw)
    text, delimiter = _delimiter(text)
    frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, skipinitialspace=True)
    frame = canonical_columns(frame)
    decimal = _decimal_mark(frame[[c for c in PRICES if c in frame.columns]], delimiter)
    for column in (c for c in (*PRICES, "Volume") if c in frame.columns):
        frame[column] = parse_numbers(frame[column], decimal, scaled=column == "Volume")
    return Table(frame, delimiter, decimal)


def _decode(raw: bytes) -> str:
    # Excel's "Unicode text" is UTF-16 with a byte-order mark; everything else we read is UTF-8, with or without one.
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ShapeError(f"not {encoding.upper().removesuffix('-SIG')} text (byte {exc.start})") from None


def _delimiter(text: str) -> tuple[str, str]:
    """The text without Excel's `sep=` line, and the delimiter: that line's, else the header's (data rows are no
    guide: decimal commas and thousands separators would compete with the real delimiter)."""
    if match := re.match(r"sep=(.)\r?\n", text):
        delimiter, text = match.group(1), text[match.end() :]
        if delimiter not in DELIMITERS:
            raise ShapeError(f"the file declares {_named(delimiter)} as its delimiter: {_readable_delimiters()}")
        return text, delimiter
    header = next((line for line in text.splitlines() if line.strip()), "")
    sniffer = csv.Sniffer()
    try:
        return text, sniffer.sniff(header, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        pass
    try:
        found = sniffer.sniff(header).delimiter
    except csv.Error:
        found = ""
    if found and not found.isalnum():
        raise ShapeError(f"the header is separated by {_named(found)}: {_readable_delimiters()}")
    if not header:
        raise ShapeError("the file is empty")
    raise ShapeError(f"the header has no delimiter (one column: {shown(header)}): {_readable_delimiters()}")


def _named(delimiter: str) -> str:
    return "a space" if delimiter == " " else repr(delimiter)


def _readable_delimiters() -> str:
    *others, last = DELIMITERS.values()
    return f"columns must be separated by {', '.join(others)} or {last}"


# Currency symbols and spaces (some locales group thousands with a non-breaking or narrow space).
_NOISE = r"[\s\u00a0\u202f$€£¥₹]"


def _decimal_mark(prices: pd.DataFrame, delimiter: str) -> str:
    """The file's decimal mark, as its price cells prove it: the last separator before anything but exactly three
    digits is the decimal mark. A semicolon file without proof is a decimal-comma spreadsheet's."""
    if prices.columns.empty:
        return "."
    cells = pd.concat([prices[c] for c in prices.columns], ignore_index=True).dropna().astype("string")
    # Most files have no comma in any price: only those that do need the slower look at every cell.
    with_comma = cells[cells.str.contains(",", regex=False)].str.replace(_NOISE, "", regex=True)
    comma = bool(with_comma.str.contains(r"\d,(?:\d{1,2}|\d{4,})$|\.\d{3},\d+$", regex=True).any())
    if not comma and delimiter != ";":
        return "."
    point = bool(cells.str.replace(_NOISE, "", regex=True).str.contains(r"\d\.(?:\d{1,2}|\d{4,})$|,\d{3}\.\d+$").any())
    if comma and point:
        raise ShapeError("prices use both ',' and '.' as their decimal mark: export them with one")
    return "." if point else ","


_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}


def parse_numbers(cells: pd.Series, decimal: str, *, scaled: bool = False) -> pd.Series:
    """Numbers as written by people's tools (`$1,234.50`, `1.234,50`, `26.83M` when `scaled`); anything else is NaN,
    for the data contract to name."""
    text = cells.astype("string")
    values = pd.Series(np.nan, index=cells.index, dtype="float64")
    if decimal == ".":
        # Plain numbers, the usual file, at pandas' speed: only the other cells need the grammar below.
        values = pd.to_numeric(text, errors="coerce").astype("float64")
        text = text[values.isna() & text.notna()]
    if not text.empty:
        values.loc[text.index] = _written_numbers(text, decimal, scaled)
    return values


def _written_numbers(text: pd.Series, decimal: str, scaled: bool) -> pd.Series:
    group = "." if decimal == "," else ","
    body = rf"(?:\d{{1,3}}(?:{re.escape(group)}\d{{3}})+|\d+)(?:{re.escape(decimal)}\d*)?|{re.escape(decimal)}\d+"
    suffix = r"(?P<suffix>[kKmMbB]?)" if scaled else ""
    text = text.str.replace(_NOISE, "", regex=True)
    parts = text.str.extract(rf"^(?P<sign>[+-]?)(?P<body>{body})(?P<exp>[eE][+-]?\d+)?{suffix}$")
    digits = parts["body"].str.replace(group, "", regex=False).str.replace(decimal, ".", regex=False)
    values = pd.to_numeric(parts["sign"].fillna("") + digits + parts["exp"].fillna(""), errors="coerce")
    values = values.astype("float64")
    if scaled:
        values = values * parts["suffix"].fillna("").str.upper().map(_SCALE).astype("float64")
    return values


def adjusted(frame: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Open, High, Low and Close scaled by Adj Close / Close on every row, as yfinance's auto_adjust does (what
    `--source yahoo` stores); Volume as it is. A row without a readable factor gets no prices: the contract names it
    instead of the row keeping unadjusted prices among adjusted ones."""
    if "Adj Close" not in frame.columns or "Close" not in frame.columns:
        return frame, ()
    out = frame.copy()
    close = pd.to_numeric(out["Close"], errors="coerce").astype("float64")
    factor = pd.to_numeric(out["Adj Close"], errors="coerce").astype("float64") / close.where(close != 0)
    for column in ("Open", "High", "Low"):
        if column in out.columns:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype("float64") * factor
    out["Close"] = close * factor
    moved = int((factor.sub(1).abs() > 1e-9).sum())
    note = (
        f"Adj Close applied as --source yahoo applies it: Open, High, Low and Close scaled by Adj Close / Close "
        f"({moved} of {len(out)} row(s) changed), Volume as exported"
    )
    return out, (note,)


# Day and month in either order, then a 4- or 2-digit year (`11/10/2017`, `10.11.2017`, `11-10-17`).
_DAY_MONTH = re.compile(r"^\s*(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})(?!\d)")


def session_dates(values: pd.Series) -> pd.Series:
    """Session dates, tz-naive at midnight; a value that is not a date is NaT, for the contract to name."""
    if _is_text(values) and (first := _first_text(values)) is not None and (shape := _DAY_MONTH.match(first)):
        dates = _day_month_dates(values, shape.group(2), len(shape.group(4)))
    else:
        try:
            dates = pd.to_datetime(values, errors="coerce")
        except ValueError:
            # Mixed UTC offsets (a yfinance CSV export spanning a DST change): keep each row's local date.
            dates = pd.to_datetime(values.map(_local_wall_time), errors="coerce")
    if getattr(dates.dt, "tz", None) is not None:
        # Yahoo stamps sessions at exchange-local midnight; the session date is what we keep.
        dates = dates.dt.tz_localize(None)
    # A date the store's type cannot hold (year 3000, year 1) becomes missing, which the contract names as a row
    # without a readable date, instead of the cast failing here.
    dates = dates.where((dates >= pd.Timestamp.min) & (dates <= pd.Timestamp.max))
    return dates.dt.normalize().astype("datetime64[ns]")


def _is_text(values: pd.Series) -> bool:
    return values.dtype == object or isinstance(values.dtype, pd.StringDtype)


def _first_text(values: pd.Series) -> str | None:
    present = values.dropna()
    return str(present.iloc[0]) if len(present) else None


def _day_month_dates(values: pd.Series, separator: str, year_digits: int) -> pd.Series:
    """The reading of a day-and-month column that its values prove, else the one that makes it a daily series."""
    parts = values.astype("string").str.extract(_DAY_MONTH.pattern)
    text = parts[0] + "/" + parts[2] + "/" + parts[3]
    year = "%Y" if year_digits == 4 else "%y"
    readings = {
        name: pd.to_datetime(text, format=f"{first}/{second}/{year}", errors="coerce")
        for name, (first, second) in {"MM/DD": ("%m", "%d"), "DD/MM": ("%d", "%m")}.items()
    }
    most = max(r.notna().sum() for r in readings.values())
    if most == 0:
        return readings["MM/DD"]  # no date at all: the contract names every row
    fitting = [name for name, r in readings.items() if r.notna().sum() == most]
    if len(fitting) > 1:
        fitting = [name for name in fitting if _daily(readings[name])]
    if len(fitting) != 1:
        sample = str(text.dropna().iloc[0]).replace("/", separator) if text.notna().any() else "?"
        raise ShapeError(
            f"dates such as {sample!r} read both as {_spelled('MM/DD', separator, year)} and as "
            f"{_spelled('DD/MM', separator, year)}, and no value tells which: write them as YYYY-MM-DD"
        )
    return readings[fitting[0]]


def _spelled(order: str, separator: str, year: str) -> str:
    return order.replace("/", separator) + separator + ("YYYY" if year == "%Y" else "YY")


def _daily(dates: pd.Series) -> bool:
    """Whether dates read as a daily history: strictly in one order, a few days apart at most."""
    gaps = dates.dropna().diff().dropna()
    if gaps.empty:
        return False
    one_way = bool((gaps > pd.Timedelta(0)).all() or (gaps < pd.Timedelta(0)).all())
    return one_way and pd.Timedelta(gaps.abs().median()) <= pd.Timedelta(days=7)


def _local_wall_time(value: Any) -> Any:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    return stamp.tz_localize(None) if stamp.tzinfo is not None else stamp
