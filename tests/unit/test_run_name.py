"""The daily flow run's name: what the run is about, short enough for Prefect's runs list at any ticker count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flows import daily


@pytest.mark.parametrize(
    ("parameters", "name"),
    [
        ({"as_of": "2017-11-10", "tickers": ["MSFT"]}, "daily 2017-11-10 MSFT"),
        ({"tickers": ["MSFT", "GSPC"]}, "daily latest MSFT,GSPC"),
        ({}, "daily latest default tickers"),
        (
            {"as_of": "2017-11-10", "tickers": [f"SYN{i:03d}" for i in range(1, 65)]},
            "daily 2017-11-10 SYN001..SYN064 (64 tickers)",
        ),
    ],
)
def test_a_run_is_named_after_its_day_and_tickers(monkeypatch, parameters, name):
    monkeypatch.setattr(daily, "flow_run", SimpleNamespace(parameters=parameters))
    assert daily.daily_run_name() == name
