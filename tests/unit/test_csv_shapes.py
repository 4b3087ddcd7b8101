"""Real CSV exports read into the store or refused clearly (issue 25): the bundled history written as common tools
write it comes back session for session with the right closes, and a refused file is kept for the quarantine."""

from __future__ import annotations

import datetime as dt
import json
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS, BUNDLED_SUITE
from pipeline.contract.inputs import load_suite_definition
from pipeline.data.csv_shapes import ShapeError, canonical_columns, parse_numbers, read_table, session_dates
from pipeline.data.ingest import UnreadableBatch, admit, fetch_batch
from pipeline.data.sources import (
    COLUMNS,
    CsvSource,
    Received,
    UnreadablePrices,
    YahooSource,
    describe_columns,
    normalize,
)
from tests.fixtures.exports import SHAPES, bundled_text, dividend_factor, investing, yahoo_download
from tests.support import MSFT_LAST_SESSION, PRICE_SCHEMA


@pytest.fixture(scope="module")
def bundled() -> dict[str, pd.DataFrame]:
    return {t: CsvSource(BUNDLED_SNAPSHOTS).read(t)[0] for t in ("MSFT", "GSPC")}


def written(tmp_path, content: bytes, ticker: str = "MSFT") -> CsvSource:
    (tmp_path / f"{ticker}.csv").write_bytes(content)
    return CsvSource(tmp_path, name="csv")


def read(tmp_path, content: bytes, ticker: str = "MSFT") -> pd.DataFrame:
    return written(tmp_path, content, ticker).read(ticker)[0]


# -- every shape, from the whole bundled history -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SHAPES))
def test_each_export_is_read_session_for_session_with_the_right_closes_or_refused(name, tmp_path, bundled):
    shape, want = SHAPES[name], bundled["MSFT"]
    content = shape.write(bundled_text("MSFT"))
    if shape.refused:
        with pytest.raises(UnreadablePrices, match=re.escape(shape.refused)) as refused:
            read(tmp_path, content)
        assert refused.value.raw == content and refused.value.raw_name == "MSFT.csv", "kept as received"
        assert "<unreadable>" not in str(refused.value)
        return
    got = read(tmp_path, content)
    assert {c: str(t) for c, t in got.dtypes.items()} == PRICE_SCHEMA
    assert got["Date"].tolist() == want["Date"].tolist(), "every session, oldest first"
    np.testing.assert_allclose(got["Close"], want["Close"], rtol=shape.rtol)
    np.testing.assert_allclose(got[["Open", "High", "Low"]], want[["Open", "High", "Low"]], rtol=shape.rtol)
    np.testing.assert_allclose(got["Volume"], want["Volume"], rtol=shape.volume_rtol)


def test_investing_com_thousands_separators_and_scaled_volumes(tmp_path, bundled):
    got = read(tmp_path, investing(bundled_text("GSPC")), "GSPC")
    assert '"2,506.850098"' in investing(bundled_text("GSPC")).decode(), "the file groups thousands"
    assert got["Date"].tolist() == bundled["GSPC"]["Date"].tolist()
    np.testing.assert_allclose(got["Close"], bundled["GSPC"]["Close"], rtol=1e-9)
    np.testing.assert_allclose(got["Volume"], bundled["GSPC"]["Volume"], rtol=2e-4)


# -- Adj Close: as --source yahoo serves prices ----------------------------------------------------------------------


