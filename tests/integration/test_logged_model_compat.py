"""Champions already in someone's registry keep loading: a naive and a tiny LSTM model folder logged by an earlier
main (tests/data/logged_models/, made by make_fixture.py there) still pass their recorded digests, still load
through `mlflow.pyfunc` (their stockpipe_model.py imports `pipeline.served_model`, so that import path must stay)
and still forecast what they forecast when they were logged."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
import pytest

from pipeline.models import model_files
from pipeline.models.forecasters import to_model_input
from tests.support import MSFT_LAST_SESSION, PROJECT_ROOT, bundled

LOGGED = PROJECT_ROOT / "tests" / "data" / "logged_models"
KINDS = ("naive", "lstm")


@pytest.fixture(autouse=True)
def _no_unpickling(monkeypatch):
    # A model that needed pickle to load would fail here instead of quietly running code from the store.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")


def expected(kind: str) -> dict:
    return json.loads((LOGGED / f"{kind}.expected.json").read_text())


def copied(kind: str, tmp_path: Path) -> Path:
    """A copy, so nothing a load writes can change the committed fixture."""
    folder = tmp_path / kind
    shutil.copytree(LOGGED / kind, folder)
    return folder


def model_input(kind: str) -> pd.DataFrame:
    recorded = expected(kind)
    history = bundled("MSFT", None, MSFT_LAST_SESSION)
    assert str(history["Date"].iloc[-1].date()) == recorded["input_last_date"]
    return to_model_input(history.tail(recorded["input_tail_sessions"]))


def records(forecast: pd.DataFrame) -> list[dict]:
    rows = forecast.tail(5).to_dict("records")
    return [{k: v.date().isoformat() if isinstance(v, pd.Timestamp) else v for k, v in row.items()} for row in rows]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def assert_same_rows(actual: list[dict], wanted: list[dict]) -> None:
    assert len(actual) == len(wanted)
    for got, want in zip(actual, wanted, strict=True):
        assert set(got) == set(want), (sorted(got), sorted(want))
        for key, value in want.items():
            if _missing(value):
                assert _missing(got[key]), (key, got[key])
            elif isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-9), (key, got, want)
            else:
                assert got[key] == value, (key, got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_a_logged_champion_still_passes_its_recorded_digests(kind, tmp_path):
    folder = copied(kind, tmp_path)
    model_files.verify(folder, expected(kind)["manifest"], f"the logged {kind} champion")


@pytest.mark.parametrize("kind", KINDS)
def test_a_logged_champion_still_loads_through_mlflow_and_forecasts_the_same(kind, tmp_path):
    folder = copied(kind, tmp_path)
    model_files.verify(folder, expected(kind)["manifest"], f"the logged {kind} champion")
    model = mlflow.pyfunc.load_model(str(folder))
    assert model.metadata.metadata["model_kind"] == kind
    assert_same_rows(records(model.predict(model_input(kind))), expected(kind)["forecast"])


def test_a_logged_lstm_still_loads_as_data(tmp_path):
    forecaster = model_files.load(copied("lstm", tmp_path) / "artifacts")
    assert_same_rows(records(forecaster.predict(model_input("lstm"))), expected("lstm")["forecast"])
