"""Hand-made champions planted in the registry, the way an earlier promotion would have left them."""

from __future__ import annotations

import mlflow
import pandas as pd

from pipeline.promotion import CHAMPION_ALIAS
from pipeline.store import PriceStore
from pipeline.symbols import registered_model_name
from pipeline.tracking import Tracker


class BiasedForecaster(mlflow.pyfunc.PythonModel):
    """A deliberately bad champion: always 5% above the last close."""

    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)
        return pd.DataFrame({"as_of": frame["Date"].astype(str), "forecast_close": frame["Close"] * 1.05})


class OracleForecaster(mlflow.pyfunc.PythonModel):
    """A champion no honest model can beat: it memorised the real next closes."""

    def __init__(self, next_close: dict[str, float]):
        self.next_close = next_close

    def predict(self, context, model_input, params=None):
        frame = pd.DataFrame(model_input)
        dates = frame["Date"].astype(str)
        return pd.DataFrame({"as_of": dates, "forecast_close": [self.next_close.get(d, c) for d, c in zip(dates, frame["Close"])]})


def install_champion(settings, ticker: str, python_model, kind: str) -> str:
    """Register a hand-made model as the ticker's champion, the way an earlier promotion would have."""
    tracker = Tracker(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    history = PriceStore(settings.store_dir, settings.locks_dir).read(ticker)
    tracker.ensure_baseline(ticker, history, {})
    run_id = tracker.start_run(f"{ticker} planted {kind}", {"ticker": ticker})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=python_model)
    tracker.end_run(run_id)
    version = tracker.client.create_model_version(registered_model_name(ticker), info.model_uri, run_id, tags={"model_kind": kind})
    tracker.client.set_registered_model_alias(registered_model_name(ticker), CHAMPION_ALIAS, version.version)
    return str(version.version)
