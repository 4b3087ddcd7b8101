"""A small, self-contained HTML page of data-contract results, for MLflow's artifact viewer and the state directory.

One page, inline CSS, no scripts, fonts, images or links: it renders the same in a sandboxed iframe as in a
browser opened on the file. The page is an autoescaped Jinja2 template (templates/report.html.j2), so everything
shown is HTML-escaped (values from data files are untrusted); each report lists every expectation evaluated,
passed or not, with its severity, purpose, result, observed value and failing rows (capped: the reports hold at
most `ROW_CAP` dates per expectation).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from functools import cache
from typing import Any

import jinja2
from markupsafe import Markup

from pipeline.contract.report import ExpectationOutcome, ValidationReport
from pipeline.contract.sanitize import excerpt


def render_html(reports: Sequence[ValidationReport], *, title: str) -> str:
    """The reports as one HTML page: a section per report (verdict, rows, every expectation evaluated)."""
    return _template().render(
        title=title,
        reports=list(reports),
        outcomes=_outcomes,
        observed=_observed,
        failing_rows=_failing_rows,
    )


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.contract"),
        autoescape=True,
        finalize=_escaped,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return environment.get_template("report.html.j2")


def _escaped(value: Any) -> Markup:
    # Escaped as pages written so far were (html.escape: &quot; &#x27;), not as markupsafe would (&#34; &#39;).
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def _outcomes(report: ValidationReport) -> list[ExpectationOutcome]:
    """Every evaluated expectation; a report built without outcomes still shows its failures."""
    if report.outcomes:
        return list(report.outcomes)
    return [
        ExpectationOutcome(
            f.expectation,
            f.column,
            f.severity,
            f.purpose,
            False,
            observed=f.observed,
            unexpected_count=f.unexpected_count,
            rows=f.rows,
            error=f.error,
        )
        for f in report.failures
    ]


def _observed(outcome: ExpectationOutcome) -> list[str]:
    """The observed cell's lines: rows unexpected, the observed value, the error."""
    parts = []
    if outcome.unexpected_count is not None:
        total = f" of {outcome.element_count}" if outcome.element_count is not None else ""
        parts.append(f"{outcome.unexpected_count}{total} row(s) unexpected")
    if outcome.observed is not None:
        parts.append(_short(outcome.observed))
    if outcome.error:
        parts.append(f"not evaluated: {outcome.error}")
    return parts


def _failing_rows(outcome: ExpectationOutcome) -> str:
    if not outcome.rows:
        return ""
    shown = ", ".join(outcome.rows)
    more = (outcome.unexpected_count or 0) - len(outcome.rows)
    return shown + (f" and {more} more" if more > 0 else "")


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(excerpt(v) for v in value)
    return excerpt(value)
