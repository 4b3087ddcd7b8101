"""The data contract: a Great Expectations 1.x suite loaded from JSON, and a pure verdict on its result.

Values in a price table are untrusted (a CSV could be anything, even a link to /proc/self/environ), so
nothing read from the data reaches a report except numbers, ISO dates and short sanitised excerpts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import redact

log = logging.getLogger(__name__)

CRITICAL = "critical"
ROW_CAP = 10  # failing rows named per expectation; the count says how many more there are
EXCERPT_CHARS = 40  # the longest piece of text from the data that a report repeats
MESSAGE_CHARS = 80  # an error message from GX or pandas (may quote a value from the data)
LIST_CAP = 10  # items kept from a list-valued observation (e.g. the observed column names)
VOLUME_MEDIAN_WINDOW = 20  # sessions whose median volume a session's volume is compared with


# -- keeping untrusted values short and printable -----------------------------------------------------------------


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
        return _iso(value) or "NaT"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray, pd.Index)):
        items = list(value)
        kept = [
            safe_value(v, limit) if not isinstance(v, (list, tuple, dict)) else excerpt(v, limit)
            for v in items[:LIST_CAP]
        ]
        return kept + ([f"… {len(items) - LIST_CAP} more"] if len(items) > LIST_CAP else [])
    return excerpt(value, limit)


def _iso(value: Any) -> str | None:
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
    iso = _iso(value) if isinstance(value, (str, pd.Timestamp, dt.date, np.datetime64)) else None
    if iso is not None:
        return iso
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(no date)"
    return excerpt(value)


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


def _sanitize_exception(info: dict[str, Any]) -> dict[str, Any]:
    if "raised_exception" not in info and all(isinstance(v, dict) for v in info.values()):
        return {str(k): _sanitize_exception(v) for k, v in info.items()}  # GX keys some by metric
    message = info.get("exception_message")
    return {
        "raised_exception": bool(info.get("raised_exception")),
        "exception_traceback": None,
        "exception_message": None if message is None else excerpt(message, MESSAGE_CHARS),
    }


def _exception_message(info: Any) -> str:
    if not isinstance(info, dict):
        return ""
    if "raised_exception" in info:
        if info.get("raised_exception"):
            return excerpt(info.get("exception_message") or "raised an exception", MESSAGE_CHARS)
        return ""
    for nested in info.values():  # keyed by metric
        message = _exception_message(nested)
        if message:
            return message
    return ""


# -- what the contract said -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None
    observed: Any
    purpose: str
    rows: tuple[str, ...] = ()  # the failing rows' dates (ISO), at most ROW_CAP of them
    error: str = ""  # GX could not evaluate the expectation: its (short, sanitised) error message

    def describe(self) -> str:
        where = f"{self.expectation}({self.column})" if self.column else self.expectation
        if self.unexpected_count:
            detail = f"{self.unexpected_count} row(s)"
            if self.rows:
                detail += ": " + ", ".join(self.rows)
                if self.unexpected_count > len(self.rows):
                    detail += f" and {self.unexpected_count - len(self.rows)} more"
        elif self.error:
            detail = f"not evaluated: {self.error}"
        elif self.observed is not None:
            detail = f"observed {_shown(self.observed)}"
        else:
            detail = "failed"
        return f"{where}: {detail}"


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation as evaluated, passed or not: what the HTML report lists."""

    expectation: str
    column: str | None
    severity: str
    purpose: str
    success: bool
    rule: str = ""  # the expectation's arguments, parameters resolved (e.g. "max_value=2017-11-10")
    observed: Any = None  # GX's observed value (aggregate expectations), made safe
    unexpected_count: int | None = None
    element_count: int | None = None
    rows: tuple[str, ...] = ()
    error: str = ""

    @property
    def result(self) -> str:
        """passed, failed (a critical expectation broke) or warning (any other severity broke)."""
        if self.success:
            return "passed"
        return "failed" if self.severity == CRITICAL else "warning"

    def as_failure(self) -> FailedExpectation:
        return FailedExpectation(
            self.expectation,
            self.column,
            self.severity,
            self.unexpected_count,
            self.observed,
            self.purpose,
            rows=self.rows,
            error=self.error,
        )


