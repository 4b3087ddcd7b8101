"""yfinance's real parsing on recorded Yahoo chart answers, intercepted at the HTTP layer."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from curl_cffi.requests.exceptions import DNSError

from pipeline.data.ingest import fetch_batch
from pipeline.data.sources import COLUMNS, TransientSourceError, UnknownSymbol, YahooSource
from pipeline.data.store import PriceStore
from tests import yahoo_fake
from tests.support import fetch

SNAPSHOT = pd.read_csv(yahoo_fake.RECORDED.parents[2] / "data" / "snapshots" / "MSFT.csv", parse_dates=["Date"])


@pytest.fixture
def yahoo(monkeypatch, tmp_path):
    return yahoo_fake.install(monkeypatch, tmp_path / "yf-cache")


@pytest.fixture
def store(tmp_path):
    return PriceStore(tmp_path / "store", tmp_path / "locks")


def test_normal_answer_is_normalised_to_the_store_schema(yahoo):
    yahoo.answer("MSFT", "msft_2017-10-25_2017-11-10.json")
    prices = fetch(YahooSource({}), "MSFT", dt.date(2017, 10, 31), dt.date(2017, 11, 10))

    assert list(prices.columns) == COLUMNS
    assert prices["Date"].dt.tz is None, "exchange-local session dates, no time zone"
    assert prices["Date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2017-11-01",
        "2017-11-02",
        "2017-11-03",
        "2017-11-06",
        "2017-11-07",
        "2017-11-08",
        "2017-11-09",
        "2017-11-10",
    ]
    assert prices[["Open", "High", "Low", "Close"]].dtypes.eq("float64").all() and prices["Volume"].dtype == "int64"
    expected = SNAPSHOT.set_index("Date").loc["2017-11-01":"2017-11-10"]
    assert prices["Close"].to_numpy() == pytest.approx(expected["Close"].to_numpy())
    assert prices["Volume"].tolist() == expected["Volume"].tolist()
    (params,) = [p for p in yahoo.chart_requests("MSFT") if "period1" in p]
    assert params["interval"] == "1d"


def test_index_symbols_are_mapped(yahoo):
    yahoo.answer("^GSPC", "msft_2017-10-25_2017-11-10.json")
    prices = fetch(YahooSource({"GSPC": "^GSPC"}), "GSPC", dt.date(2017, 11, 8), dt.date(2017, 11, 10))
    assert len(prices) == 2
    assert yahoo.chart_requests("^GSPC") and not yahoo.chart_requests("GSPC")


def test_empty_answer_on_a_closed_day_is_nothing_new(yahoo):
    yahoo.answer("MSFT", "msft_empty_weekend.json")
    prices = fetch(YahooSource({}), "MSFT", dt.date(2017, 11, 10), dt.date(2017, 11, 12))
    assert prices.empty and list(prices.columns) == COLUMNS


def test_rate_limit_is_transient(yahoo):
    yahoo.answer("MSFT", 429)
    with pytest.raises(TransientSourceError, match="MSFT.*429"):
        fetch(YahooSource({}), "MSFT", dt.date(2017, 11, 1), dt.date(2017, 11, 10))


def test_dns_failure_is_transient(yahoo):
    yahoo.answer("MSFT", DNSError("Could not resolve host: query2.finance.yahoo.com"))
    with pytest.raises(TransientSourceError, match="network error"):
        fetch(YahooSource({}), "MSFT", dt.date(2017, 11, 1), dt.date(2017, 11, 10))


def test_unknown_symbol_is_final_and_says_so(yahoo):
    with pytest.raises(UnknownSymbol, match="unknown or delisted"):
        fetch(YahooSource({}), "NOSUCH", None, dt.date(2017, 11, 10))


def test_split_re_adjusted_history_replaces_the_store(yahoo, store):
    stored = SNAPSHOT[(SNAPSHOT["Date"] >= "2017-10-25") & (SNAPSHOT["Date"] <= "2017-11-08")]
    store.write("MSFT", stored)
    yahoo.answer("MSFT", "msft_split_2017-10-25_2017-11-10.json")

    fetched = fetch_batch(YahooSource({}), store.read("MSFT"), "MSFT", dt.date(2017, 11, 10))

    assert fetched.replaces_history
    assert "Close on 2017-11-0" in fetched.note and "re-adjusted" in fetched.note
    assert len(fetched.rows) == len(stored) + 2, "the full history, re-fetched"
    assert fetched.rows["Close"].iloc[0] == pytest.approx(stored["Close"].iloc[0] / 2)
    overlap, full = [p for p in yahoo.chart_requests("MSFT") if "period1" in p]
    assert int(full["period1"]) < int(overlap["period1"]), "the second request reaches back to the start of history"


def test_unchanged_overlap_fetches_only_new_rows(yahoo, store):
    store.write("MSFT", SNAPSHOT[(SNAPSHOT["Date"] >= "2017-10-25") & (SNAPSHOT["Date"] <= "2017-11-08")])
    yahoo.answer("MSFT", "msft_2017-10-25_2017-11-10.json")
    fetched = fetch_batch(YahooSource({}), store.read("MSFT"), "MSFT", dt.date(2017, 11, 10))
    assert not fetched.replaces_history
    assert fetched.rows["Date"].dt.strftime("%Y-%m-%d").tolist() == ["2017-11-09", "2017-11-10"]
