"""Small shared data for the source, store and validation tests: a real slice of the bundled MSFT history."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipeline.settings import BUNDLED_SNAPSHOTS, BUNDLED_SUITE
from pipeline.sources import CsvSource
from pipeline.validation import load_suite_definition

# The bundled MSFT history ends on this session.
MSFT_LAST_SESSION = dt.date(2017, 11, 10)
SLICE_ROWS = 300


@pytest.fixture(scope="session")
def _msft_slice() -> pd.DataFrame:
    prices = CsvSource(BUNDLED_SNAPSHOTS).fetch("MSFT", None, MSFT_LAST_SESSION)
    return prices.tail(SLICE_ROWS).reset_index(drop=True)


@pytest.fixture
def msft_slice(_msft_slice) -> pd.DataFrame:
    """The last 300 MSFT sessions in the store schema; each test gets its own copy to corrupt."""
    return _msft_slice.copy()


@pytest.fixture(scope="session")
def price_suite() -> dict:
    return load_suite_definition(BUNDLED_SUITE)
