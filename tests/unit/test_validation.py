"""The data contract (expectations/prices.json, run by Great Expectations) and its pure verdict."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS
from pipeline.contract.inputs import contract_frame, load_suite_definition
from pipeline.contract.report import CRITICAL, FailedExpectation, ValidationReport
from pipeline.contract.runner import validate_prices
from pipeline.contract.verdict import verdict
from pipeline.data.sources import CsvSource
from tests.support import fetch

AS_OF = dt.date(2017, 11, 10)  # the slice's last session


def run(prices: pd.DataFrame, suite: dict, *, as_of: dt.date = AS_OF, min_rows: int = 100) -> ValidationReport:
    return validate_prices(prices, subject="MSFT test", suite_definition=suite, as_of=as_of, min_rows=min_rows)


def names(failures: list[FailedExpectation]) -> set[tuple[str, str | None]]:
    return {(f.expectation, f.column) for f in failures}


# -- the bundled histories pass ----------------------------------------------------------------------------


@pytest.mark.parametrize("ticker", ["MSFT", "GSPC"])
def test_bundled_history_passes_the_contract(ticker, price_suite):
    prices = fetch(CsvSource(BUNDLED_SNAPSHOTS), ticker, None, dt.date(2019, 1, 1))
    report = validate_prices(
        prices, subject=ticker, suite_definition=price_suite, as_of=dt.date(2019, 1, 1), min_rows=1000
    )
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
    assert ("expect_column_values_to_be_between", "Date") in names(report.critical_failures)
    (leak,) = [f for f in report.critical_failures if f.column == "Date"]  # after as-of, not after today
    assert leak.purpose.startswith("No session after the run's as-of date") and leak.rows == (AS_OF.isoformat(),)


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


def test_a_row_on_a_day_the_exchange_was_closed_is_a_warning_naming_its_date(msft_slice, price_suite):
    """The contract's choice: stored with a warning, not refused (a calendar can lag an unscheduled session)."""
    boxing_day = msft_slice.iloc[[-1]].assign(Date=pd.Timestamp("2017-11-11"))  # a Saturday after the last session
    prices = pd.concat([msft_slice, boxing_day], ignore_index=True)
    report = run(prices, price_suite, as_of=dt.date(2017, 11, 11))
    assert report.passed, report.summary()
    assert names(report.warnings) == {("expect_column_values_to_be_between", "OffSessionDay")}
    assert "2017-11-11" in report.summary()


def test_negative_volume_is_critical(msft_slice, price_suite):
    msft_slice.loc[10, "Volume"] = -5
    report = run(msft_slice, price_suite)
    assert ("expect_column_values_to_be_between", "Volume") in names(report.critical_failures)


# -- the table the contract sees -------------------------------------------------------------------------------


def test_contract_frame_adds_log_returns_and_session_gaps(msft_slice):
    prices = msft_slice.drop(index=[5, 6]).reset_index(drop=True)
    frame = contract_frame(prices)
    assert list(frame.columns) == [
        *msft_slice.columns,
        "LogReturn",
        "LogRange",
        "VolumeToMedian",
        "SessionsMissedBefore",
        "OffSessionDay",
    ]
    assert np.isnan(frame["LogReturn"].iloc[0])
    assert frame["LogReturn"].iloc[1] == pytest.approx(np.log(frame["Close"].iloc[1] / frame["Close"].iloc[0]))
    assert frame["LogRange"].iloc[1] == pytest.approx(np.log(frame["High"].iloc[1] / frame["Low"].iloc[1]))
    assert frame["VolumeToMedian"].iloc[:5].isna().all()  # too little history to compare with
    assert frame["VolumeToMedian"].iloc[30] == pytest.approx(
        frame["Volume"].iloc[30] / frame["Volume"].iloc[10:30].median()
    )
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
    assert set(severities) == {"critical", "warning"} and severities.count("warning") == 4


# -- verdict is pure ----------------------------------------------------------------------------------------------


