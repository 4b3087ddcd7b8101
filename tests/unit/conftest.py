"""Small shared data for the source, store and validation tests: a real slice of the bundled MSFT history."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from pipeline.common.settings import BUNDLED_SNAPSHOTS, BUNDLED_SUITE
from pipeline.contract.inputs import load_suite_definition
from pipeline.data.sources import CsvSource
from tests.support import fetch

# The bundled MSFT history ends on this session.
MSFT_LAST_SESSION = dt.date(2017, 11, 10)
SLICE_ROWS = 300


@pytest.fixture(scope="session")
def _msft_slice() -> pd.DataFrame:
    prices = fetch(CsvSource(BUNDLED_SNAPSHOTS), "MSFT", None, MSFT_LAST_SESSION)
    return prices.tail(SLICE_ROWS).reset_index(drop=True)


@pytest.fixture
def msft_slice(_msft_slice) -> pd.DataFrame:
    """The last 300 MSFT sessions in the store schema; each test gets its own copy to corrupt."""
    return _msft_slice.copy()


@pytest.fixture(scope="session")
def price_suite() -> dict:
    return load_suite_definition(BUNDLED_SUITE)
