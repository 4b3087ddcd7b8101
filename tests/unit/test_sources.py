"""Price sources: one schema out of every source, `as_of` hides the future, `since` returns only newer rows."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS
from pipeline.common.symbols import InvalidTicker
from pipeline.data.sources import (
    COLUMNS,
    CsvSource,
    SourceError,
    TransientSourceError,
    UnknownSymbol,
    YahooSource,
    build_source,
    normalize,
    yfinance_history,
)
from tests.support import PRICE_SCHEMA, fetch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = PRICE_SCHEMA


def dtypes(frame: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in frame.dtypes.items()}


def day_strings(frame: pd.DataFrame) -> list[str]:
    return frame["Date"].dt.strftime("%Y-%m-%d").tolist()


# -- normalize -------------------------------------------------------------------------------------


def test_normalize_gives_the_store_schema_sorted_oldest_first():
    raw = pd.DataFrame(
        {
            "Volume": ["300", "100", "200"],
            "Close": ["3.5", "1.5", "2.5"],
            "Date": ["2020-01-06", "2020-01-02", "2020-01-03"],
            "Extra": ["x", "y", "z"],
            "Open": [3, 1, 2],
            "High": [4, 2, 3],
            "Low": [3, 1, 2],
        }
    )
    out = normalize(raw)
    assert list(out.columns) == COLUMNS, "fixed column order, extras dropped"
    assert dtypes(out) == SCHEMA
    assert day_strings(out) == ["2020-01-02", "2020-01-03", "2020-01-06"]
    assert out["Close"].tolist() == [1.5, 2.5, 3.5] and out["Volume"].tolist() == [100, 200, 300]
    assert list(out.index) == [0, 1, 2]


def test_normalize_drops_time_zone_and_keeps_the_exchange_local_date():
    # Midnight in Tokyo is the previous day in UTC: the session date must stay the local one.
    index = pd.DatetimeIndex(["2020-01-06", "2020-01-07"], tz="Asia/Tokyo", name="Date")
    raw = pd.DataFrame(
        {"Open": [1.0, 2.0], "High": [1.0, 2.0], "Low": [1.0, 2.0], "Close": [1.0, 2.0], "Volume": [1, 2]}, index=index
    ).reset_index()
    out = normalize(raw)
    assert out["Date"].dt.tz is None
    assert day_strings(out) == ["2020-01-06", "2020-01-07"]
    assert (out["Date"] == out["Date"].dt.normalize()).all(), "no time of day"


def test_normalize_strips_time_of_day():
    raw = pd.DataFrame(
        {
            "Date": ["2020-01-02 09:30:00", "2020-01-03 16:00:00"],
            "Open": [1, 2],
            "High": [1, 2],
            "Low": [1, 2],
            "Close": [1, 2],
            "Volume": [1, 2],
        }
    )
    assert normalize(raw)["Date"].tolist() == [pd.Timestamp("2020-01-02"), pd.Timestamp("2020-01-03")]


def test_normalize_reads_a_yfinance_csv_export_across_a_dst_change():
    """`Ticker.history().to_csv()` writes local midnights whose UTC offset changes with daylight saving."""
    raw = pd.DataFrame(
        {
            "Date": ["2017-11-02 00:00:00-04:00", "2017-11-03 00:00:00-04:00", "2017-11-06 00:00:00-05:00"],
            "Open": [1.0, 2.0, 3.0],
            "High": [1.0, 2.0, 3.0],
            "Low": [1.0, 2.0, 3.0],
            "Close": [1.0, 2.0, 3.0],
            "Volume": [1, 2, 3],
            "Dividends": [0.0, 0.0, 0.0],
            "Stock Splits": [0.0, 0.0, 0.0],
        }
    )
    out = normalize(raw)
    assert dtypes(out) == SCHEMA
    assert day_strings(out) == ["2017-11-02", "2017-11-03", "2017-11-06"]


def test_normalize_keeps_bad_rows_for_the_contract_to_judge():
    raw = pd.DataFrame(
        {
            "Date": ["2020-01-02", "2020-01-02", "2020-01-03", "not a date"],
            "Open": [1.0, 1.0, -5.0, 1.0],
            "High": [1.0, 1.0, 1.0, 1.0],
            "Low": [1.0, 1.0, 1.0, 1.0],
            "Close": [1.0, 1.0, "n/a", 1.0],
            "Volume": [1, 1, 1, 1],
        }
    )
    out = normalize(raw)
    assert len(out) == 4, "duplicates and unparseable values are not dropped"
    assert (out["Date"] == pd.Timestamp("2020-01-02")).sum() == 2
    assert out["Open"].min() == -5.0
    assert out["Close"].isna().sum() == 1
    assert out["Date"].isna().sum() == 1


def test_normalize_missing_volume_becomes_nullable_integer():
    raw = pd.DataFrame(
        {
            "Date": ["2020-01-02", "2020-01-03"],
            "Open": [1, 2],
            "High": [1, 2],
            "Low": [1, 2],
            "Close": [1, 2],
            "Volume": [1234.6, np.nan],
        }
    )
    out = normalize(raw)
    assert str(out["Volume"].dtype) == "Int64"
    assert out["Volume"].iloc[0] == 1235 and pd.isna(out["Volume"].iloc[1])


def test_normalize_names_missing_columns():
    raw = pd.DataFrame({"Date": ["2020-01-02"], "Open": [1], "High": [1], "Low": [1], "Adj Close": [1]})
    with pytest.raises(SourceError, match=r"\['Close', 'Volume'\]"):
        normalize(raw)


def test_normalize_of_nothing_is_an_empty_table_in_the_schema():
    out = normalize(pd.DataFrame(columns=COLUMNS))
    assert out.empty and list(out.columns) == COLUMNS and dtypes(out) == SCHEMA


# -- CSV files and the bundled snapshot -------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshot() -> CsvSource:
    return build_source("snapshot", folder=BUNDLED_SNAPSHOTS)


def test_snapshot_as_of_hides_later_rows(snapshot):
    prices = fetch(snapshot, "MSFT", None, dt.date(2010, 6, 30))
    assert dtypes(prices) == SCHEMA
    assert prices["Date"].max() == pd.Timestamp("2010-06-30")
    assert prices["Date"].min() == pd.Timestamp("1986-03-13")
    assert prices["Date"].is_monotonic_increasing and prices["Date"].is_unique
    full = pd.read_csv(BUNDLED_SNAPSHOTS / "MSFT.csv")
    assert len(prices) == (full["Date"] <= "2010-06-30").sum()


def test_snapshot_as_of_on_a_closed_day_ends_at_the_previous_session(snapshot):
    prices = fetch(snapshot, "MSFT", None, dt.date(2017, 11, 5))  # a Sunday
    assert day_strings(prices)[-1] == "2017-11-03"


def test_snapshot_since_returns_only_newer_rows(snapshot):
    prices = fetch(snapshot, "MSFT", dt.date(2017, 11, 3), dt.date(2017, 11, 8))
    assert day_strings(prices) == ["2017-11-06", "2017-11-07", "2017-11-08"]


def test_snapshot_since_at_as_of_is_empty(snapshot):
    prices = fetch(snapshot, "GSPC", dt.date(2018, 12, 31), dt.date(2018, 12, 31))
    assert prices.empty and list(prices.columns) == COLUMNS


def test_snapshot_values_match_the_file(snapshot):
    prices = fetch(snapshot, "GSPC", dt.date(1999, 1, 4), dt.date(1999, 1, 6))
    assert day_strings(prices) == ["1999-01-05", "1999-01-06"]
    assert prices["Close"].tolist() == pytest.approx([1244.780029, 1272.339966])
    assert prices["Volume"].tolist() == [775000000, 986900000]


def test_missing_file_names_the_ticker_and_the_file(tmp_path):
    source = CsvSource(tmp_path)
    with pytest.raises(SourceError) as raised:
        fetch(source, "AAPL", None, dt.date(2020, 1, 1))
    message = str(raised.value)
    assert "AAPL" in message and str(tmp_path / "AAPL.csv") in message


def test_invalid_ticker_is_refused_before_touching_a_path(tmp_path):
    (tmp_path / "secret.csv").write_text("Date,Open,High,Low,Close,Volume\n2020-01-02,1,1,1,1,1\n")
    source = CsvSource(tmp_path / "exports")
    with pytest.raises(InvalidTicker):
        fetch(source, "../secret", None, dt.date(2020, 1, 1))


def test_unparseable_and_empty_files_are_source_errors_naming_the_file(tmp_path):
    (tmp_path / "EMPTY.csv").write_text("")
    with pytest.raises(SourceError, match="EMPTY.csv"):
        fetch(CsvSource(tmp_path), "EMPTY", None, dt.date(2020, 1, 1))
    (tmp_path / "BAD.csv").write_bytes(b"Date,Open,High,Low,Close,Volume\n2020-01-02,1,1,1,1,\xff\xfe\n")
    with pytest.raises(SourceError, match="BAD.csv"):
        fetch(CsvSource(tmp_path), "BAD", None, dt.date(2020, 1, 1))


def test_csv_export_is_normalised(tmp_path):
    (tmp_path / "BRK-B.csv").write_text(
        "Date,Open,High,Low,Close,Adj Close,Volume\n"
        "2020-01-03,2,2,2,2,2,20\n"
        "2020-01-02,1,1,1,1,1,10\n"
        "2020-01-06,3,3,3,3,3,30\n"
    )
    prices = fetch(CsvSource(tmp_path, name="csv"), "BRK-B", None, dt.date(2020, 1, 3))
    assert list(prices.columns) == COLUMNS and dtypes(prices) == SCHEMA
    assert day_strings(prices) == ["2020-01-02", "2020-01-03"]


def test_build_source():
    assert isinstance(build_source("csv", folder=BUNDLED_SNAPSHOTS), CsvSource)
    assert build_source("csv", folder=BUNDLED_SNAPSHOTS).name == "csv"
    yahoo = build_source("yahoo", yahoo_symbols={"GSPC": "^GSPC"})
    assert isinstance(yahoo, YahooSource) and yahoo.symbols == {"GSPC": "^GSPC"}
    with pytest.raises(ValueError, match="needs a folder"):
        build_source("csv")
    with pytest.raises(ValueError, match="unknown source"):
        build_source("ftp", folder=BUNDLED_SNAPSHOTS)


# -- Yahoo through an injected downloader ---------------------------------------------------------


def yfinance_frame(days: list[str], closes: list[float]) -> pd.DataFrame:
    """What `yf.Ticker(...).history(auto_adjust=True)` returns: local-midnight tz-aware index named Date."""
    index = pd.DatetimeIndex(pd.to_datetime(days)).tz_localize("America/New_York")
    index.name = "Date"
    close = np.asarray(closes, dtype=float)
    return pd.DataFrame(
        {
            "Open": close - 0.5,
            "High": close + 1.0,
            "Low": close - 1.0,
            "Close": close,
            "Volume": np.arange(1, len(days) + 1, dtype=np.int64) * 1000,
            "Dividends": 0.0,
            "Stock Splits": 0.0,
        },
        index=index,
    )


class FakeDownloader:
    def __init__(self, answer: pd.DataFrame | BaseException):
        self.answer = answer
        self.calls: list[tuple[str, dt.date | None, dt.date]] = []

    def __call__(self, symbol, start, end_inclusive):
        self.calls.append((symbol, start, end_inclusive))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer.reset_index()


DST_DAYS = ["2017-11-02", "2017-11-03", "2017-11-06", "2017-11-07"]  # US clocks changed on 2017-11-05


def test_yahoo_frame_is_normalised():
    download = FakeDownloader(yfinance_frame(DST_DAYS, [84.05, 84.14, 84.47, 84.27]))
    prices = fetch(YahooSource({}, download=download), "MSFT", None, dt.date(2017, 11, 7))
    assert list(prices.columns) == COLUMNS and dtypes(prices) == SCHEMA
    assert prices["Date"].dt.tz is None
    assert day_strings(prices) == DST_DAYS
    assert prices["Close"].tolist() == [84.05, 84.14, 84.47, 84.27]
    assert prices["Volume"].tolist() == [1000, 2000, 3000, 4000]
    assert download.calls == [("MSFT", None, dt.date(2017, 11, 7))]


def test_yahoo_maps_index_symbols():
    download = FakeDownloader(yfinance_frame(DST_DAYS, [2580.0, 2587.8, 2591.1, 2590.6]))
    prices = fetch(YahooSource({"GSPC": "^GSPC"}, download=download), "GSPC", None, dt.date(2017, 11, 7))
    assert [call[0] for call in download.calls] == ["^GSPC"]
    assert len(prices) == 4


def test_yahoo_asks_from_the_day_after_since_and_windows_the_answer():
    # Providers may answer more than asked (Yahoo appends today's bar): the window still applies.
    download = FakeDownloader(yfinance_frame(["2017-11-03", *DST_DAYS[2:], "2017-11-08"], [1, 2, 3, 4]))
    prices = fetch(YahooSource({}, download=download), "MSFT", dt.date(2017, 11, 3), dt.date(2017, 11, 7))
    assert download.calls == [("MSFT", dt.date(2017, 11, 4), dt.date(2017, 11, 7))]
    assert day_strings(prices) == ["2017-11-06", "2017-11-07"]


def test_yahoo_up_to_date_store_does_not_download():
    download = FakeDownloader(RuntimeError("must not be called"))
    prices = fetch(YahooSource({}, download=download), "MSFT", dt.date(2017, 11, 7), dt.date(2017, 11, 7))
    assert prices.empty and list(prices.columns) == COLUMNS and dtypes(prices) == SCHEMA
    assert download.calls == []


def test_yahoo_empty_answer_is_an_empty_table():
    download = FakeDownloader(pd.DataFrame())
    prices = fetch(YahooSource({}, download=download), "MSFT", dt.date(2017, 11, 3), dt.date(2017, 11, 5))
    assert prices.empty and list(prices.columns) == COLUMNS


def test_yahoo_errors_name_the_ticker_and_keep_their_kind():
    transient = YahooSource({"GSPC": "^GSPC"}, download=FakeDownloader(TransientSourceError("HTTP 429")))
    with pytest.raises(TransientSourceError, match="^GSPC: HTTP 429"):
        fetch(transient, "GSPC", None, dt.date(2017, 11, 7))
    unknown = YahooSource({}, download=FakeDownloader(UnknownSymbol("delisted")))
    with pytest.raises(UnknownSymbol, match="^XYZ: delisted"):
        fetch(unknown, "XYZ", None, dt.date(2017, 11, 7))
    other = YahooSource({"GSPC": "^GSPC"}, download=FakeDownloader(KeyError("chart")))
    with pytest.raises(SourceError, match=r"GSPC: Yahoo download failed for \^GSPC: KeyError") as raised:
        fetch(other, "GSPC", None, dt.date(2017, 11, 7))
    assert not isinstance(raised.value, TransientSourceError)
    assert isinstance(raised.value.__cause__, KeyError)


def test_yahoo_refuses_an_invalid_ticker_before_downloading():
    download = FakeDownloader(yfinance_frame(DST_DAYS, [1, 2, 3, 4]))
    with pytest.raises(InvalidTicker):
        fetch(YahooSource({}, download=download), "^GSPC", None, dt.date(2017, 11, 7))
    assert download.calls == []


def test_importing_sources_and_the_yahoo_path_do_not_import_tensorflow():
    """yfinance issue 2528: importing TensorFlow before yfinance can crash; our source never imports it."""
    code = (
        "import datetime as dt, sys\n"
        "import pandas as pd\n"
        "import pipeline.data.sources as s\n"
        "assert 'tensorflow' not in sys.modules, 'import'\n"
        "assert 'yfinance' not in sys.modules, 'yfinance is imported lazily'\n"
        "frame = pd.DataFrame({'Date': pd.DatetimeIndex(['2017-11-06'], tz='America/New_York'),\n"
        "    'Open': [1.0], 'High': [1.0], 'Low': [1.0], 'Close': [1.0], 'Volume': [1],\n"
        "    'Dividends': [0.0], 'Stock Splits': [0.0]})\n"
        "source = s.YahooSource({'GSPC': '^GSPC'}, download=lambda *a: frame)\n"
        "out = source.receive('GSPC', None, dt.date(2017, 11, 6)).rows\n"
        "assert len(out) == 1\n"
        "assert 'tensorflow' not in sys.modules, 'yahoo path'\n"
        "import yfinance\n"
        "assert 'tensorflow' not in sys.modules, 'yfinance'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- yfinance's own parsing on a recorded-format v8 chart answer, intercepted at the HTTP layer ---

# Real MSFT bars (the bundled snapshot) around the 2017-11-05 DST change; Yahoo stamps a daily bar at the
# session's 09:30 open, 13:30 UTC under EDT and 14:30 UTC under EST.
CHART_BARS = [
    # date,       open,  high,   low,   close,  volume
    ("2017-11-01", 83.68, 83.76, 82.88, 83.18, 22307400),
    ("2017-11-02", 83.35, 84.46, 83.12, 84.05, 24534900),
    ("2017-11-03", 84.08, 84.54, 83.40, 84.14, 17633500),
    ("2017-11-06", 84.20, 84.70, 84.08, 84.47, 19852200),
    ("2017-11-07", 84.77, 84.90, 83.93, 84.27, 17927900),
]
ADJUSTMENT = 0.98  # a later dividend: Yahoo's adjclose sits below close, and auto_adjust scales OHLC by it


def chart_json(symbol: str) -> dict:
    stamps = [int(pd.Timestamp(f"{day} 09:30", tz="America/New_York").timestamp()) for day, *_ in CHART_BARS]
    column = {
        name: [bar[i] for bar in CHART_BARS] for i, name in enumerate(["open", "high", "low", "close", "volume"], 1)
    }
    return {
        "chart": {
            "error": None,
            "result": [
                {
                    "meta": {
                        "currency": "USD",
                        "symbol": symbol,
                        "exchangeName": "NMS",
                        "fullExchangeName": "NasdaqGS",
                        "instrumentType": "EQUITY",
                        "firstTradeDate": 511108200,
                        "regularMarketTime": stamps[-1] + 23400,
                        "hasPrePostMarketData": True,
                        "gmtoffset": -18000,
                        "timezone": "EST",
                        "exchangeTimezoneName": "America/New_York",
                        "regularMarketPrice": CHART_BARS[-1][4],
                        "chartPreviousClose": 83.18,
                        "priceHint": 2,
                        "dataGranularity": "1d",
                        "range": "",
                        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
                    },
                    "timestamp": stamps,
                    "indicators": {
                        "quote": [column],
                        "adjclose": [{"adjclose": [round(close * ADJUSTMENT, 6) for close in column["close"]]}],
                    },
                }
            ],
        }
    }


@pytest.fixture
def yahoo_http(monkeypatch, tmp_path):
    """Answer yfinance's curl_cffi requests: cookie and crumb endpoints, then the v8 chart for any symbol."""
    import curl_cffi.requests
    import yfinance as yf
    from curl_cffi.requests import Response
    from yfinance.data import YfData

    requests: list[tuple[str, dict]] = []

    def respond(url: str, status: int, body: str) -> Response:
        response = Response()
        response.url, response.status_code, response.content, response.encoding = url, status, body.encode(), "utf-8"
        return response

    def request(session, method, url, *args, params=None, **kwargs):
        requests.append((url, dict(params or {})))
        parsed = urlparse(url)
        if parsed.hostname == "fc.yahoo.com":
            return respond(url, 404, "")
        if parsed.path == "/v1/test/getcrumb":
            return respond(url, 200, "test-crumb")
        if parsed.path.startswith("/v8/finance/chart/"):
            return respond(url, 200, json.dumps(chart_json(parsed.path.rsplit("/", 1)[1])))
        return respond(url, 404, "")  # anything else: not found, never the network

    monkeypatch.setattr(curl_cffi.requests.Session, "request", request)
    yf.set_tz_cache_location(str(tmp_path / "yf-cache"))
    YfData.cache_get.cache_clear()  # no answer cached by an earlier test for the same URL
    yield requests
    YfData.cache_get.cache_clear()