@dataclass(frozen=True)
class ValidationReport:
    """What the contract said about one table; `raw` is GX's result JSON (values from the data made safe)."""

    subject: str
    rows: int
    failures: list[FailedExpectation] = field(default_factory=list)
    evaluated: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)  # every expectation, in suite order
    parameters: dict[str, Any] = field(default_factory=dict)  # the suite parameters it ran with (as_of, today, ...)
    first_date: str | None = None
    last_date: str | None = None

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
            "first_date": self.first_date,
            "last_date": self.last_date,
            "passed": self.passed,
            "evaluated": self.evaluated,
            "parameters": {k: _jsonable(v) for k, v in self.parameters.items()},
            "failures": [asdict(f) | {"observed": _jsonable(f.observed), "rows": list(f.rows)} for f in self.failures],
            "outcomes": [
                asdict(o) | {"observed": _jsonable(o.observed), "rows": list(o.rows), "result": o.result}
                for o in self.outcomes
            ],
            "gx_result": self.raw,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def _shown(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def load_suite_definition(path: Path) -> dict[str, Any]:
    definition = json.loads(Path(path).read_text())
    for expectation in definition.get("expectations", []):
        if expectation.get("severity") not in {"critical", "warning", "info"}:
            raise ValueError(f"{path}: every expectation needs severity critical|warning|info: {expectation}")
    return definition


# -- the table the contract sees ----------------------------------------------------------------------------------


def contract_frame(prices: pd.DataFrame) -> pd.DataFrame:
    """The table the contract sees: the prices and, measured against the ticker's own history,

    - `LogReturn`: the daily log return between consecutive closes;
    - `LogRange`: the day's log(High / Low);
    - `VolumeToMedian`: the session's volume over the median volume of the previous sessions;
    - `SessionsMissedBefore`: how many exchange sessions are missing before the row (real closures are not
      sessions, so they never count).

    Never raises on bad values: whatever cannot be measured is NaN, for the contract's own checks to name.
    """
    from pipeline.trading_calendar import sessions_missed_before

    frame = prices.copy()
    close, high, low = (_numeric(frame, c) for c in ("Close", "High", "Low"))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        frame["LogReturn"] = np.log(close.where(close > 0)).diff()
        frame["LogRange"] = np.log(high.where(high > 0) / low.where(low > 0))
        volume = _numeric(frame, "Volume")
        volume = volume.where(np.isfinite(volume))
        median = volume.shift(1).rolling(VOLUME_MEDIAN_WINDOW, min_periods=5).median()
        frame["VolumeToMedian"] = volume / median.where(median > 0)  # no ratio to a zero or unknown median
    dates = pd.to_datetime(frame["Date"], errors="coerce") if "Date" in frame else pd.Series(dtype="datetime64[ns]")
    if len(dates) and dates.notna().all():
        try:
            frame["SessionsMissedBefore"] = sessions_missed_before(dates).to_numpy()
        except (ValueError, OverflowError, TypeError):  # dates the calendar cannot place: the Date checks name them
            frame["SessionsMissedBefore"] = 0
    else:  # unparseable dates are the Date expectations' to report; the gap check has nothing to measure
        frame["SessionsMissedBefore"] = 0
    return frame


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(np.nan, index=frame.index, dtype="float64")
    return pd.to_numeric(frame[column], errors="coerce").astype("float64")


# -- the verdict (pure) -------------------------------------------------------------------------------------------


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
        error=_exception_message(result.get("exception_info")),
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
            shown = _iso(value) if isinstance(value, str) and "T00:00:00" in value else None
            parts.append(f"{key}={shown or excerpt(value)}")
    return ", ".join(parts)


def _pair(kwargs: dict[str, Any]) -> str | None:
    if "column_A" in kwargs:
        return f"{kwargs['column_A']}>={kwargs['column_B']}"
    if "column_list" in kwargs:
        return ",".join(kwargs["column_list"])
    return None


# -- running the suite with GX ------------------------------------------------------------------------------------

DOCS_SITE = "stockpipe"

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
) -> ValidationReport:
    """Run the suite on a price table with GX; the table's own meaning is in the suite's notes.

    `today` is the real current date (default: the machine's), not the replay's `as_of`: a row dated after it
    is corrupt data. Bad values never raise: they are failures naming their rows.

    With `docs_dir`, GX's Data Docs for this one report are also rendered there; prefer calling
    `render_data_docs` once with all of a run's reports (rendering is most of GX's cost).
    """
    today = dt.date.today() if today is None else today
    parameters = {"as_of": pd.Timestamp(as_of), "today": pd.Timestamp(today), "min_rows": int(min_rows)}
    frame = contract_frame(prices)
    dates = pd.to_datetime(frame["Date"], errors="coerce") if "Date" in frame else pd.Series(dtype="datetime64[ns]")
    extra = {
        "parameters": {"as_of": as_of.isoformat(), "today": today.isoformat(), "min_rows": int(min_rows)},
        "first_date": _iso(dates.min()) if dates.notna().any() else None,
        "last_date": _iso(dates.max()) if dates.notna().any() else None,
    }
    with _GX_LOCK:
        state = _gx()
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


