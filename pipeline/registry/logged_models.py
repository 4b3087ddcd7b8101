"""What a logged model is: the forecaster's data files behind a models-from-code pyfunc entry, so that
`mlflow.pyfunc.load_model` and `mlflow models serve` work without any pickle, with the requirements to rebuild its
environment. How it enters a run and the registry is the `Tracker`'s business."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import pandas as pd
from mlflow.entities import LoggedModel

from pipeline.models import model_files
from pipeline.models.forecasters import LSTM, Forecaster, to_model_input

MODEL_NAME_IN_RUN = "model"
# The tag holding the SHA-256 of every file of the model (on the logged model and each version), checked before
# each load.
MANIFEST_TAG = "model_files_sha256"
KIND_TAG = "model_kind"

# The models-from-code entry point MLflow runs for `mlflow.pyfunc.load_model` and `mlflow models serve`: the code
# is this installed package's, the model itself only data. Every model logged so far imports this path.
MODEL_CODE = '''"""stockpipe's model for MLflow pyfunc: loads the model's data with the installed stockpipe package."""
from mlflow.models import set_model

from pipeline.served_model import ServedModel

set_model(ServedModel())
'''


@dataclass(frozen=True)
class LoggedForecaster:
    model_id: str
    manifest: str
    kind: str
    artifact_location: str


def model_requirements(kind: str) -> list[str]:
    """Pinned requirements of a logged model: the served model imports this package and its libraries."""
    packages = ["mlflow", "pandas", "numpy", "scikit-learn", "exchange-calendars"]
    if kind == LSTM:
        packages += ["tensorflow-cpu", "keras"]
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={installed_version(package)}")
        except Exception:
            continue
    return pins


def save_pyfunc(
    folder: Path, forecaster: Forecaster, history: pd.DataFrame, min_input_rows: int, model: LoggedModel, run_id: str
) -> Path:
    """The forecaster as the pyfunc model `model` of run `run_id`, written under `folder`; returns its directory."""
    import mlflow.pyfunc
    from mlflow.models import Model, infer_signature

    data = model_files.save(forecaster, folder / "data")
    code = folder / "stockpipe_model.py"
    code.write_text(MODEL_CODE)
    example = to_model_input(history.tail(min_input_rows + 4))
    local = folder / "model"
    mlflow.pyfunc.save_model(
        path=str(local),
        python_model=str(code),
        artifacts={role: str(path) for role, path in data.items()},
        signature=infer_signature(example, forecaster.predict(example).tail(1).reset_index(drop=True)),
        input_example=example,
        pip_requirements=model_requirements(forecaster.kind),
        metadata={KIND_TAG: forecaster.kind, "min_input_rows": min_input_rows},
        mlflow_model=Model(
            artifact_path=model.artifact_location,
            model_uuid=model.model_id,
            run_id=run_id,
            model_id=model.model_id,
        ),
    )
    return local
