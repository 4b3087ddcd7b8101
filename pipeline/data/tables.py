"""Reading a Parquet file this project wrote, as a table of known columns or a named refusal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd


def read_columns(path: Path, columns: Sequence[str], refused: Callable[[Exception], Exception]) -> pd.DataFrame:
    """The file's `columns`; a torn, truncated or foreign file raises `refused(cause)` (the cause is not chained:
    a reader's traceback would only repeat the file's bytes)."""
    try:
        frame = pd.read_parquet(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ValueError(f"lacks column(s) {missing}")
    except Exception as exc:
        raise refused(exc) from None
    return frame[list(columns)]
