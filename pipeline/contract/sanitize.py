"""Values from the data, made short, printable and JSON-safe before a report repeats them.

Values in a price table are untrusted (a CSV could be anything, even a link to /proc/self/environ), so
nothing read from the data reaches a report except numbers, ISO dates and short sanitised excerpts.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common import redact

ROW_CAP = 10  # failing rows named per expectation; the count says how many more there are
EXCERPT_CHARS = 40  # the longest piece of text from the data that a report repeats
MESSAGE_CHARS = 80  # an error message from GX or pandas (may quote a value from the data)
LIST_CAP = 10  # items kept from a list-valued observation (e.g. the observed column names)


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """`value` as at most `limit` printable characters on one line, with anything shaped like `NAME=value` (an
    environment entry) or a URL's password masked: text from a data file is untrusted."""
    return redact.excerpt(value, limit, mask_assignments=True)


def safe_value(value: Any, limit: int = EXCERPT_CHARS) -> Any:
    """A JSON-safe, short version of an observed value: a number, bool, None, ISO date, excerpt or short list."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else str(number)  # "inf", "-inf", "nan": JSON has no such numbers
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return iso(value) or "NaT"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index)):
        items = list(value)
        kept = [
            safe_value(v, limit) if not isinstance(v, (list, tuple, dict)) else excerpt(v, limit)
            for v in items[:LIST_CAP]
        ]
        return kept + ([f"… {len(items) - LIST_CAP} more"] if len(items) > LIST_CAP else [])
    return excerpt(value, limit)


def iso(value: Any) -> str | None:
    """An ISO date (or date-time, when not midnight) for anything that reads as one; None otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return None
    if stamp is pd.NaT or pd.isna(stamp):
        return None
    if stamp.tzinfo is None and stamp == stamp.normalize():
        return stamp.date().isoformat()
    return stamp.isoformat()


def row_label(value: Any) -> str:
    """How a failing row is named: its Date in ISO form, or a short excerpt when the Date is unreadable."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"row {int(value)}"  # a plain index position (no Date column to name it by)
    if isinstance(value, str) and value in {"NaT", "nan", "None", ""}:
        return "(no date)"
    found = iso(value) if isinstance(value, (str, pd.Timestamp, dt.date, np.datetime64)) else None
    if found is not None:
        return found
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(no date)"
    return excerpt(value)


def sanitize_gx_result(gx_result: dict[str, Any]) -> dict[str, Any]:
    """GX's suite result JSON with what came from the data made safe to store and show.

    The expectations' own configuration (from the suite file) is kept as is; each result's observed values,
    failing-row lists and error messages are excerpted and capped, and tracebacks are dropped.
    """
    out = dict(gx_result)
    results = []
    for result in gx_result.get("results", []):
        result = dict(result)
        if "result" in result:
            result["result"] = _sanitize_tree(result.get("result") or {}, EXCERPT_CHARS)
        info = result.get("exception_info")
        if isinstance(info, dict):
            result["exception_info"] = _sanitize_exception(info)
        results.append(result)
    out["results"] = results
    return out


def _sanitize_tree(value: Any, limit: int) -> Any:
    """A copy of GX's result JSON with every string excerpted and every list capped."""
    if isinstance(value, dict):
        return {str(k): _sanitize_tree(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        kept = [_sanitize_tree(v, limit) for v in value[:ROW_CAP]]
        return kept + ([f"… {len(value) - ROW_CAP} more"] if len(value) > ROW_CAP else [])
    if isinstance(value, str):
        return excerpt(value, limit)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _sanitize_exception(info: dict[str, Any]) -> dict[str, Any]:
    if "raised_exception" not in info and all(isinstance(v, dict) for v in info.values()):
        return {str(k): _sanitize_exception(v) for k, v in info.items()}  # GX keys some by metric
    message = info.get("exception_message")
    return {
        "raised_exception": bool(info.get("raised_exception")),
        "exception_traceback": None,
        "exception_message": None if message is None else excerpt(message, MESSAGE_CHARS),
    }


def exception_message(info: Any) -> str:
    """The (excerpted) message of the exception GX reports in an `exception_info`; "" when none was raised."""
    if not isinstance(info, dict):
        return ""
    if "raised_exception" in info:
        if info.get("raised_exception"):
            return excerpt(info.get("exception_message") or "raised an exception", MESSAGE_CHARS)
        return ""
    for nested in info.values():  # keyed by metric
        message = exception_message(nested)
        if message:
            return message
    return ""
