"""A synthetic benchmark universe (issue 26): N tickers of daily OHLCV made from the bundled histories, for cost
measurements only (time, memory, bytes per ticker as the universe grows). Never for quality claims: the series are
resampled pieces of two real histories, so a forecaster's error or an interval's coverage on them says nothing about
any market, and no figure measured on them may be reported as one.

Method. Ticker i (named SYN001, SYN002, ...) draws everything from numpy's `default_rng([seed, i])`, so it does not
depend on how many tickers are made (the first 32 of a 64-ticker universe are the 32-ticker universe) and the same
seed gives the same bytes.

- Source: bundled MSFT for even i, bundled S&P 500 (GSPC) for odd i, each read as the `snapshot` source reads it.
- Relative moves, per source session: the log return close to close; Open, High and Low as ratios to that session's
  Close; Volume as a ratio to the median volume of the 20 sessions ending on it (1 where that is undefined, or on
  MSFT's one zero-volume session).
- Blocks of 20 consecutive source sessions of those moves are drawn with replacement, uniformly, and laid end to end
  until the span is covered; the last block is cut short.
- The closes chain the drawn log returns into one continuous path from a per-ticker starting close (log-uniform in
  [10, 400]); each bar's Open/High/Low are its ratios times its close; each volume is its ratio times a per-ticker
  level (log-uniform in [2e5, 5e7] shares), rounded, at least 1. A path whose Low would fall below 1 is scaled up as
  a whole (returns unchanged) so that four decimals keep every price positive and precise.
- Dates: the consecutive New York (XNYS) sessions of the `years` up to `end`, ending on `end` (by default the
  bundled MSFT history's last session, 2017-11-10: the day the default `stockpipe run` on the snapshot stands on).

Every bar keeps Low <= min(Open, Close) <= max(Open, Close) <= High; daily moves are the sources' own (at most MSFT's
-0.36 of 1987-10-19, about 0.1% of them beyond 0.15); no session is missing or off the calendar, so the bundled data
contract (expectations/prices.json) passes without a warning in all but rare draws.

Files are `<TICKER>.csv` in the bundled snapshots' shape (Date,Open,High,Low,Close,Volume; ISO dates; prices with at
most four decimals; integer volumes), read by `stockpipe run --source csv --csv-dir FOLDER --tickers ...`. A folder
of CSV files stands on today unless told otherwise, so such a run takes `--as-of` the universe's end (2017-11-10 by
default), or its data is stale.

Run: .venv/bin/python bench/universe.py --count 32 --out DIR [--years 12] [--seed 0] [--end YYYY-MM-DD]
     (prints the tickers on one line, ready for --tickers)
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.common.settings import BUNDLED_SNAPSHOTS  # noqa: E402
from pipeline.common.trading_calendar import (  # noqa: E402
    DEFAULT_EXCHANGE,
    exchange_calendar,
    last_session_on_or_before,
    sessions_between,
)
from pipeline.data.sources import COLUMNS, CsvSource  # noqa: E402

SOURCES = ("MSFT", "GSPC")  # ticker i resamples SOURCES[i % 2]
PREFIX = "SYN"
BLOCK = 20  # consecutive source sessions per resampled block
VOLUME_WINDOW = 20  # sessions in the median a session's volume is taken relative to
START_PRICE = (10.0, 400.0)  # per-ticker first close, log-uniform
VOLUME_LEVEL = (2e5, 5e7)  # per-ticker typical volume in shares, log-uniform
MIN_PRICE = 1.0  # a path whose Low goes below this is scaled up
DECIMALS = 4
DAYS_PER_YEAR = 365.25


def ticker_names(count: int) -> list[str]:
    """SYN001, SYN002, ...: three digits, more only when `count` needs them."""
    width = max(3, len(str(count)))
    return [f"{PREFIX}{i + 1:0{width}d}" for i in range(count)]


@lru_cache(maxsize=4)
def _moves(source: str) -> dict[str, np.ndarray]:
    """A source's relative moves per session (index 0 has no return and is never drawn)."""
    prices, _ = CsvSource(BUNDLED_SNAPSHOTS).read(source)
    close = prices["Close"].to_numpy("float64")
    volume = prices["Volume"].to_numpy("float64")
    median = pd.Series(volume).rolling(VOLUME_WINDOW, min_periods=1).median().to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        volume_ratio = np.where((volume > 0) & (median > 0), volume / median, 1.0)
    log_return = np.concatenate([[0.0], np.diff(np.log(close))])
    moves = {
        "log_return": log_return,
        "open": prices["Open"].to_numpy("float64") / close,
        "high": prices["High"].to_numpy("float64") / close,
        "low": prices["Low"].to_numpy("float64") / close,
        "volume": volume_ratio,
    }
    for values in moves.values():
        values.setflags(write=False)
    return moves