def chart_requests(requests, path: str) -> list[dict]:
    return [params for url, params in requests if urlparse(url).path == path and "period1" in params]


def test_yfinance_parses_a_v8_chart_answer_into_the_store_schema(yahoo_http):
    prices = fetch(YahooSource({}), "MSFT", dt.date(2017, 10, 31), dt.date(2017, 11, 7))

    assert list(prices.columns) == COLUMNS and dtypes(prices) == SCHEMA
    assert prices["Date"].dt.tz is None
    assert day_strings(prices) == [bar[0] for bar in CHART_BARS], "exchange-local session dates across DST"
    closes = np.array([bar[4] for bar in CHART_BARS])
    assert prices["Close"].to_numpy() == pytest.approx(closes * ADJUSTMENT, rel=1e-4), "auto_adjust applied"
    assert prices["Open"].to_numpy() == pytest.approx(np.array([bar[1] for bar in CHART_BARS]) * ADJUSTMENT, rel=1e-4)
    assert prices["Volume"].tolist() == [bar[5] for bar in CHART_BARS]

    (params,) = chart_requests(yahoo_http, "/v8/finance/chart/MSFT")
    assert params["interval"] == "1d"
    assert int(params["period1"]) == int(pd.Timestamp("2017-11-01", tz="America/New_York").timestamp()), (
        "starts the day after `since`"
    )
    assert int(params["period2"]) == int(pd.Timestamp("2017-11-08", tz="America/New_York").timestamp()), (
        "`as_of` included: yfinance's end is exclusive"
    )