def test_adj_close_scales_open_high_low_close_as_yfinance_auto_adjust_and_keeps_volume(tmp_path, bundled):
    from yfinance.utils import auto_adjust

    content = yahoo_download(bundled_text("MSFT"))
    raw = pd.read_csv(written(tmp_path, content).path("MSFT"))
    yahoo = auto_adjust(raw)  # what `--source yahoo` asks Yahoo for (auto_adjust=True) from the same raw prices
    received = written(tmp_path, content).receive("MSFT", None, MSFT_LAST_SESSION)
    for column in ("Open", "High", "Low", "Close"):
        np.testing.assert_allclose(received.rows[column], yahoo[column], rtol=1e-12)
    assert received.rows["Volume"].tolist() == raw["Volume"].tolist(), "volume as exported, as yfinance keeps it"
    assert received.rows["Close"].tolist() == pytest.approx(bundled["MSFT"]["Close"].tolist(), rel=1e-12)
    (note,) = received.notes
    assert "Adj Close" in note and "--source yahoo" in note and "Volume as exported" in note
    unchanged = int((dividend_factor(raw["Date"]) == 1).sum())
    assert f"{len(raw) - unchanged} of {len(raw)} row(s)" in note


def test_a_row_without_a_readable_adj_close_gets_no_prices_for_the_contract_to_name():
    frame = pd.DataFrame(
        {
            "Date": ["2020-01-02", "2020-01-03"],
            "Open": [10.0, 11.0],
            "High": [10.0, 11.0],
            "Low": [10.0, 11.0],
            "Close": [10.0, 11.0],
            "Adj Close": [5.0, None],
            "Volume": [1, 2],
        }
    )
    out = normalize(frame)
    assert out.loc[0, ["Open", "Close"]].tolist() == [5.0, 5.0]
    assert out.loc[1, ["Open", "High", "Low", "Close"]].isna().all(), "never raw prices among adjusted ones"


def test_without_adj_close_nothing_is_noted(tmp_path):
    received = written(tmp_path, b"Date,Open,High,Low,Close,Volume\n2020-01-02,1,1,1,1,1\n").receive(
        "MSFT", None, dt.date(2020, 1, 2)
    )
    assert received.notes == ()


def test_the_note_survives_an_incremental_fetch(tmp_path, bundled):
    source = written(tmp_path, yahoo_download(bundled_text("MSFT")))
    history = bundled["MSFT"].iloc[:-3]
    fetched = fetch_batch(source, history, "MSFT", MSFT_LAST_SESSION)
    assert len(fetched.rows) == 3 and fetched.received.notes and not fetched.unreadable


# -- headers ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        ["date", "open", "high", "low", "close", "volume"],
        [" DATE ", "Open ", "HIGH", "low", "Close*", "VOL."],
        ["Datetime", "Open", "High", "Low", "Close/Last", "Vol"],
        ["timestamp", "open", "high", "low", "price", "volume"],
        ["Date", "Open", "High", "Low", "Last", "Volume"],
    ],
)
def test_headers_match_ignoring_case_space_and_punctuation_through_the_aliases(headers):
    frame = pd.DataFrame([["2020-01-02", 1, 2, 0.5, 1.5, 10]], columns=headers)
    assert list(canonical_columns(frame).columns) == ["Date", "Open", "High", "Low", "Close", "Volume"]


@pytest.mark.parametrize("spelling", ["Adj Close", "Adj. Close", "adjclose", "Adjusted Close", "Adj Close**"])
def test_every_spelling_of_adj_close_is_it(spelling):
    frame = pd.DataFrame(columns=["Date", "Close", spelling])
    assert "Adj Close" in canonical_columns(frame).columns


def test_two_columns_for_one_are_refused_naming_both():
    with pytest.raises(ShapeError, match=r"'Close', 'Price' all read as Close"):
        canonical_columns(pd.DataFrame(columns=["Date", "Close", "Price"]))


def test_column_names_in_messages_are_sanitised_not_hidden():
    text = describe_columns(["Close/Last", "Vol.", "a\x1b[31mred\nline", "x" * 80, "PATH=/usr/bin", "Δ Kurs"])
    assert "<unreadable>" not in text
    assert "'Close/Last'" in text and "'Vol.'" in text and "'Δ Kurs'" in text
    assert "\x1b" not in text and "\n" not in text and "x" * 40 not in text
    assert "/usr/bin" not in text and "PATH=***" in text


