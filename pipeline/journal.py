"""The last outcome of each ticker, kept beside the store so `status` and re-runs need no server."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pipeline.symbols import validate_ticker

FILENAME = "last_run.json"


def path(reports_dir: Path, ticker: str) -> Path:
    return Path(reports_dir) / validate_ticker(ticker) / FILENAME


def write(reports_dir: Path, ticker: str, outcome: dict[str, Any]) -> None:
    target = path(reports_dir, ticker)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".last_run.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(outcome, handle, indent=2, default=str)
    os.replace(tmp, target)


def read(reports_dir: Path, ticker: str) -> dict[str, Any] | None:
    target = path(reports_dir, ticker)
    if not target.exists():
        return None
    return json.loads(target.read_text())


def tickers(reports_dir: Path) -> list[str]:
    root = Path(reports_dir)
    return sorted(p.parent.name for p in root.glob(f"*/{FILENAME}")) if root.is_dir() else []
