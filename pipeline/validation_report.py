"""A small, self-contained HTML page of data-contract results, for MLflow's artifact viewer and the state directory.

One page, inline CSS, no scripts, fonts, images or links: it renders the same in a sandboxed iframe as in a
browser opened on the file. Everything shown is HTML-escaped (values from data files are untrusted), and each
report lists every expectation evaluated, passed or not, with its severity, purpose, result, observed value and
failing rows (capped: the reports hold at most `ROW_CAP` dates per expectation).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from pipeline.validation import ExpectationOutcome, ValidationReport, excerpt

_CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:16px;background:#fff}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:24px 0 4px}p{margin:2px 0}
.meta{color:#57606a}.verdict{font-weight:600;padding:1px 6px;border-radius:3px}
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26}.warn{background:#fff8c5;color:#7d4e00}
table{border-collapse:collapse;width:100%;margin-top:6px}
th,td{border:1px solid #d0d7de;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600}td.num{text-align:right;white-space:nowrap}
tr.failed td{background:#fff5f5}tr.warning td{background:#fffbe6}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;overflow-wrap:anywhere}
.purpose{color:#57606a;max-width:32em}.rows{max-width:18em}
"""

_RESULT_CLASS = {"passed": "ok", "failed": "bad", "warning": "warn"}


def render_html(reports: Sequence[ValidationReport], *, title: str) -> str:
    """The reports as one HTML page: a section per report (verdict, rows, every expectation evaluated)."""
    sections = "\n".join(_section(report) for report in reports) or "<p class=meta>No validation ran.</p>"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n{_overview(reports)}\n{sections}\n</body></html>\n"
    )


def _overview(reports: Sequence[ValidationReport]) -> str:
    if not reports:
        return ""
    verdicts = ", ".join(f"{_e(r.subject)}: {_verdict_badge(r)}" for r in reports)
    return f"<p>{verdicts}</p>"


def _verdict(report: ValidationReport) -> tuple[str, str]:
    if not report.passed:
        return "FAILED", "bad"
    if report.failures:
        return "passed with warnings", "warn"
    return "passed", "ok"


def _verdict_badge(report: ValidationReport) -> str:
    text, css = _verdict(report)
    return f'<span class="verdict {css}">{_e(text)}</span>'


def _section(report: ValidationReport) -> str:
    span = ""
    if report.first_date or report.last_date:
        span = f", {_e(report.first_date or '?')} to {_e(report.last_date or '?')}"
    params = ", ".join(f"{_e(k)}={_e(v)}" for k, v in report.parameters.items())
    failed = len(report.critical_failures)
    counts = (
        f"{report.evaluated} expectation(s) evaluated: {report.evaluated - len(report.failures)} passed, "
        f"{failed} failed, {len(report.failures) - failed} warning(s)"
    )
    rows = "\n".join(_row(number, outcome) for number, outcome in enumerate(_outcomes(report), 1))
    return (
        f"<section>\n<h2>{_e(report.subject)} {_verdict_badge(report)}</h2>\n"
        f"<p class=meta>{report.rows} row(s){span}. {counts}."
        + (f" Parameters: {params}." if params else "")
        + "</p>\n"
        "<table>\n<thead><tr><th>#</th><th>Expectation</th><th>Column(s)</th><th>Severity</th><th>Purpose</th>"
        "<th>Result</th><th>Observed</th><th>Failing rows</th></tr></thead>\n"
        f"<tbody>\n{rows}\n</tbody>\n</table>\n</section>"
    )


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


def _row(number: int, outcome: ExpectationOutcome) -> str:
    result = outcome.result
    rule = f"<br><code>{_e(outcome.rule)}</code>" if outcome.rule else ""
    return (
        f"<tr class={result}><td class=num>{number}</td><td><code>{_e(outcome.expectation)}</code>{rule}</td>"
        f"<td>{_e(outcome.column or '')}</td><td>{_e(outcome.severity)}</td>"
        f"<td class=purpose>{_e(outcome.purpose)}</td>"
        f'<td><span class="verdict {_RESULT_CLASS.get(result, "warn")}">{_e(result)}</span></td>'
        f"<td>{_observed(outcome)}</td><td class=rows>{_rows(outcome)}</td></tr>"
    )


def _observed(outcome: ExpectationOutcome) -> str:
    parts = []
    if outcome.unexpected_count is not None:
        total = f" of {outcome.element_count}" if outcome.element_count is not None else ""
        parts.append(f"{outcome.unexpected_count}{total} row(s) unexpected")
    if outcome.observed is not None:
        parts.append(_short(outcome.observed))
    if outcome.error:
        parts.append(f"not evaluated: {outcome.error}")
    return "<br>".join(_e(p) for p in parts)


def _rows(outcome: ExpectationOutcome) -> str:
    if not outcome.rows:
        return ""
    shown = ", ".join(outcome.rows)
    more = (outcome.unexpected_count or 0) - len(outcome.rows)
    return _e(shown + (f" and {more} more" if more > 0 else ""))


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(excerpt(v) for v in value)
    return excerpt(value)


def _e(value: Any) -> str:
    return escape(str(value), quote=True)