def test_yfinance_real_path_maps_index_symbols_and_hides_rows_after_as_of(yahoo_http):
    prices = fetch(YahooSource({"GSPC": "^GSPC"}), "GSPC", dt.date(2017, 11, 1), dt.date(2017, 11, 6))
    assert day_strings(prices) == ["2017-11-02", "2017-11-03", "2017-11-06"]
    assert chart_requests(yahoo_http, "/v8/finance/chart/^GSPC")
    assert not chart_requests(yahoo_http, "/v8/finance/chart/GSPC")


def test_yfinance_history_full_history_request(yahoo_http):
    raw = yfinance_history("MSFT", None, dt.date(2017, 11, 7))
    assert "Date" in raw.columns and str(raw["Date"].dt.tz) == "America/New_York"
    assert len(raw) == len(CHART_BARS)
    (params,) = chart_requests(yahoo_http, "/v8/finance/chart/MSFT")
    assert int(params["period1"]) < int(pd.Timestamp("1990-01-01").timestamp()), "period=max reaches back"


def test_rows_with_an_unreadable_date_reach_the_contract_instead_of_vanishing(tmp_path):
    prices = pd.read_csv(BUNDLED_SNAPSHOTS / "MSFT.csv").tail(5)
    prices.iloc[2, prices.columns.get_loc("Date")] = "2017-11-3x"
    prices.to_csv(tmp_path / "MSFT.csv", index=False)
    from pipeline.data.sources import CsvSource

    fetched = fetch(CsvSource(tmp_path), "MSFT", dt.date(2017, 11, 1), dt.date(2017, 11, 10))
    assert len(fetched) == 5 and fetched["Date"].isna().sum() == 1
