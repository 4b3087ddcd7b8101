"""The data contract: a Great Expectations 1.x suite loaded from JSON, and a pure verdict on its result."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CRITICAL = "critical"


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None
    observed: Any
    purpose: str

    def describe(self) -> str:
        where = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.unexpected_count:
            detail = f"{self.unexpected_count} row(s)"
        elif self.observed is not None:
            detail = f"observed {self.observed}"
        else:
            detail = "failed"
        return f"{where}: {detail}"


@dataclass(frozen=True)
class ValidationReport:
    """What the contract said about one table; `raw` is GX's full JSON result."""

    subject: str
    rows: int
    failures: list[FailedExpectation] = field(default_factory=list)
    evaluated: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def critical_failures(self) -> list[FailedExpectation]:
        return [f for f in self.failures if f.severity == CRITICAL]

    @property
    def warnings(self) -> list[FailedExpectation]:
        return [f for f in self.failures if f.severity != CRITICAL]

    @property
    def passed(self) -> bool:
        return not self.critical_failures

    def summary(self) -> str:
        if not self.failures:
            return f"{self.subject}: {self.evaluated} expectations passed on {self.rows} rows"
        parts = "; ".join(f.describe() for f in self.failures)
        verdict = "FAILED" if not self.passed else "passed with warnings"
        return f"{self.subject}: {verdict}: {parts}"

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "rows": self.rows,
            "passed": self.passed,
            "evaluated": self.evaluated,
            "failures": [f.__dict__ | {"observed": _jsonable(f.observed)} for f in self.failures],
            "gx_result": self.raw,
        }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def load_suite_definition(path: Path) -> dict[str, Any]:
    definition = json.loads(Path(path).read_text())
    for expectation in definition.get("expectations", []):
        if expectation.get("severity") not in {"critical", "warning", "info"}:
            raise ValueError(f"{path}: every expectation needs severity critical|warning|info: {expectation}")
    return definition


def contract_frame(prices: pd.DataFrame) -> pd.DataFrame:
    """The table the contract sees: the prices, the daily log return between consecutive rows, and how many
    exchange sessions are missing before each row (real closures are not sessions, so they never count)."""
    from pipeline.trading_calendar import sessions_missed_before

    frame = prices.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["LogReturn"] = np.log(frame["Close"].astype(float)).diff()
    dates = pd.to_datetime(frame["Date"], errors="coerce")
    if dates.notna().all() and len(dates):
        frame["SessionsMissedBefore"] = sessions_missed_before(dates).to_numpy()
    else:  # unparseable dates are the Date expectations' to report; the gap check has nothing to measure
        frame["SessionsMissedBefore"] = 0
    return frame


def verdict(subject: str, rows: int, gx_result: dict[str, Any]) -> ValidationReport:
    """Turn GX's result JSON into named failures; pure, so it is tested without GX."""
    failures = []
    results = gx_result.get("results", [])
    for result in results:
        if result.get("success"):
            continue
        config = result.get("expectation_config", {})
        kwargs = config.get("kwargs", {})
        details = result.get("result") or {}
        failures.append(
            FailedExpectation(
                expectation=config.get("type", "unknown"),
                column=kwargs.get("column") or _pair(kwargs),
                severity=config.get("severity", CRITICAL),
                unexpected_count=details.get("unexpected_count"),
                observed=details.get("observed_value"),
                purpose=(config.get("meta") or {}).get("purpose", ""),
            )
        )
    return ValidationReport(subject=subject, rows=rows, failures=failures, evaluated=len(results), raw=gx_result)


def _pair(kwargs: dict[str, Any]) -> str | None:
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}>={kwargs['column_B']}"
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return None


DOCS_SITE = "stockpipe"


def validate_prices(
    prices: pd.DataFrame,
    *,
    subject: str,
    suite_definition: dict[str, Any],
    as_of: dt.date,
    min_rows: int = 1,
    docs_dir: Path | None = None,
) -> ValidationReport:
    """Run the suite on a price table with GX; the table's own meaning is in the suite's notes.

    With `docs_dir`, GX also renders its Data Docs HTML there (an ephemeral context would otherwise
    put them in a temporary folder).
    """
    with _GX_LOCK:
        return _validate(prices, subject=subject, suite_definition=suite_definition, as_of=as_of,
                         min_rows=min_rows, docs_dir=docs_dir)


# GX parses suite parameters with pyparsing, whose parse actions are not thread-safe on first use
# ("push_first() missing 1 required positional argument"): tickers validating in parallel threads take turns.
_GX_LOCK = threading.Lock()


def _validate(prices: pd.DataFrame, *, subject: str, suite_definition: dict[str, Any], as_of: dt.date,
              min_rows: int, docs_dir: Path | None) -> ValidationReport:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name=DOCS_SITE, site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE]))
    source = context.data_sources.add_pandas("prices")
    batch_definition = source.add_dataframe_asset(subject).add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add(gx.ExpectationSuite(
        name=suite_definition.get("name", "prices"),
        expectations=suite_definition["expectations"],
        meta=suite_definition.get("meta", {}),
    ))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=subject, data=batch_definition, suite=suite))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{subject} checkpoint", validation_definitions=[definition], actions=actions, result_format="SUMMARY",
    ))
    outcome = checkpoint.run(
        batch_parameters={"dataframe": contract_frame(prices)},
        expectation_parameters={"as_of": pd.Timestamp(as_of), "min_rows": int(min_rows)},
    )
    (result,) = outcome.run_results.values()
    return verdict(subject, len(prices), result.to_json_dict())
