"""Yahoo's servers, replaced at the HTTP layer: yfinance's own curl_cffi session gets recorded answers.

Everything above the HTTP call (yfinance's cookie and crumb dance, its JSON parsing, time zones,
adjustment, our adapter) runs for real; only the network is swapped out, because Yahoo cannot be reached.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

RECORDED = Path(__file__).resolve().parent / "data" / "yahoo"
CHART_PATH = re.compile(r"^/v8/finance/chart/(?P<symbol>[^/]+)$")


@dataclass
class FakeYahoo:
    """Routes yfinance's requests: chart answers per symbol; a status code or an exception to simulate failures."""

    charts: dict[str, object] = field(default_factory=dict)
    requests: list[tuple[str, dict]] = field(default_factory=list)

    def answer(self, symbol: str, recorded: str | int | BaseException) -> None:
        """`recorded`: a file name under tests/data/yahoo, an HTTP status, or an exception to raise."""
        self.charts[symbol] = recorded

    def chart_requests(self, symbol: str) -> list[dict]:
        return [params for url, params in self.requests if urlparse(url).path == f"/v8/finance/chart/{symbol}"]

    def __call__(self, session, method, url, params=None, **kwargs):
        self.requests.append((url, dict(params or {})))
        parsed = urlparse(url)
        match = CHART_PATH.match(parsed.path)
        if parsed.hostname == "fc.yahoo.com":
            return _response(url, 404, "")  # Yahoo's cookie endpoint answers 404 and sets a cookie; none needed here
        if parsed.path == "/v1/test/getcrumb":
            return _response(url, 200, "recorded-crumb")
        # When a chart has no time zone, yfinance looks the symbol up in these; only unknown symbols get there.
        if parsed.path.startswith("/v10/finance/quoteSummary/"):
            return _response(url, 404, (RECORDED / "unknown_symbol_quote_summary.json").read_text())
        if parsed.path == "/v7/finance/quote":
            return _response(url, 200, (RECORDED / "unknown_symbol_quote.json").read_text())
        if "/fundamentals-timeseries/" in parsed.path:
            return _response(url, 200, (RECORDED / "unknown_symbol_timeseries.json").read_text())
        if not match:
            return _response(url, 404, "")
        recorded = self.charts.get(match["symbol"], "unknown_symbol.json")
        if isinstance(recorded, BaseException):
            raise recorded
        if isinstance(recorded, int):
            return _response(url, recorded, "Too Many Requests" if recorded == 429 else "")
        body = json.loads((RECORDED / recorded).read_text())
        status = 404 if body["chart"]["error"] else 200
        return _response(url, status, json.dumps(body))


def _response(url: str, status: int, text: str):
    from curl_cffi.requests import Response

    response = Response()
    response.url = url
    response.status_code = status
    response.content = text.encode()
    response.encoding = "utf-8"
    return response


def install(monkeypatch, cache_dir: Path) -> FakeYahoo:
    """Patch curl_cffi's Session.request and give yfinance fresh caches, so no answer leaks between tests."""
    import curl_cffi.requests
    import yfinance as yf
    from yfinance.data import YfData

    fake = FakeYahoo()

    def request(session, method, url, *args, **kwargs):
        return fake(session, method, url, **kwargs)

    monkeypatch.setattr(curl_cffi.requests.Session, "request", request)
    yf.set_tz_cache_location(str(cache_dir))
    YfData.cache_get.cache_clear()
    return fake
