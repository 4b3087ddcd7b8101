"""The verdict: GX's result JSON turned into named failures and per-expectation outcomes (pure, tested without GX)."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.contract.report import CRITICAL, ExpectationOutcome, ValidationReport
from pipeline.contract.sanitize import LIST_CAP, ROW_CAP, exception_message, excerpt, iso, row_label, safe_value


def verdict(subject: str, rows: int, gx_result: dict[str, Any], **extra: Any) -> ValidationReport:
    """Turn GX's result JSON into named failures and per-expectation outcomes; pure, so it is tested without GX.

    `extra` fills the report's optional fields (parameters, first_date, last_date).
    """
    outcomes = [_outcome(result) for result in gx_result.get("results", [])]
    failures = [o.as_failure() for o in outcomes if not o.success]
    return ValidationReport(
        subject=subject,
        rows=rows,
        failures=failures,
        evaluated=len(outcomes),
        raw=gx_result,
        outcomes=outcomes,
        **extra,
    )


def _outcome(result: dict[str, Any]) -> ExpectationOutcome:
    config = result.get("expectation_config", {}) or {}
    kwargs = config.get("kwargs", {}) or {}
    details = result.get("result") or {}
    unexpected = details.get("unexpected_count")
    element_count = details.get("element_count")
    return ExpectationOutcome(
        expectation=config.get("type", "unknown"),
        column=kwargs.get("column") or _pair(kwargs),
        severity=config.get("severity", CRITICAL),
        purpose=(config.get("meta") or {}).get("purpose", ""),
        success=bool(result.get("success")),
        rule=_rule(kwargs),
        observed=safe_value(details.get("observed_value")),
        unexpected_count=int(unexpected) if isinstance(unexpected, (int, np.integer)) else None,
        element_count=int(element_count) if isinstance(element_count, (int, np.integer)) else None,
        rows=_failing_rows(details),
        error=exception_message(result.get("exception_info")),
    )


def _failing_rows(details: dict[str, Any]) -> tuple[str, ...]:
    """The failing rows' dates, from GX's index list (Date is the index column) — at most ROW_CAP of them."""
    entries = details.get("partial_unexpected_index_list") or details.get("unexpected_index_list") or []
    values: list[Any] = []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):  # {"Date": [...]} (values excluded) or {"Date": d, <column>: v} (one per row)
            found = entry.get("Date")
            values.extend(found if isinstance(found, list) else [found])
        else:
            values.append(entry)
        if len(values) >= ROW_CAP:
            break
    return tuple(row_label(v) for v in values[:ROW_CAP] if not (isinstance(v, str) and v.startswith("… ")))


_RULE_SKIP = {
    "batch_id",
    "column",
    "column_A",
    "column_B",
    "column_list",
    "result_format",
    "catch_exceptions",
    "include_config",
    "meta",
}


def _rule(kwargs: dict[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if key in _RULE_SKIP or value is None:
            continue
        if value is True:
            parts.append(key)
        elif isinstance(value, dict) and "$PARAMETER" in value:
            parts.append(f"{key}=${excerpt(value['$PARAMETER'])}")
        elif isinstance(value, (list, tuple)):
            parts.append(f"{key}=[{', '.join(excerpt(v) for v in value[:LIST_CAP])}]")
        elif isinstance(value, float):
            parts.append(f"{key}={value:g}")
        else:
            shown = iso(value) if isinstance(value, str) and "T00:00:00" in value else None
            parts.append(f"{key}={shown or excerpt(value)}")
    return ", ".join(parts)


def _pair(kwargs: dict[str, Any]) -> str | None:
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}>={kwargs['column_B']}"
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return None
