"""The self-contained HTML page of contract results (pipeline/contract/html_report.py)."""

from __future__ import annotations

import datetime as dt
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS
from pipeline.contract.html_report import render_html
from pipeline.contract.report import CRITICAL, ExpectationOutcome, FailedExpectation, ValidationReport
from pipeline.contract.runner import validate_prices
from pipeline.data.sources import CsvSource
from tests.support import fetch

AS_OF = dt.date(2017, 11, 10)


@pytest.fixture(scope="module")
def reports(_msft_slice, price_suite) -> list[ValidationReport]:
    """A batch that breaks the contract on a dozen rows, and the full bundled MSFT history (passes with warnings)."""
    batch = _msft_slice.copy()
    batch.loc[20:31, "Volume"] = -1  # twelve rows: more than the reports name
    batch.loc[40, "Close"] = np.nan
    full = fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, AS_OF)
    return [
        validate_prices(batch, subject="MSFT new batch", suite_definition=price_suite, as_of=AS_OF),
        validate_prices(full, subject="MSFT merged history", suite_definition=price_suite, as_of=AS_OF, min_rows=1000),
    ]


@pytest.fixture(scope="module")
def page(reports) -> str:
    return render_html(reports, title="MSFT: data contract")


class Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "tr":
            self.rows.append([])
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> Collector:
    collector = Collector()
    collector.feed(html)
    return collector


def test_each_report_has_its_verdict_rows_and_a_table(page, reports):
    assert page.startswith("<!DOCTYPE html>") and "<title>MSFT: data contract</title>" in page
    assert page.count("<table>") == 2
    assert 'MSFT new batch <span class="verdict bad">FAILED</span>' in page
    assert 'MSFT merged history <span class="verdict warn">passed with warnings</span>' in page
    assert f"{reports[1].rows} row(s), 1986-03-13 to 2017-11-10" in page and "300 row(s)" in page


def test_every_expectation_is_listed_with_its_purpose_and_result(page, reports, price_suite):
    table_rows = [r for r in parse(page).rows if r and r[0].isdigit()]
    assert len(table_rows) == 2 * len(price_suite["expectations"])
    for offset in (0, len(price_suite["expectations"])):
        for expectation, row in zip(price_suite["expectations"], table_rows[offset:], strict=False):
            _number, kind, _column, severity, purpose, result, _observed, _rows = row
            assert kind.startswith(expectation["type"]) and severity == expectation["severity"]
            assert purpose == expectation["meta"]["purpose"]
            assert result in {"passed", "failed", "warning"}
    results = [row[5] for row in table_rows]
    assert {"passed", "failed", "warning"} <= set(results)


def test_failing_rows_and_counts_are_shown(page, reports):
    volume = next(f for f in reports[0].critical_failures if f.column == "Volume" and f.unexpected_count == 12)
    assert len(volume.rows) == 10
    assert ", ".join(volume.rows) + " and 2 more" in page
    assert "12 of 300 row(s) unexpected" in page
    gaps = next(f for f in reports[1].warnings if f.column == "SessionsMissedBefore")
    assert ", ".join(gaps.rows) in page and len(gaps.rows) == 2


def test_self_contained_small_and_without_references(page):
    assert len(page.encode()) < 64_000
    lowered = page.lower()
    for reference in ("http://", "https://", "src=", "href=", "<script", "<link", "<img", "<iframe", "@import", "url("):
        assert reference not in lowered, reference
    assert {tag for tag, _ in parse(page).tags} <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "p",
        "span",
        "section",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "code",
        "br",
    }


HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>&amp;'


def test_everything_is_escaped():
    outcome = ExpectationOutcome(
        expectation=f"expect_{HOSTILE}",
        column=HOSTILE,
        severity=CRITICAL,
        purpose=HOSTILE,
        success=False,
        rule=HOSTILE,
        observed=[HOSTILE, 3],
        unexpected_count=2,
        element_count=5,
        rows=(HOSTILE, "2017-11-03"),
        error=HOSTILE,
    )
    failure = FailedExpectation(outcome.expectation, HOSTILE, CRITICAL, 2, HOSTILE, HOSTILE, rows=(HOSTILE,))
    report = ValidationReport(
        subject=HOSTILE,
        rows=5,
        failures=[failure],
        evaluated=1,
        outcomes=[outcome],
        parameters={HOSTILE: HOSTILE},
        first_date=HOSTILE,
        last_date="2017-11-03",
    )
    page = render_html([report], title=HOSTILE)
    assert "<script" not in page and "<img" not in page and "onerror=alert(2)>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in page and "&amp;amp;" in page
    tags = {tag for tag, _ in parse(page).tags}
    assert "script" not in tags and "img" not in tags
    assert all(set(attrs) <= {"class", "lang", "charset", "name", "content"} for _, attrs in parse(page).tags)


def test_a_report_without_outcomes_still_shows_its_failures():
    failure = FailedExpectation(
        "expect_column_values_to_be_unique",
        "Date",
        CRITICAL,
        2,
        None,
        "One row per session",
        rows=("2017-11-03", "2017-11-03"),
    )
    page = render_html([ValidationReport("MSFT", 10, [failure], evaluated=1)], title="old report")
    assert "One row per session" in page and "2017-11-03, 2017-11-03" in page and "FAILED" in page


def test_no_reports():
    page = render_html([], title="nothing")
    assert "No validation ran." in page and re.search(r"<h1>nothing</h1>", page)
