"""A local cache of each ticker's last outcome, so `status` and the skip check need no round trip.

MLflow is the record of decisions and champions; this file only mirrors it. When the file is missing, empty, torn or
otherwise unreadable, it is rebuilt from MLflow (the caller supplies how) and written again: deleting it loses nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from pipeline.common import codec
from pipeline.common.files import atomic_write_text
from pipeline.common.outcome import TickerOutcome
from pipeline.common.symbols import validate_ticker

log = logging.getLogger(__name__)

FILENAME = "last_run.json"


class CacheUnreadable(ValueError):
    pass


def path(reports_dir: Path, ticker: str) -> Path:
    return Path(reports_dir) / validate_ticker(ticker) / FILENAME


def write(reports_dir: Path, outcome: TickerOutcome) -> None:
    atomic_write_text(path(reports_dir, outcome.ticker), json.dumps(codec.dump(outcome), indent=2))


def read(reports_dir: Path, ticker: str) -> TickerOutcome | None:
    """The cached outcome; None when there is none; CacheUnreadable when the file is broken."""
    target = path(reports_dir, ticker)
    try:
        text = target.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CacheUnreadable(f"{target}: {type(exc).__name__}") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("ticker") != ticker:
            raise ValueError("not this ticker's outcome")
        return codec.load(TickerOutcome, data)
    except (ValueError, TypeError, KeyError) as exc:
        raise CacheUnreadable(f"{target}: {type(exc).__name__}") from None


def last_outcome(reports_dir: Path, ticker: str, rebuild: Callable[[], TickerOutcome | None]) -> TickerOutcome | None:
    """The cached outcome, or the one rebuilt from the record when the cache is missing or unreadable."""
    try:
        cached = read(reports_dir, ticker)
    except CacheUnreadable as exc:
        log.warning("%s: the local cache is unreadable (%s); rebuilding it from MLflow", ticker, exc)
        cached = None
    if cached is not None:
        return cached
    rebuilt = rebuild()
    if rebuilt is not None:
        write(reports_dir, rebuilt)
    return rebuilt


def tickers(reports_dir: Path) -> list[str]:
    root = Path(reports_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{FILENAME}")) if root.is_dir() else []
