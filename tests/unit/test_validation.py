"""The data contract (expectations/prices.json, run by Great Expectations) and its pure verdict."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.settings import BUNDLED_SNAPSHOTS
from pipeline.sources import CsvSource
from pipeline.validation import (
    CRITICAL,
    FailedExpectation,
    ValidationReport,
    contract_frame,
    load_suite_definition,
    validate_prices,
    verdict,
)

AS_OF = dt.date(2017, 11, 10)  # the slice's last session


def run(prices: pd.DataFrame, suite: dict, *, as_of: dt.date = AS_OF, min_rows: int = 100) -> ValidationReport:
    return validate_prices(prices, subject="MSFT test", suite_definition=suite, as_of=as_of, min_rows=min_rows)


def names(failures: list[FailedExpectation]) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in failures}


# -- the bundled histories pass ----------------------------------------------------------------------------


@pytest.mark.parametrize("ticker", ["MSFT", "GSPC"])
def test_bundled_history_passes_the_contract(ticker, price_suite):
    prices = CsvSource(BUNDLED_SNAPSHOTS).fetch(ticker, None, dt.date(2019, 1, 1))
    report = validate_prices(prices, subject=ticker, suite_definition=price_suite, as_of=dt.date(2019, 1, 1),
                             min_rows=1000)
    assert report.passed, report.summary()
    assert report.critical_failures == []
    assert report.rows == len(prices) and report.evaluated == len(price_suite["expectations"])


def test_clean_slice_passes_without_warnings(msft_slice, price_suite):
    report = run(msft_slice, price_suite)
    assert report.passed and report.failures == [], report.summary()
    assert report.summary() == f"MSFT test: {len(price_suite['expectations'])} expectations passed on 300 rows"
    json.dumps(report.to_json())  # the report is saved as JSON


# -- each corruption fails and is named -----------------------------------------------------------------------


def duplicate_date(f):
    return pd.concat([f, f.iloc[[100]]]).sort_values("Date", kind="stable").reset_index(drop=True)


def negative_price(f):
    f.loc[50, "Low"] = -1.0
    return f


def high_below_low(f):
    high, low = float(f.at[60, "High"]), float(f.at[60, "Low"])
    f.at[60, "High"], f.at[60, "Low"] = low, high
    assert f.loc[60, "High"] < f.loc[60, "Low"]
    return f


def nan_close(f):
    f.loc[70, "Close"] = np.nan
    return f


def tenfold_jump(f):
    # A decimal error from one session on: every later price is ten times too high, the bars stay consistent.
    f.loc[150:, ["Open", "High", "Low", "Close"]] *= 10
    return f


def unsorted_dates(f):
    return f.iloc[[*range(0, 120), 121, 120, *range(122, 300)]].reset_index(drop=True)


def float_volume(f):
    return f.assign(Volume=f["Volume"].astype(float))


def truncated_download(f):
    return f.drop(index=range(200, 210)).reset_index(drop=True)  # ten sessions missing in a row


CORRUPTIONS = {
    "duplicate date": (duplicate_date, ("expect_column_values_to_be_unique", "Date")),
    "negative price": (negative_price, ("expect_column_values_to_be_between", "Low")),
    "High < Low": (high_below_low, ("expect_column_pair_values_a_to_be_greater_than_b", "High>=Low")),
    "NaN close": (nan_close, ("expect_column_values_to_not_be_null", "Close")),
    "10x jump": (tenfold_jump, ("expect_column_values_to_be_between", "LogReturn")),
    "unsorted dates": (unsorted_dates, ("expect_column_values_to_be_increasing", "Date")),
    "float volume": (float_volume, ("expect_column_values_to_be_in_type_list", "Volume")),
    "truncated download": (truncated_download, ("expect_column_values_to_be_between", "SessionsMissedBefore")),
}


@pytest.mark.parametrize("corrupt, expected", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corruption_fails_and_names_the_expectation(msft_slice, price_suite, corrupt, expected):
    report = run(corrupt(msft_slice), price_suite)
    assert not report.passed
    assert expected in names(report.critical_failures), report.summary()
    assert "FAILED" in report.summary() and f"{expected[0]}({expected[1]})" in report.summary()


def test_duplicate_date_counts_both_rows(msft_slice, price_suite):
    report = run(duplicate_date(msft_slice), price_suite)
    (unique,) = [f for f in report.failures if f.expectation == "expect_column_values_to_be_unique"]
    assert unique.unexpected_count == 2 and unique.purpose.startswith("One row per session")


def test_tenfold_jump_is_one_critical_log_return(msft_slice, price_suite):
    report = run(tenfold_jump(msft_slice), price_suite)
    (bound,) = [f for f in report.critical_failures if f.column == "LogReturn"]
    assert bound.unexpected_count == 1
    # The bars themselves stay consistent: only the return bound (and its warning twin) notices.
    assert names(report.critical_failures) == {("expect_column_values_to_be_between", "LogReturn")}


def test_row_after_as_of_is_future_leakage(msft_slice, price_suite):
    as_of = msft_slice["Date"].iloc[-2].date()
    report = run(msft_slice, price_suite, as_of=as_of)
    assert not report.passed
    assert ("expect_column_max_to_be_between", "Date") in names(report.critical_failures)


def test_too_few_rows(msft_slice, price_suite):
    report = run(msft_slice, price_suite, min_rows=301)
    assert not report.passed
    (count,) = report.critical_failures
    assert count.expectation == "expect_table_row_count_to_be_between" and count.observed == 300
    assert run(msft_slice, price_suite, min_rows=300).passed


# -- warnings do not block --------------------------------------------------------------------------------------


def test_single_zero_volume_session_is_a_warning(msft_slice, price_suite):
    msft_slice.loc[123, "Volume"] = 0  # 1 of 300 > the 0.1% the warning tolerates; zero itself is legal
    report = run(msft_slice, price_suite)
    assert report.passed, report.summary()
    assert names(report.warnings) == {("expect_column_values_to_be_between", "Volume")}
    assert report.warnings[0].severity == "warning" and report.warnings[0].unexpected_count == 1
    assert report.summary().startswith("MSFT test: passed with warnings: expect_column_values_to_be_between(Volume)")


def test_one_missing_session_is_a_warning(msft_slice, price_suite):
    report = run(msft_slice.drop(index=200).reset_index(drop=True), price_suite)
    assert report.passed, report.summary()
    assert names(report.warnings) == {("expect_column_values_to_be_between", "SessionsMissedBefore")}


def test_negative_volume_is_critical(msft_slice, price_suite):
    msft_slice.loc[10, "Volume"] = -5
    report = run(msft_slice, price_suite)
    assert ("expect_column_values_to_be_between", "Volume") in names(report.critical_failures)


# -- the table the contract sees -------------------------------------------------------------------------------


def test_contract_frame_adds_log_returns_and_session_gaps(msft_slice):
    prices = msft_slice.drop(index=[5, 6]).reset_index(drop=True)
    frame = contract_frame(prices)
    assert list(frame.columns) == [*msft_slice.columns, "LogReturn", "SessionsMissedBefore"]
    assert np.isnan(frame["LogReturn"].iloc[0])
    assert frame["LogReturn"].iloc[1] == pytest.approx(np.log(frame["Close"].iloc[1] / frame["Close"].iloc[0]))
    assert frame["SessionsMissedBefore"].tolist()[:7] == [0, 0, 0, 0, 0, 2, 0]
    assert list(prices.columns) == list(msft_slice.columns), "the input is not modified"


# -- suite loading ---------------------------------------------------------------------------------------------


def test_suite_definition_requires_a_severity(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"expectations": [{"type": "expect_column_to_exist", "kwargs": {"column": "Date"}}]}))
    with pytest.raises(ValueError, match="severity"):
        load_suite_definition(path)


def test_bundled_suite_severities(price_suite):
    severities = [e["severity"] for e in price_suite["expectations"]]
    assert set(severities) == {"critical", "warning"} and severities.count("warning") == 3


# -- verdict is pure ----------------------------------------------------------------------------------------------


def gx_result(*results: dict) -> dict:
    return {"success": all(r["success"] for r in results), "results": list(results)}


def result(success: bool, type_: str, kwargs: dict, severity: str | None = None, **details) -> dict:
    config = {"type": type_, "kwargs": kwargs, "meta": {"purpose": f"why {type_}"}}
    if severity is not None:
        config["severity"] = severity
    return {"success": success, "expectation_config": config, "result": details}


def test_verdict_names_failures_and_skips_successes():
    raw = gx_result(
        result(True, "expect_column_values_to_not_be_null", {"column": "Date"}, "critical", unexpected_count=0),
        result(False, "expect_column_values_to_be_unique", {"column": "Date"}, "critical", unexpected_count=2),
        result(False, "expect_column_pair_values_a_to_be_greater_than_b", {"column_A": "High", "column_B": "Low"},
               "critical", unexpected_count=1),
        result(False, "expect_table_row_count_to_be_between", {"min_value": 500}, "critical", observed_value=300),
        result(False, "expect_column_values_to_be_between", {"column": "Volume"}, "warning", unexpected_count=1),
        result(False, "expect_compound_columns_to_be_unique", {"column_list": ["Date", "Close"]}, "info"),
    )
    report = verdict("MSFT batch", 300, raw)
    assert report.subject == "MSFT batch" and report.rows == 300 and report.evaluated == 6 and report.raw is raw
    assert [(f.expectation, f.column, f.severity) for f in report.failures] == [
        ("expect_column_values_to_be_unique", "Date", CRITICAL),
        ("expect_column_pair_values_a_to_be_greater_than_b", "High>=Low", CRITICAL),
        ("expect_table_row_count_to_be_between", None, CRITICAL),
        ("expect_column_values_to_be_between", "Volume", "warning"),
        ("expect_compound_columns_to_be_unique", "Date,Close", "info"),
    ]
    assert not report.passed
    assert len(report.critical_failures) == 3 and len(report.warnings) == 2
    assert report.failures[0].purpose == "why expect_column_values_to_be_unique"
    assert [f.describe() for f in report.failures] == [
        "expect_column_values_to_be_unique(Date): 2 row(s)",
        "expect_column_pair_values_a_to_be_greater_than_b(High>=Low): 1 row(s)",
        "expect_table_row_count_to_be_between: observed 300",
        "expect_column_values_to_be_between(Volume): 1 row(s)",
        "expect_compound_columns_to_be_unique(Date,Close): failed",
    ]
    assert report.summary().startswith("MSFT batch: FAILED: expect_column_values_to_be_unique(Date): 2 row(s); ")


def test_verdict_with_only_warnings_passes():
    raw = gx_result(
        result(True, "expect_column_values_to_be_unique", {"column": "Date"}, "critical"),
        result(False, "expect_column_values_to_be_between", {"column": "Volume"}, "warning", unexpected_count=1),
    )
    report = verdict("MSFT", 10, raw)
    assert report.passed and report.critical_failures == [] and len(report.warnings) == 1
    assert report.summary() == "MSFT: passed with warnings: expect_column_values_to_be_between(Volume): 1 row(s)"


def test_verdict_treats_a_missing_severity_as_critical():
    raw = gx_result(result(False, "expect_column_values_to_not_be_null", {"column": "Close"}, unexpected_count=3))
    report = verdict("MSFT", 10, raw)
    assert not report.passed and report.failures[0].severity == CRITICAL


def test_verdict_of_all_successes_and_of_nothing():
    ok = verdict("MSFT", 10, gx_result(result(True, "expect_column_values_to_be_unique", {"column": "Date"}, "critical")))
    assert ok.passed and ok.failures == [] and ok.summary() == "MSFT: 1 expectations passed on 10 rows"
    empty = verdict("MSFT", 0, {})
    assert empty.passed and empty.evaluated == 0


def test_verdict_does_not_modify_its_input():
    raw = gx_result(result(False, "expect_column_values_to_be_unique", {"column": "Date"}, "critical", unexpected_count=2))
    before = json.dumps(raw, sort_keys=True)
    verdict("MSFT", 10, raw)
    verdict("MSFT", 10, raw)
    assert json.dumps(raw, sort_keys=True) == before


def test_report_json_is_serialisable_with_odd_observed_values():
    failure = FailedExpectation("expect_column_max_to_be_between", "Date", CRITICAL, None,
                                pd.Timestamp("2017-11-10"), "no future")
    report = ValidationReport("MSFT", 10, [failure], evaluated=1, raw={"success": False})
    data = json.loads(json.dumps(report.to_json()))
    assert data["passed"] is False and data["failures"][0]["observed"] == "2017-11-10 00:00:00"
    assert failure.describe() == "expect_column_max_to_be_between(Date): observed 2017-11-10 00:00:00"
