"""Rejected batches, kept as they arrived with why they were refused, and pruned by age and total size.

`quarantine/<TICKER>/<UTC time>/` holds the bytes exactly as received (the file, or Yahoo's answer), the contract's
JSON result and a small HTML report; nothing fetched is lost, and nothing grows without bound.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.common.files import atomic_write_bytes, atomic_write_text, private_dir, tree_size
from pipeline.common.symbols import validate_ticker

log = logging.getLogger(__name__)

STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class Retention:
    max_age_days: float
    max_bytes: int


@dataclass(frozen=True)
class Usage:
    batches: int
    bytes: int


def keep(
    root: Path,
    ticker: str,
    raw: bytes,
    raw_name: str,
    report: dict[str, Any],
    html: str | None,
    now: dt.datetime | None = None,
) -> Path:
    """Store one rejected batch; returns its folder."""
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime(STAMP_FORMAT)
    folder = private_dir(Path(root) / validate_ticker(ticker) / stamp)
    # The name is the source's own (`MSFT.csv`), never a path taken from the data, and never one of the report's.
    name = Path(raw_name).name
    if name in ("", ".", "..", "validation.json", "validation.html"):
        name = "batch.raw"
    atomic_write_bytes(folder / name, raw)
    atomic_write_text(folder / "validation.json", json.dumps(report, indent=2, default=str))
    if html is not None:
        atomic_write_text(folder / "validation.html", html)
    log.warning("%s: rejected batch (%d bytes as received) quarantined in %s", ticker, len(raw), folder)
    return folder


def _batches(root: Path) -> list[tuple[dt.datetime, Path]]:
    found = []
    for folder in Path(root).glob("*/*"):
        try:
            when = dt.datetime.strptime(folder.name, STAMP_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            continue  # not ours: never delete what this module did not write
        if folder.is_dir() and not folder.is_symlink():
            found.append((when, folder))
    return sorted(found)


def prune(root: Path, retention: Retention, now: dt.datetime | None = None) -> list[Path]:
    """Delete batches older than the retention age, then the oldest until the total fits; returns what went."""
    now = now or dt.datetime.now(dt.UTC)
    batches = _batches(root)
    removed = []
    sizes = {folder: tree_size(folder) for _, folder in batches}
    total = sum(sizes.values())
    for when, folder in batches:
        too_old = (now - when).total_seconds() > retention.max_age_days * 86400
        if too_old or total > retention.max_bytes:
            shutil.rmtree(folder, ignore_errors=True)
            total -= sizes[folder]
            removed.append(folder)
    if removed:
        log.info("quarantine: pruned %d batch(es); %d bytes kept", len(removed), total)
    return removed


def usage(root: Path, ticker: str | None = None) -> Usage:
    batches = [folder for _, folder in _batches(root) if ticker is None or folder.parent.name == ticker]
    return Usage(len(batches), sum(tree_size(folder) for folder in batches))
