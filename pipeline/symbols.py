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
            f"invalid ticker {ticker!r}: use 1-15 upper-case letters or digits, "
            "with '.' or '-' only inside (e.g. MSFT, BRK-B)"
        )
    return ticker


def registered_model_name(ticker: str) -> str:
    return f"stockpipe-{validate_ticker(ticker)}"


# For typed interfaces (flow parameters, settings): the same rule, visible in JSON schemas so servers can refuse early.
Ticker = Annotated[str, StringConstraints(pattern=TICKER_PATTERN.pattern)]