def default_end() -> dt.date:
    """The bundled MSFT history's last session: where the default run on the snapshot stands."""
    dates = pd.read_csv(BUNDLED_SNAPSHOTS / f"{SOURCES[0]}.csv", usecols=["Date"])["Date"]
    return dt.date.fromisoformat(str(dates.iloc[-1]))


def universe_sessions(years: float, end: dt.date | None = None, exchange: str = DEFAULT_EXCHANGE) -> pd.DatetimeIndex:
    """The consecutive sessions of the `years` up to `end` (a closed day: the session before it), `end` included."""
    if not years > 0:
        raise ValueError(f"years must be positive, got {years}")
    last = last_session_on_or_before(default_end() if end is None else end, exchange)
    first = last - dt.timedelta(days=round(years * DAYS_PER_YEAR)) + dt.timedelta(days=1)
    if pd.Timestamp(first) < exchange_calendar(exchange).first_session:
        raise ValueError(f"{years} years before {last} starts before the {exchange} calendar ({first})")
    return sessions_between(first, last, exchange)


def synthetic_ticker(index: int, sessions: pd.DatetimeIndex, *, seed: int = 0) -> pd.DataFrame:
    """Ticker `index`'s bars on `sessions`, in the store's schema (see the module's method)."""
    rng = np.random.default_rng([seed, index])
    moves = _moves(SOURCES[index % len(SOURCES)])
    rows = len(sessions)
    available = len(moves["log_return"])
    starts = rng.integers(1, available - BLOCK + 1, size=-(-rows // BLOCK))
    drawn = (starts[:, None] + np.arange(BLOCK)).ravel()[:rows]
    start_price = np.exp(rng.uniform(*np.log(START_PRICE)))
    volume_level = np.exp(rng.uniform(*np.log(VOLUME_LEVEL)))

    log_path = np.cumsum(moves["log_return"][drawn])
    close = start_price * np.exp(log_path - log_path[0])
    low = close * moves["low"][drawn]
    scale = max(1.0, MIN_PRICE / low.min())
    close, low = close * scale, low * scale
    open_, high = close * moves["open"][drawn], close * moves["high"][drawn]
    open_, high, low, close = (np.round(values, DECIMALS) for values in (open_, high, low, close))
    # Already so in the sources and kept by monotone arithmetic; made explicit against any rounding surprise.
    high = np.maximum.reduce([high, open_, close])
    low = np.minimum.reduce([low, open_, close])
    volume = np.maximum(1, np.round(volume_level * moves["volume"][drawn])).astype("int64")
    return pd.DataFrame(
        {
            "Date": pd.DatetimeIndex(sessions).astype("datetime64[ns]"),
            "Open": open_,
            "High": high,
            "Low": low,
            "Close": close,
            "Volume": volume,
        },
        columns=COLUMNS,
    )


def synthetic_universe(
    count: int, *, years: float = 12, seed: int = 0, end: dt.date | None = None
) -> dict[str, pd.DataFrame]:
    """`count` synthetic tickers, name to bars, each on the same `years` of New York sessions ending on `end`
    (default: the bundled MSFT history's last session). For cost measurement only, never for quality claims."""
    if count < 0 or seed < 0:
        raise ValueError(f"count and seed must be at least 0, got count={count}, seed={seed}")
    sessions = universe_sessions(years, end)
    return {name: synthetic_ticker(i, sessions, seed=seed) for i, name in enumerate(ticker_names(count))}


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A price table as the bundled snapshots are written: header, ISO dates, plain numbers, LF line ends."""
    return frame.to_csv(index=False, date_format="%Y-%m-%d", lineterminator="\n").encode()


def write_universe(
    folder: Path, count: int, *, years: float = 12, seed: int = 0, end: dt.date | None = None
) -> list[str]:
    """`synthetic_universe` written as `<TICKER>.csv` files in `folder` (created if missing); returns the tickers."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    universe = synthetic_universe(count, years=years, seed=seed, end=end)
    for name, frame in universe.items():
        (folder / f"{name}.csv").write_bytes(csv_bytes(frame))
    return list(universe)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True, help="how many tickers")
    parser.add_argument("--out", type=Path, required=True, help="folder for the <TICKER>.csv files")
    parser.add_argument("--years", type=float, default=12.0, help="span of each history (default 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--end", type=dt.date.fromisoformat, help="last session, YYYY-MM-DD (default: bundled MSFT's last)"
    )
    args = parser.parse_args()
    print(" ".join(write_universe(args.out, args.count, years=args.years, seed=args.seed, end=args.end)))


if __name__ == "__main__":
    main()
