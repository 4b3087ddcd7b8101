"""The MLflow pyfunc face of every stockpipe model, for users who load it with `mlflow.pyfunc.load_model` or serve
it with `mlflow models serve`. The model is data (`spec.json`, `model.keras`); this installed class is its code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.models import model_files


class ServedModel(PythonModel):
    def load_context(self, context: Any) -> None:
        self._forecaster = model_files.load(Path(context.artifacts["spec"]).parent)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self._forecaster.predict(model_input)