def test_a_file_without_any_price_column_names_what_it_lacks(tmp_path):
    with pytest.raises(UnreadablePrices, match=r"lacks column\(s\) \['Open', 'High', 'Low', 'Close', 'Volume'\]"):
        read(tmp_path, b"Date,Foo\n2020-01-02,1\n")


def test_a_missing_volume_column_is_refused_naming_it_and_the_contract(tmp_path):
    with pytest.raises(UnreadablePrices) as refused:
        read(tmp_path, b"Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n")
    message = str(refused.value)
    assert "['Volume']" in message and "data contract" in message and "MSFT.csv" in message


# -- numbers ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cells, decimal, want",
    [
        (["$1,234.50", "€83.79", "£ 12", "1234.5", "-1.5e3"], ".", [1234.5, 83.79, 12.0, 1234.5, -1500.0]),
        (["1.234,50", "83,79", "1\u00a0234,5", "12"], ",", [1234.5, 83.79, 1234.5, 12.0]),
        (["n/a", "-", "", "1,2,3", "12.3.4", "1O.5"], ".", [np.nan] * 6),
    ],
)
def test_numbers_with_currency_and_thousands(cells, decimal, want):
    got = parse_numbers(pd.Series(cells, dtype="string"), decimal)
    np.testing.assert_array_equal(got.to_numpy(), np.array(want, dtype=float))


def test_volumes_may_be_scaled():
    got = parse_numbers(pd.Series(["26.83M", "1.5K", "2B", "19,396,301", "3X"]), ".", scaled=True)
    np.testing.assert_allclose(got.to_numpy(), [26.83e6, 1500, 2e9, 19396301, np.nan])


def test_the_decimal_mark_is_what_the_prices_prove():
    assert read_table(b"Date;Close;Volume\n2020-01-02;1.234,50;1\n").frame["Close"].tolist() == [1234.5]
    assert read_table(b"Date\tClose\tVolume\n2020-01-02\t1,234.50\t1\n").frame["Close"].tolist() == [1234.5]
    assert read_table(b"Date;Close;Volume\n2020-01-02;83;1\n").decimal == ",", "a semicolon file without proof"
    with pytest.raises(ShapeError, match="both ',' and '.'"):
        read_table(b"Date;Close;Volume\n2020-01-02;83,79;1\n2020-01-03;83.79;1\n")


# -- dates -----------------------------------------------------------------------------------------------------------


def dates(*values: str) -> list[str]:
    return session_dates(pd.Series(values, dtype="string")).dt.strftime("%Y-%m-%d").fillna("NaT").tolist()


def test_month_first_dates_proven_by_one_value():
    assert dates("11/13/2017", "11/10/2017", "11/09/2017") == ["2017-11-13", "2017-11-10", "2017-11-09"]


def test_day_first_dates_proven_by_one_value():
    assert dates("13.11.2017", "10.11.2017") == ["2017-11-13", "2017-11-10"]


def test_without_proof_the_reading_that_makes_a_daily_series_wins():
    # 6 to 10 November as MM/DD; as DD/MM they would be the 11th of June to October: not a daily history.
    assert dates("11/06/2017", "11/07/2017", "11/08/2017", "11/09/2017", "11/10/2017")[0] == "2017-11-06"


@pytest.mark.parametrize("values", [("11/10/2017",), ("01/02/2020", "02/03/2020")])
def test_dates_that_read_both_ways_are_refused(values):
    with pytest.raises(ShapeError, match="MM/DD/YYYY.*DD/MM/YYYY.*YYYY-MM-DD"):
        dates(*values)


def test_an_unreadable_date_among_proven_ones_is_left_for_the_contract():
    assert dates("11/13/2017", "11/1x/2017", "11/10/2017") == ["2017-11-13", "NaT", "2017-11-10"]


def test_a_column_of_impossible_dates_is_left_for_the_contract():
    assert dates("13/13/2017", "14/14/2017") == ["NaT", "NaT"]


