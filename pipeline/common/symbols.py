"""Ticker symbols are checked against a strict pattern before they touch a path or a model name."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

# Upper-case letters and digits with '.' or '-' inside (BRK-B, RDS.A); nothing that can climb a path.
TICKER_PATTERN = re.compile(r"^[A-Z0-9](?:[A-Z0-9.\-]{0,13}[A-Z0-9])?$")


class InvalidTicker(ValueError):
    pass


def validate_ticker(ticker: str) -> str:
    if not isinstance(ticker, str) or not TICKER_PATTERN.fullmatch(ticker):
        raise InvalidTicker(
            f"invalid ticker {str(ticker)[:40]!r}: use 1-15 upper-case letters or digits, "
            "with '.' or '-' only inside (e.g. MSFT, BRK-B)"
        )
    return ticker


# What a person may type: the same symbols in any ASCII case. Checked on the raw text, before case folding, because
# Unicode folding turns other characters into valid ones ("ﬀ".upper() == "FF", the Kelvin sign folds to "K").
TYPED_TICKER_PATTERN = re.compile(TICKER_PATTERN.pattern, re.IGNORECASE | re.ASCII)


def parse_ticker(typed: str) -> str:
    """A ticker as typed on a command line, checked as typed, then upper-cased."""
    if not isinstance(typed, str) or not TYPED_TICKER_PATTERN.fullmatch(typed):
        raise InvalidTicker(
            f"invalid ticker {typed[:40]!r}: use 1-15 letters or digits, with '.' or '-' only inside (e.g. MSFT, BRK-B)"
            if isinstance(typed, str)
            else f"invalid ticker of type {type(typed).__name__}"
        )
    return validate_ticker(typed.upper())


# The start of every ticker's registered model name, by which the registry's tickers are found.
MODEL_PREFIX = "stockpipe-"


def registered_model_name(ticker: str) -> str:
    return f"{MODEL_PREFIX}{validate_ticker(ticker)}"


# For typed interfaces (flow parameters, settings): the same rule, visible in JSON schemas so servers can refuse early.
Ticker = Annotated[str, StringConstraints(pattern=TICKER_PATTERN.pattern)]