def _unevaluated(suite_definition: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    message = excerpt(f"{type(exc).__name__}: {exc}", MESSAGE_CHARS)
    return {
        "success": False,
        "suite_name": suite_definition.get("name", "prices"),
        "results": [
            {
                "success": False,
                "expectation_config": {
                    "type": "contract_evaluation",
                    "kwargs": {},
                    "severity": CRITICAL,
                    "meta": {"purpose": "The table can be evaluated at all (GX raised on it)."},
                },
                "result": {},
                "exception_info": {"raised_exception": True, "exception_traceback": None, "exception_message": message},
            }
        ],
    }


# GX parses suite parameters with pyparsing, whose parse actions are not thread-safe on first use
# ("push_first() missing 1 required positional argument"), and one GX context is shared by the whole
# process: tickers validating in parallel threads take turns.
_GX_LOCK = threading.Lock()
_GX: _GxState | None = None
_SUITES_KEPT = 8


class _GxState:
    """The process's one ephemeral GX context, its pandas data source and the suites registered in it."""

    def __init__(self) -> None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.gx = gx
        self.pid = os.getpid()
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("stockpipe").add_dataframe_asset("prices")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        self.suites: OrderedDict[str, tuple[Any, dict[str, int]]] = OrderedDict()

    def suite(self, definition: dict[str, Any]) -> tuple[Any, dict[str, int]]:
        """The registered suite for this definition (built once) and each expectation id's position in it."""
        key = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if key in self.suites:
            self.suites.move_to_end(key)
            return self.suites[key]
        suite = self.context.suites.add(
            self.gx.ExpectationSuite(
                name=f"{definition.get('name', 'prices')}-{key}",
                expectations=json.loads(json.dumps(definition["expectations"])),  # GX keeps what it is given
                meta=definition.get("meta", {}),
            )
        )
        order = {str(e.id): i for i, e in enumerate(suite.expectations)}
        self.suites[key] = (suite, order)
        while len(self.suites) > _SUITES_KEPT:
            _, (old, _) = self.suites.popitem(last=False)
            self.context.suites.delete(old.name)
        return suite, order


def _gx() -> _GxState:
    """Created on first use, then reused; a forked child builds its own."""
    global _GX
    if _GX is None or _GX.pid != os.getpid():
        _GX = _GxState()
    return _GX


def _run_suite(
    state: _GxState, frame: pd.DataFrame, suite: Any, order: dict[str, int], parameters: dict[str, Any]
) -> dict[str, Any]:
    batch = state.batch_definition.get_batch(batch_parameters={"dataframe": frame})
    result = batch.validate(suite, result_format=RESULT_FORMAT, expectation_parameters=parameters)
    raw = sanitize_gx_result(result.to_json_dict())
    raw["results"].sort(key=lambda r: order.get(str((r.get("expectation_config") or {}).get("id")), len(order)))
    raw.setdefault("meta", {})["validation_time"] = dt.datetime.now(dt.UTC).isoformat()
    return raw


# -- GX Data Docs, rendered on request ----------------------------------------------------------------------------


def render_data_docs(reports: Sequence[ValidationReport], docs_dir: Path, *, replace: bool = True) -> Path:
    """Render GX's Data Docs for these reports into `docs_dir` (replacing what was there); returns index.html.

    Built from the reports' (sanitised, HTML-escaped) GX results in a throwaway context, so it costs nothing at
    validation time and a long-running process keeps no results; meant to be called once per run, into the
    state directory. GX's pages load CSS and scripts from CDNs: for MLflow, use `validation_report.render_html`.
    """
    import shutil

    docs_dir = Path(docs_dir)
    if replace:
        shutil.rmtree(docs_dir, ignore_errors=True)
    with _GX_LOCK:
        state = _gx()
        from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        context = state.gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        identifiers = []
        for number, report in enumerate(reports):
            raw = {
                k: v
                for k, v in report.raw.items()
                if k in {"success", "results", "suite_name", "suite_parameters", "statistics", "meta"}
            }
            if not raw.get("results"):
                continue
            raw.setdefault("suite_name", "prices")
            raw["results"] = [
                r for r in raw["results"] if (r.get("expectation_config") or {}).get("type") != "contract_evaluation"
            ] or raw["results"][:0]
            result = expectationSuiteValidationResultSchema.load(_docs_ready(raw))
            run_time = _run_time(raw)
            identifier = ValidationResultIdentifier(
                expectation_suite_identifier=ExpectationSuiteIdentifier(name=raw["suite_name"]),
                run_id=RunIdentifier(run_name=_slug(report.subject), run_time=run_time),
                batch_identifier=f"{number:02d}-{_slug(report.subject)}",
            )
            context.validation_results_store.store_validation_results(
                suite_validation_result=result, suite_validation_result_identifier=identifier
            )
            identifiers.append(identifier)
        context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=identifiers or None)
    return docs_dir / "index.html"