def test_iso_and_month_name_dates_are_read_as_before():
    assert dates("2017-11-10", "2017-11-09") == ["2017-11-10", "2017-11-09"]
    assert dates("2017-11-10 00:00:00-05:00", "2017-11-09 00:00:00-05:00") == ["2017-11-10", "2017-11-09"]
    assert dates("Nov 10, 2017", "Nov 09, 2017") == ["2017-11-10", "2017-11-09"]


def test_ambiguous_dates_refuse_the_file_with_its_bytes(tmp_path):
    content = b"Date,Open,High,Low,Close,Volume\n01/02/2020,1,1,1,1,1\n"
    with pytest.raises(UnreadablePrices, match="DD/MM/YYYY") as refused:
        read(tmp_path, content)
    assert refused.value.raw == content


# -- delimiters ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_each_readable_delimiter_is_found_from_the_header(delimiter):
    content = delimiter.join(["Date", "Open", "High", "Low", "Close", "Volume"]) + "\n"
    content += delimiter.join(["2020-01-02", "1", "2", "0.5", "1.5", "10"]) + "\n"
    table = read_table(content.encode())
    assert table.delimiter == delimiter and table.frame["Close"].tolist() == [1.5]


@pytest.mark.parametrize(
    "content, named",
    [
        (b"Date:Open:High:Low:Close:Volume\n2020-01-02:1:1:1:1:1\n", "separated by ':'"),
        (b"sep=#\nDate#Close\n", "declares '#'"),
        (b"DateOpenHighLowCloseVolume\n20200102\n", "no delimiter (one column: 'DateOpenHighLowCloseVolume')"),
        (b"\n\n", "empty"),
        (b"Date,Close\n\xff\xfe\n", "not UTF-8 text (byte 11)"),
    ],
)
def test_an_unreadable_layout_is_refused_naming_what_was_found(content, named):
    with pytest.raises(ShapeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        read_table(content)


# -- refused files are quarantined -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def suite() -> dict:
    return load_suite_definition(BUNDLED_SUITE)


@pytest.mark.parametrize("stored", [0, 300], ids=["first batch", "after a stored history"])
def test_an_unreadable_file_is_quarantined_as_received_and_refused(stored, tmp_path, bundled, suite):
    content = SHAPES["no Volume column"].write(bundled_text("MSFT"))
    source = written(tmp_path, content)
    history = bundled["MSFT"].iloc[-stored - 5 : -5] if stored else normalize(pd.DataFrame(columns=COLUMNS))
    fetched = fetch_batch(source, history.reset_index(drop=True), "MSFT", MSFT_LAST_SESSION)
    with pytest.raises(UnreadableBatch) as refused:
        admit(
            "MSFT",
            history,
            fetched,
            suite=suite,
            as_of=MSFT_LAST_SESSION,
            min_rows=100,
            quarantine_dir=tmp_path / "quarantine",
            reports_dir=tmp_path / "reports",
        )
    folder = refused.value.quarantined
    assert folder is not None and (folder / "MSFT.csv").read_bytes() == content
    kept = json.loads((folder / "validation.json").read_text())
    assert "['Volume']" in kept["refused"] and kept["validation"] == []
    assert "['Volume']" in str(refused.value) and str(folder) in str(refused.value)


def test_a_yahoo_answer_without_a_column_is_refused_with_the_answer(tmp_path):
    answer = pd.DataFrame({"Date": pd.to_datetime(["2020-01-02"]), "Open": [1.0], "High": [1.0], "Low": [1.0]})
    source = YahooSource({}, download=lambda *_: answer)
    with pytest.raises(UnreadablePrices, match=r"MSFT: Yahoo's answer for MSFT: .*\['Close', 'Volume'\]") as refused:
        source.receive("MSFT", None, dt.date(2020, 1, 2))
    assert refused.value.raw == answer.to_csv(index=False).encode()
    assert refused.value.raw_name == "MSFT.yahoo.csv"


def test_received_keeps_its_notes_by_default_empty():
    assert Received(pd.DataFrame()).notes == ()
