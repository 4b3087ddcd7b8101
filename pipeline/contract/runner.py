"""Running the contract: the suite evaluated by GX on a price table, then the verdict on GX's (sanitised) result."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.common.trading_calendar import DEFAULT_EXCHANGE
from pipeline.contract.data_docs import render_data_docs
from pipeline.contract.gx_context import GxState, gx_state
from pipeline.contract.inputs import contract_dates, contract_frame
from pipeline.contract.report import CRITICAL, UNEVALUATED, ValidationReport
from pipeline.contract.sanitize import MESSAGE_CHARS, ROW_CAP, excerpt, iso, sanitize_gx_result
from pipeline.contract.verdict import verdict

log = logging.getLogger(__name__)

# How GX reports failures: a summary (no raw values: they are untrusted), failing rows named by Date, capped.
RESULT_FORMAT = {
    "result_format": "SUMMARY",
    "unexpected_index_column_names": ["Date"],
    "partial_unexpected_count": ROW_CAP,
    "exclude_unexpected_values": True,
    "return_unexpected_index_query": False,
}


def validate_prices(
    prices: pd.DataFrame,
    *,
    subject: str,
    suite_definition: dict[str, Any],
    as_of: dt.date,
    min_rows: int = 1,
    docs_dir: Path | None = None,
    today: dt.date | None = None,
    exchange: str = DEFAULT_EXCHANGE,
) -> ValidationReport:
    """Run the suite on a price table with GX; the table's own meaning is in the suite's notes.

    `exchange` is the calendar whose sessions the table is held to (missing sessions, rows on closed days).
    `today` is the real current date (default: the machine's), not the replay's `as_of`: a row dated after it
    is corrupt data. Bad values never raise: they are failures naming their rows.

    With `docs_dir`, GX's Data Docs for this one report are also rendered there; prefer calling
    `render_data_docs` once with all of a run's reports (rendering is most of GX's cost).
    """
    today = dt.date.today() if today is None else today
    parameters = {"as_of": pd.Timestamp(as_of), "today": pd.Timestamp(today), "min_rows": int(min_rows)}
    frame = contract_frame(prices, exchange)
    dates = contract_dates(frame)
    extra = {
        "parameters": {"as_of": as_of.isoformat(), "today": today.isoformat(), "min_rows": int(min_rows)},
        "first_date": iso(dates.min()) if dates.notna().any() else None,
        "last_date": iso(dates.max()) if dates.notna().any() else None,
    }
    with gx_state() as state:
        suite, order = state.suite(suite_definition)  # a broken suite is a configuration error: it raises
        try:
            raw = _run_suite(state, frame, suite, order, parameters)
        except Exception as exc:
            raw = _unevaluated(suite_definition, exc)
            log.error(
                "%s: GX could not evaluate the contract: %s",
                subject,
                raw["results"][0]["exception_info"]["exception_message"],
            )
            log.debug("GX could not evaluate %s", subject, exc_info=True)
    report = verdict(subject, len(prices), raw, **extra)
    if docs_dir is not None:  # kept for callers that render per validation (GX keeps the last one's pages)
        render_data_docs([report], docs_dir, replace=False)
    return report


def _run_suite(
    state: GxState, frame: pd.DataFrame, suite: Any, order: dict[str, int], parameters: dict[str, Any]
) -> dict[str, Any]:
    batch = state.batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format=RESULT_FORMAT, expectation_parameters=parameters)
    raw = sanitize_gx_result(result.to_json_dict())
    raw["results"].sort(key=lambda r: order.get(str((r.get("expectation_config") or {}).get("id")), len(order)))
    raw.setdefault("meta", {})["validation_time"] = dt.datetime.now(dt.UTC).isoformat()
    return raw


def _unevaluated(suite_definition: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A result in GX's shape for a table GX raised on: one failed critical pseudo-expectation."""
    message = excerpt(f"{type(exc).__name__}: {exc}", MESSAGE_CHARS)
    return {
        "success": False,
        "suite_name": suite_definition.get("name", "prices"),
        "results": [
            {
                "success": False,
                "expectation_config": {
                    "type": UNEVALUATED,
                    "kwargs": {},
                    "severity": CRITICAL,
                    "meta": {"purpose": "The table can be evaluated at all (GX raised on it)."},
                },
                "result": {},
                "exception_info": {"raised_exception": True, "exception_traceback": None, "exception_message": message},
            }
        ],
    }
