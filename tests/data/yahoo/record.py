"""Builds the recorded Yahoo v8 chart answers in this folder from the bundled MSFT prices.

Yahoo cannot be reached from CI, so these files stand in for its answers, written to the documented
`/v8/finance/chart/{symbol}` format: `chart.result[0]` with `meta`, `timestamp` (each session's open,
09:30 New York, in epoch seconds) and `indicators.quote[0]` / `indicators.adjclose[0]`.
Regenerate with `python tests/data/yahoo/record.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE.parents[2] / "data" / "snapshots" / "MSFT.csv"
NEW_YORK = "America/New_York"


def session_open(day: str) -> int:
    return int(pd.Timestamp(f"{day} 09:30", tz=NEW_YORK).timestamp())


def meta(symbol: str, rows: pd.DataFrame | None) -> dict:
    last = rows.iloc[-1] if rows is not None and len(rows) else None
    return {
        "currency": "USD", "symbol": symbol, "exchangeName": "NMS", "fullExchangeName": "NasdaqGS",
        "instrumentType": "EQUITY", "firstTradeDate": 511108200, "hasPrePostMarketData": True,
        "gmtoffset": -18000, "timezone": "EST", "exchangeTimezoneName": NEW_YORK,
        "regularMarketTime": session_open(last["Date"]) + 23400 if last is not None else 1510340400,
        "regularMarketPrice": float(last["Close"]) if last is not None else 83.87,
        "chartPreviousClose": float(rows.iloc[0]["Open"]) if last is not None else 83.87,
        "priceHint": 2, "dataGranularity": "1d", "range": "",
        "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
    }


def chart(symbol: str, rows: pd.DataFrame, splits: dict | None = None) -> dict:
    result = {
        "meta": meta(symbol, rows),
        "timestamp": [session_open(d) for d in rows["Date"]],
        "indicators": {
            "quote": [{k.lower(): [float(v) if k != "Volume" else int(v) for v in rows[k]]
                       for k in ("Open", "High", "Low", "Close", "Volume")}],
            "adjclose": [{"adjclose": [float(v) for v in rows["Close"]]}],
        },
    }
    if splits:
        result["events"] = {"splits": splits}
    return {"chart": {"result": [result], "error": None}}


def empty_chart(symbol: str) -> dict:
    """What Yahoo answers for a range with no session in it (a weekend): meta, no timestamps, an empty quote."""
    return {"chart": {"result": [{"meta": meta(symbol, None), "indicators": {"quote": [{}], "adjclose": [{}]}}],
                      "error": None}}


def unknown_symbol() -> dict:
    return {"chart": {"result": None, "error": {"code": "Not Found", "description": "No data found, symbol may be delisted"}}}


def unknown_quote_summary(symbol: str) -> dict:
    """yfinance asks quoteSummary for a time zone when the chart has none."""
    return {"quoteSummary": {"result": None, "error": {"code": "Not Found",
                                                       "description": f"Quote not found for symbol: {symbol}"}}}


def main() -> None:
    prices = pd.read_csv(SNAPSHOT)
    november = prices[(prices["Date"] >= "2017-10-25") & (prices["Date"] <= "2017-11-10")].reset_index(drop=True)
    answers = {
        "msft_2017-10-25_2017-11-10.json": chart("MSFT", november),
        # The same days after a 2:1 split: Yahoo re-adjusts the whole history, halving every past price.
        "msft_split_2017-10-25_2017-11-10.json": chart(
            "MSFT",
            november.assign(**{c: november[c] / 2 for c in ("Open", "High", "Low", "Close")},
                            Volume=november["Volume"] * 2),
            splits={str(session_open("2017-11-10")): {"date": session_open("2017-11-10"), "numerator": 2,
                                                       "denominator": 1, "splitRatio": "2:1"}},
        ),
        "msft_empty_weekend.json": empty_chart("MSFT"),
        "unknown_symbol.json": unknown_symbol(),
        "unknown_symbol_quote_summary.json": unknown_quote_summary("NOSUCH"),
        "unknown_symbol_quote.json": {"quoteResponse": {"result": [], "error": None}},
        "unknown_symbol_timeseries.json": {"timeseries": {"result": [], "error": None}},
    }
    for name, body in answers.items():
        (HERE / name).write_text(json.dumps(body, indent=1) + "\n")


if __name__ == "__main__":
    main()