def _docs_ready(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    out["meta"] = {k: v for k, v in (raw.get("meta") or {}).items() if k != "validation_time"}
    # GX's templates do not escape observed values (a column named <script> would run): escape them here.
    out["results"] = [
        {
            **r,
            "result": _escaped(r.get("result") or {}),
            "exception_info": _escaped(_with_tracebacks(r.get("exception_info") or {})),
        }
        for r in raw.get("results", [])
    ]
    out.setdefault("statistics", {})
    out.setdefault("success", False)
    return out


def _escaped(value: Any) -> Any:
    import html

    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return html.escape(value, quote=True) if isinstance(value, str) else value


def _with_tracebacks(info: Any) -> Any:
    """GX's renderer needs a traceback string where an exception was raised; the report keeps only the message."""
    if not isinstance(info, dict):
        return info
    if "raised_exception" not in info:
        return {k: _with_tracebacks(v) for k, v in info.items()}
    if info.get("raised_exception") and info.get("exception_traceback") is None:
        return {**info, "exception_traceback": info.get("exception_message") or ""}
    return info


def _run_time(raw: dict[str, Any]) -> dt.datetime:
    stamp = (raw.get("meta") or {}).get("validation_time")
    try:
        return dt.datetime.fromisoformat(stamp) if stamp else dt.datetime.now(dt.UTC)
    except (TypeError, ValueError):
        return dt.datetime.now(dt.UTC)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", excerpt(text, 60)).strip("-") or "report"