def gx_result(*results: dict) -> dict:
    return {"success": all(r["success"] for r in results), "results": list(results)}


def result(success: bool, type_: str, kwargs: dict, severity: str | None = None, **details) -> dict:
    config = {"type": type_, "kwargs": kwargs, "meta": {"purpose": f"why {type_}"}}
    if severity is not None:
        config["severity"] = severity
    return {"success": success, "expectation_config": config, "result": details}


def close_out_of_range(**details) -> dict:
    """A failed critical range check on Close, with GX's result `details`."""
    return result(False, "expect_column_values_to_be_between", {"column": "Close"}, "critical", **details)


def test_verdict_names_failures_and_skips_successes():
    raw = gx_result(
        result(True, "expect_column_values_to_not_be_null", {"column": "Date"}, "critical", unexpected_count=0),
        result(False, "expect_column_values_to_be_unique", {"column": "Date"}, "critical", unexpected_count=2),
        result(
            False,
            "expect_column_pair_values_a_to_be_greater_than_b",
            {"column_A": "High", "column_B": "Low"},
            "critical",
            unexpected_count=1,
        ),
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
    ok = verdict(
        "MSFT", 10, gx_result(result(True, "expect_column_values_to_be_unique", {"column": "Date"}, "critical"))
    )
    assert ok.passed and ok.failures == [] and ok.summary() == "MSFT: 1 expectations passed on 10 rows"
    empty = verdict("MSFT", 0, {})
    assert empty.passed and empty.evaluated == 0


def test_verdict_does_not_modify_its_input():
    raw = gx_result(
        result(False, "expect_column_values_to_be_unique", {"column": "Date"}, "critical", unexpected_count=2)
    )
    before = json.dumps(raw, sort_keys=True)
    verdict("MSFT", 10, raw)
    verdict("MSFT", 10, raw)
    assert json.dumps(raw, sort_keys=True) == before


def test_report_json_is_serialisable_with_odd_observed_values():
    failure = FailedExpectation(
        "expect_column_max_to_be_between", "Date", CRITICAL, None, pd.Timestamp("2017-11-10"), "no future"
    )
    report = ValidationReport("MSFT", 10, [failure], evaluated=1, raw={"success": False})
    data = json.loads(json.dumps(report.to_json()))
    assert data["passed"] is False and data["failures"][0]["observed"] == "2017-11-10 00:00:00"
    assert failure.describe() == "expect_column_max_to_be_between(Date): observed 2017-11-10 00:00:00"


# -- failures name their rows -----------------------------------------------------------------------------------


def day(frame: pd.DataFrame, row: int) -> str:
    return frame["Date"].iloc[row].date().isoformat()


def failure(report: ValidationReport, expectation: str, column: str, purpose: str = "") -> FailedExpectation:
    (found,) = [
        f
        for f in report.failures
        if f.expectation == expectation and f.column == column and f.purpose.startswith(purpose)
    ]
    return found


def test_failures_name_their_rows_by_date(msft_slice, price_suite):
    report = run(negative_price(msft_slice.copy()), price_suite)
    low = failure(report, "expect_column_values_to_be_between", "Low")
    assert low.rows == (day(msft_slice, 50),) and low.unexpected_count == 1
    assert f"expect_column_values_to_be_between(Low): 1 row(s): {day(msft_slice, 50)}" in report.summary()


def test_duplicate_and_unsorted_dates_name_their_rows(msft_slice, price_suite):
    unique = failure(run(duplicate_date(msft_slice.copy()), price_suite), "expect_column_values_to_be_unique", "Date")
    assert unique.rows == (day(msft_slice, 100),) * 2
    increasing = failure(
        run(unsorted_dates(msft_slice.copy()), price_suite), "expect_column_values_to_be_increasing", "Date"
    )
    assert increasing.rows == (day(msft_slice, 120),)  # the row that goes back in time


def test_failing_rows_are_capped_with_a_count(msft_slice, price_suite):
    report = run(truncated_download(msft_slice.copy()).assign(Volume=-1), price_suite)
    volume = failure(report, "expect_column_values_to_be_between", "Volume", "Volume is a finite")
    assert volume.unexpected_count == 290 and len(volume.rows) == 10
    assert volume.rows == tuple(msft_slice["Date"].dt.strftime("%Y-%m-%d").iloc[:10])
    assert volume.describe().endswith(f"{volume.rows[-1]} and 280 more")
    assert len(report.summary()) < 4000


def test_every_expectation_is_an_outcome_in_suite_order(msft_slice, price_suite):
    report = run(nan_close(msft_slice), price_suite)
    expected = [(e["type"], e["meta"]["purpose"], e["severity"]) for e in price_suite["expectations"]]
    assert [(o.expectation, o.purpose, o.severity) for o in report.outcomes] == expected
    assert {o.result for o in report.outcomes} == {"passed", "failed"}
    (null,) = [o for o in report.outcomes if not o.success and o.expectation == "expect_column_values_to_not_be_null"]
    assert null.column == "Close" and null.rows == (day(msft_slice, 70),) and null.element_count == 300
    assert report.parameters == {"as_of": "2017-11-10", "today": dt.date.today().isoformat(), "min_rows": 100}
    assert (report.first_date, report.last_date) == (day(msft_slice, 0), AS_OF.isoformat())
    data = json.loads(json.dumps(report.to_json()))
    assert len(data["outcomes"]) == len(expected) and data["failures"][0]["rows"] == [day(msft_slice, 70)]


# -- bad input is a contract failure naming the row, never a traceback ----------------------------------------------


def set_value(column: str, row: int, value, dtype: str | None = None):
    def corrupt(f: pd.DataFrame) -> pd.DataFrame:
        if dtype:
            f[column] = f[column].astype(dtype)
        f.loc[row, column] = value
        return f

    return corrupt


PRICE_RULE = "expect_column_values_to_be_between"
BAD_INPUTS = {
    "+inf Close": (set_value("Close", 80, np.inf), (PRICE_RULE, "Close"), 80),
    "-inf Open": (set_value("Open", 81, -np.inf), (PRICE_RULE, "Open"), 81),
    "NaN High": (set_value("High", 82, np.nan), ("expect_column_values_to_not_be_null", "High"), 82),
    "negative zero Low": (set_value("Low", 83, -0.0), (PRICE_RULE, "Low"), 83),
    "1e300 Close": (set_value("Close", 84, 1e300), (PRICE_RULE, "Close"), 84),
    # normalize keeps Volume as floats when a value cannot be an int64, so the contract can name it:
    "Volume 1e30": (set_value("Volume", 85, 1e30, "float64"), (PRICE_RULE, "Volume"), 85),
    "Volume +inf": (set_value("Volume", 86, np.inf, "float64"), (PRICE_RULE, "Volume"), 86),
    "Volume beyond 1e15 in int64": (set_value("Volume", 87, 9_000_000_000_000_000_000), (PRICE_RULE, "Volume"), 87),
    "Volume missing (nullable Int64)": (
        set_value("Volume", 88, pd.NA, "Int64"),
        ("expect_column_values_to_not_be_null", "Volume"),
        88,
    ),
    "High 10x its bar": (
        lambda f: f.assign(High=f["High"].where(f.index != 89, f["High"] * 10)),
        (PRICE_RULE, "LogRange"),
        89,
    ),
    "Volume 1000x its history": (
        lambda f: f.assign(Volume=f["Volume"].where(f.index != 90, f["Volume"] * 1000)),
        (PRICE_RULE, "VolumeToMedian"),
        90,
    ),
}


@pytest.mark.parametrize("corrupt, expected, row", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_value_is_a_critical_failure_naming_its_row(msft_slice, price_suite, corrupt, expected, row):
    date = day(msft_slice, row)
    report = run(corrupt(msft_slice.copy()), price_suite)
    assert not report.passed
    named = [f for f in report.critical_failures if (f.expectation, f.column) == expected]
    assert named and date in named[0].rows, report.summary()
    assert f"{expected[0]}({expected[1]}): " in report.summary() and date in report.summary()


def test_a_type_the_store_cannot_hold_fails_as_a_whole_too(msft_slice, price_suite):
    report = run(set_value("Volume", 85, 1e30, "float64")(msft_slice), price_suite)
    types = failure(report, "expect_column_values_to_be_in_type_list", "Volume")
    assert types.severity == CRITICAL and types.observed == "float64"


def test_nullable_volume_fails_only_where_missing(msft_slice, price_suite):
    report = run(set_value("Volume", 88, pd.NA, "Int64")(msft_slice), price_suite)
    assert names(report.critical_failures) == {("expect_column_values_to_not_be_null", "Volume")}, report.summary()


def test_row_dated_after_today_is_corrupt_whatever_the_as_of(msft_slice, price_suite):
    prices = msft_slice.copy()
    prices.loc[len(prices)] = [pd.Timestamp("2099-01-05"), 84.0, 85.0, 83.0, 84.5, 20_000_000]
    report = run(prices, price_suite, as_of=dt.date(2099, 1, 9))  # even a (wrong) future as-of cannot admit it
    future = failure(report, PRICE_RULE, "Date", "No session after today")
    assert future.severity == CRITICAL and future.rows == ("2099-01-05",)
    assert "2099-01-05" in report.summary()


def test_today_is_a_parameter(msft_slice, price_suite):
    today = msft_slice["Date"].iloc[-3].date()  # a replay of old data from a machine whose clock says otherwise
    report = validate_prices(msft_slice, subject="MSFT", suite_definition=price_suite, as_of=AS_OF, today=today)
    future = failure(report, PRICE_RULE, "Date", "No session after today")
    assert future.rows == (day(msft_slice, -2), day(msft_slice, -1)) and report.parameters["today"] == today.isoformat()
    assert run(msft_slice, price_suite).passed  # by default today is the real date


def write_csv(tmp_path, frame: pd.DataFrame, replace: dict[tuple[int, str], str]) -> pd.DataFrame:
    """The slice as a CSV export with some cells replaced by raw text, read back the way sources read it."""
    from pipeline.data.sources import normalize

    raw = frame.assign(Date=frame["Date"].dt.strftime("%Y-%m-%d")).astype(str)
    for (row, column), text in replace.items():
        raw.loc[row, column] = text
    path = tmp_path / "MSFT.csv"
    raw.to_csv(path, index=False)
    return normalize(pd.read_csv(path))


CSV_INPUTS = {
    "text in Close": ({(60, "Close"): "n/a"}, ("expect_column_values_to_not_be_null", "Close"), 60),
    "text in Volume": ({(61, "Volume"): "lots"}, ("expect_column_values_to_not_be_null", "Volume"), 61),
    "Volume 1e30": ({(62, "Volume"): "1e30"}, (PRICE_RULE, "Volume"), 62),
    "Volume inf": ({(63, "Volume"): "inf"}, (PRICE_RULE, "Volume"), 63),
    "Close inf": ({(64, "Close"): "inf"}, (PRICE_RULE, "Close"), 64),
    "Low -0.0": ({(65, "Low"): "-0.0"}, (PRICE_RULE, "Low"), 65),
}


@pytest.mark.parametrize("cells, expected, row", CSV_INPUTS.values(), ids=CSV_INPUTS.keys())
def test_bad_cells_in_a_csv_export_are_named_by_the_contract(tmp_path, msft_slice, price_suite, cells, expected, row):
    prices = write_csv(tmp_path, msft_slice, cells)  # normalize must not raise: the contract decides
    report = run(prices, price_suite)
    named = [f for f in report.critical_failures if (f.expectation, f.column) == expected]
    assert named and day(msft_slice, row) in named[0].rows, report.summary()


def test_csv_row_dated_2099_is_named(tmp_path, msft_slice, price_suite):
    prices = write_csv(tmp_path, msft_slice, {(299, "Date"): "2099-01-05"})
    report = run(prices, price_suite, as_of=dt.date(2099, 1, 5))
    assert "2099-01-05" in failure(report, PRICE_RULE, "Date", "No session after today").rows


HOSTILE = "PATH=/usr/bin\x1b[2J\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY <script>alert(1)</script>"


def test_hostile_text_cannot_break_or_leak_through_the_contract(msft_slice, price_suite):
    prices = msft_slice.copy()
    prices["Close"] = prices["Close"].astype(object)
    prices.loc[40, "Close"] = HOSTILE
    prices = prices.rename(columns={"Open": HOSTILE})
    report = run(prices, price_suite)  # no traceback
    assert not report.passed
    text = json.dumps(report.to_json()) + report.summary()
    assert "wJalrXUtnFEMI" not in text and "\x1b" not in text and "alert(1)" not in text
    (columns,) = [f for f in report.failures if f.expectation == "expect_table_columns_to_match_set"]
    assert all(isinstance(v, str) and len(v) <= 40 for v in columns.observed)


def test_a_table_without_its_columns_is_a_failure_not_a_traceback(msft_slice, price_suite):
    for prices in (msft_slice.drop(columns=["Close", "Date"]), msft_slice.iloc[:0], pd.DataFrame({"x": [1]})):
        report = run(prices, price_suite)
        assert not report.passed and report.critical_failures


def test_text_dates_fail_without_a_traceback(msft_slice, price_suite):
    prices = msft_slice.assign(Date=msft_slice["Date"].dt.strftime("%Y-%m-%d"))
    prices.loc[10, "Date"] = "garbage"
    report = run(prices, price_suite)
    assert ("expect_column_values_to_be_in_type_list", "Date") in names(report.critical_failures)


# -- what reaches a report from the data is short and safe ---------------------------------------------------------


def test_excerpt_and_safe_values():
    from pipeline.contract.sanitize import excerpt, row_label, safe_value

    assert excerpt("HOME=/root\x00SECRET=abc\u202edef") == "HOME=*** SECRET=***"
    assert excerpt("postgresql://user:hunter2@db/x") == "postgresql://user:***@db/x"
    assert len(excerpt("x" * 10_000)) == 40 and excerpt("a\tb\r\nc") == "a b c"
    assert safe_value(np.float64("inf")) == "inf" and safe_value(np.int64(3)) == 3 and safe_value(True) is True
    assert safe_value(pd.Timestamp("2017-11-10")) == "2017-11-10"
    assert safe_value(list(range(25)))[-1] == "… 15 more" and len(safe_value(list(range(25)))) == 11
    assert row_label("2017-11-03T00:00:00") == "2017-11-03" and row_label("NaT") == "(no date)"
    assert row_label(None) == "(no date)" and row_label(7) == "row 7" and len(row_label("y" * 500)) == 40


def test_verdict_reads_failing_rows_and_errors_from_gx_json():
    raw = gx_result(
        close_out_of_range(
            unexpected_count=12,
            partial_unexpected_index_list=[
                {"Date": [f"2017-11-{d:02d}T00:00:00" for d in range(1, 11)] + ["… 2 more"]}
            ],
        ),
        {
            "success": False,
            "result": {},
            "expectation_config": {"type": "expect_column_values_to_be_increasing", "kwargs": {"column": "Date"}},
            "exception_info": {
                "raised_exception": True,
                "exception_message": "boom PASSWORD=x\n" + "y" * 200,
                "exception_traceback": "Traceback...",
            },
        },
    )
    close, increasing = verdict("MSFT", 12, raw).failures
    assert close.rows[0] == "2017-11-01" and len(close.rows) == 10
    assert close.describe() == (
        "expect_column_values_to_be_between(Close): 12 row(s): "
        + ", ".join(f"2017-11-{d:02d}" for d in range(1, 11))
        + " and 2 more"
    )
    assert increasing.error.startswith("boom PASSWORD=***") and len(increasing.error) <= 80
    assert increasing.describe().startswith("expect_column_values_to_be_increasing(Date): not evaluated: boom")


def test_sanitized_gx_result_caps_lists_and_drops_tracebacks():
    from pipeline.contract.sanitize import sanitize_gx_result

    raw = gx_result(
        close_out_of_range(
            observed_value="\x1b]0;" + "z" * 100, partial_unexpected_index_list=[{"Date": list(range(50))}]
        )
    )
    raw["results"][0]["exception_info"] = {
        "raised_exception": True,
        "exception_traceback": "secret",
        "exception_message": "m",
    }
    clean = sanitize_gx_result(raw)
    details = clean["results"][0]["result"]
    assert len(details["observed_value"]) == 40 and "\x1b" not in details["observed_value"]
    assert details["partial_unexpected_index_list"][0]["Date"][-1] == "… 40 more"
    assert clean["results"][0]["exception_info"]["exception_traceback"] is None
    assert raw["results"][0]["exception_info"]["exception_traceback"] == "secret", "the input is not modified"


# -- one GX context per process ----------------------------------------------------------------------------------


def test_one_gx_context_is_reused_and_suites_are_registered_once(msft_slice, price_suite):
    from pipeline.contract import gx_context

    run(msft_slice, price_suite)
    state = gx_context._GX
    run(msft_slice.tail(5).reset_index(drop=True), price_suite, min_rows=1)
    assert gx_context._GX is state and len(state.suites) >= 1
    suites = len(state.context.suites.all())
    run(msft_slice, price_suite, as_of=msft_slice["Date"].iloc[-2].date())  # other parameters, same suite
    assert len(state.context.suites.all()) == suites


def test_parallel_validations_take_turns_and_keep_their_own_results(msft_slice, price_suite):
    from concurrent.futures import ThreadPoolExecutor

    def check(i: int) -> bool:
        prices = msft_slice.copy()
        prices.loc[10 + i, "Close"] = np.nan
        report = run(prices, price_suite)
        return failure(report, "expect_column_values_to_not_be_null", "Close").rows == (day(msft_slice, 10 + i),)

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert all(pool.map(check, range(3)))


def test_data_docs_are_rendered_on_request(tmp_path, msft_slice, price_suite):
    from pipeline.contract.data_docs import render_data_docs

    reports = [run(nan_close(msft_slice.copy()), price_suite), run(msft_slice, price_suite)]
    assert not (tmp_path / "docs").exists()
    index = render_data_docs(reports, tmp_path / "docs")
    assert index == tmp_path / "docs" / "index.html" and index.is_file()
    pages = list((tmp_path / "docs" / "validations").rglob("*.html"))
    assert len(pages) == 2
    render_data_docs(reports[1:], tmp_path / "docs")  # replaces the site
    assert len(list((tmp_path / "docs" / "validations").rglob("*.html"))) == 1
    legacy = validate_prices(
        msft_slice, subject="MSFT", suite_definition=price_suite, as_of=AS_OF, docs_dir=tmp_path / "legacy"
    )  # the old per-validation way still works
    assert legacy.passed and (tmp_path / "legacy" / "index.html").is_file()


def test_data_docs_escape_what_came_from_the_data(tmp_path, msft_slice, price_suite):
    from pipeline.contract.data_docs import render_data_docs

    report = run(msft_slice.rename(columns={"Open": "<script>alert(1)</script>"}), price_suite)
    render_data_docs([report], tmp_path)
    pages = "".join(p.read_text() for p in tmp_path.rglob("*.html"))
    assert "&lt;script&gt;alert(1)" in pages and "<script>alert(1)" not in pages
