"""What the contract said about a table: each expectation's outcome, the failures, and the report's stored JSON."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import PlainSerializer, SerializerFunctionWrapHandler, TypeAdapter, model_serializer

CRITICAL = "critical"
UNEVALUATED = "contract_evaluation"  # the pseudo-expectation a report fails when GX raised on the table


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


# Observed values and parameters are stored as JSON scalars (anything else as its str()), row dates as a list.
JsonScalar = Annotated[Any, PlainSerializer(_jsonable)]
RowDates = Annotated[tuple[str, ...], PlainSerializer(list, return_type=list[str])]


@dataclass(frozen=True)
class FailedExpectation:
    expectation: str
    column: str | None
    severity: str
    unexpected_count: int | None
    observed: JsonScalar
    purpose: str
    rows: RowDates = ()  # the failing rows' dates (ISO), at most ROW_CAP of them
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
    observed: JsonScalar = None  # GX's observed value (aggregate expectations), made safe
    unexpected_count: int | None = None
    element_count: int | None = None
    rows: RowDates = ()
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

    @model_serializer(mode="wrap")
    def _with_result(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {**handler(self), "result": self.result}


@dataclass(frozen=True)
class ValidationReport:
    """What the contract said about one table; `raw` is GX's result JSON (values from the data made safe)."""

    subject: str
    rows: int
    failures: list[FailedExpectation] = field(default_factory=list)
    evaluated: int = 0
    raw: dict[str, Any] = field(default_factory=dict)
    outcomes: list[ExpectationOutcome] = field(default_factory=list)  # every expectation, in suite order
    parameters: dict[str, JsonScalar] = field(default_factory=dict)  # what the suite ran with (as_of, today, ...)
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
        """The report as stored (quarantine folders, MLflow artifacts): JSON-ready, GX's result as `gx_result`."""
        return _REPORT.dump_python(self)

    @model_serializer(mode="wrap")
    def _as_stored(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The key order of the reports stored so far, so old and new files read (and diff) alike.
        data = handler(self) | {"passed": self.passed, "gx_result": self.raw}
        return {key: data[key] for key in _STORED_KEYS}


_STORED_KEYS = (
    "subject",
    "rows",
    "first_date",
    "last_date",
    "passed",
    "evaluated",
    "parameters",
    "failures",
    "outcomes",
    "gx_result",
)
_REPORT = TypeAdapter(ValidationReport)


def _shown(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
