"""Ticker symbols are the only user input that reaches file paths and MLflow model names."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from pipeline.common.symbols import InvalidTicker, Ticker, registered_model_name, validate_ticker


@pytest.mark.parametrize("ticker", ["MSFT", "GSPC", "A", "BRK-B", "RDS.A", "7203", "X1", "A" * 15])
def test_valid_tickers_are_returned_unchanged(ticker):
    assert validate_ticker(ticker) == ticker


@pytest.mark.parametrize(
    "ticker",
    [
        "../x",  # climbs out of the store folder
        "..",
        "a/b",
        "A/B",
        "MSFT/../../etc",
        "C:\\x",
        "",
        "msft",  # lower case is refused, not silently upper-cased
        "Msft",
        "A" * 16,  # too long
        "-MSFT",  # separators only inside
        "MSFT.",
        ".MSFT",
        "^GSPC",  # Yahoo's spelling is mapped by the source, never used as our name
        "MS FT",
        "MSFT\n",
        "MSFT\x00",
    ],
)
def test_unsafe_or_malformed_tickers_are_refused(ticker):
    with pytest.raises(ValueError, match="invalid ticker") as raised:
        validate_ticker(ticker)
    assert isinstance(raised.value, InvalidTicker)
    assert repr(ticker) in str(raised.value), "the message quotes what was refused"


@pytest.mark.parametrize("value", [None, 42, b"MSFT", ["MSFT"]])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidTicker):
        validate_ticker(value)


def test_lowercase_is_not_normalised():
    with pytest.raises(InvalidTicker, match="upper-case"):
        validate_ticker("brk-b")


def test_registered_model_name():
    assert registered_model_name("MSFT") == "stockpipe-MSFT"
    assert registered_model_name("BRK-B") == "stockpipe-BRK-B"


def test_registered_model_name_refuses_an_invalid_ticker():
    with pytest.raises(InvalidTicker):
        registered_model_name("../MSFT")


class _Params(BaseModel):
    ticker: Ticker


def test_typed_ticker_applies_the_same_rule_in_pydantic_models():
    assert _Params(ticker="BRK-B").ticker == "BRK-B"
    for bad in ("../x", "msft", "", "A" * 16):
        with pytest.raises(ValidationError):
            _Params(ticker=bad)
    assert "pattern" in _Params.model_json_schema()["properties"]["ticker"]
