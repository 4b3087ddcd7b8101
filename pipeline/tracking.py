"""MLflow: runs, the per-ticker registered model, the naive baseline and the `champion` alias."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import requests
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException, RestException
from mlflow.models import infer_signature

from pipeline.forecasters import (
    KERAS_ARTIFACT,
    LSTM,
    NAIVE,
    PREPROCESSING_ARTIFACT,
    LstmForecaster,
    NaiveForecaster,
    to_model_input,
)
from pipeline.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS
from pipeline.symbols import registered_model_name

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
PIPELINE_PACKAGE = Path(__file__).resolve().parent


def model_requirements(kind: str) -> list[str]:
    """Pinned requirements for a logged model; explicit, because MLflow's inference loads the model twice."""
    packages = ["mlflow", "pandas", "numpy", "scipy", "scikit-learn", "pyarrow", "pydantic", "pydantic-settings", "filelock"]
    if kind == LSTM:
        packages += ["tensorflow-cpu", "keras"]
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={installed_version(package)}")
        except Exception:  # noqa: BLE001 - a missing optional package is simply not pinned
            continue
    return pins


def _sqlite_init_lock(tracking_uri: str):
    """Two processes creating one fresh SQLite store race through MLflow's schema migrations; take turns.

    A tracking server serialises this itself, so only a local SQLite file needs the lock.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".init.lock")


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached (refused, reset, timed out, or 5xx after MLflow's own retries).

    Waiting may help, so the flow retries on this and on nothing else from tracking.
    """


def unreachable_reason(exc: BaseException) -> str | None:
    """A short reason when `exc`, or anything in its chain, says the server could not be reached; None otherwise.

    MLflow re-raises transport errors as MlflowException with the original only in `__context__`.
    """
    transport = (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                 requests.exceptions.ChunkedEncodingError)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, transport):
            text = str(current)
            if errno := re.search(r"\[Errno -?\d+\] ([^'\")]+)", text):
                return errno.group(1).strip()
            if statuses := re.search(r"too many \d{3} error responses", text):
                return statuses.group(0)
            return type(current).__name__
        current = current.__cause__ or current.__context__
    return None


@contextmanager
def tracking_errors(tracking_uri: str, doing: str):
    """Turn a lost tracking server, however MLflow reports it, into one clear TrackingUnavailable."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        reason = unreachable_reason(exc)
        if reason is None:
            raise
        raise TrackingUnavailable(f"MLflow tracking server {tracking_uri} unreachable while {doing}: {reason}") from exc


@dataclass(frozen=True)
class Champion:
    version: str
    kind: str
    model_uri: str


class Tracker:
    """One experiment for all tickers, one registered model per ticker."""

    def __init__(self, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        # The fluent API (log_model) reads the process-wide URI; every Tracker in a process shares one store.
        mlflow.set_tracking_uri(tracking_uri)
        with _sqlite_init_lock(tracking_uri):
            # Creating the client opens the store, which is when a fresh SQLite file gets its schema.
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is None:
                location = artifact_root.resolve().as_uri() if artifact_root and self._is_local() else None
                try:
                    self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=location)
                except MlflowException:  # created by a concurrent run on a server in the meantime
                    self.experiment_id = self.client.get_experiment_by_name(experiment_name).experiment_id
            else:
                self.experiment_id = experiment.experiment_id

    def run_url(self, run_id: str, local_ui: str = "http://127.0.0.1:5000") -> str:
        """Where a person opens the run: the tracking server itself, or `stockpipe ui` for a local store."""
        base = self.tracking_uri.rstrip("/") if self.tracking_uri.startswith(("http://", "https://")) else local_ui
        return f"{base}/#/experiments/{self.experiment_id}/runs/{run_id}"

    def _is_local(self) -> bool:
        return self.tracking_uri.startswith(("sqlite:", "file:", "/")) or "://" not in self.tracking_uri

    # -- registry -----------------------------------------------------------------------------

    def champion(self, ticker: str) -> Champion | None:
        name = registered_model_name(ticker)
        try:
            version = self.client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except (RestException, MlflowException):
            return None
        return Champion(str(version.version), version.tags.get("model_kind", "unknown"), f"models:/{name}@{CHAMPION_ALIAS}")

    def ensure_baseline(self, ticker: str, history: pd.DataFrame, tags: dict[str, str]) -> Champion:
        """Register the naive persistence forecaster as version 1 and champion of a new ticker."""
        existing = self.champion(ticker)
        if existing is not None:
            return existing
        name = registered_model_name(ticker)
        try:
            self.client.create_registered_model(
                name,
                tags={"ticker": ticker},
                description=f"Next-session close forecasts for {ticker}. Alias `champion` serves.",
            )
        except MlflowException as exc:
            if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
        data_end = history["Date"].max().strftime("%Y-%m-%d")
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{ticker} baseline",
            tags={**tags, "ticker": ticker, "model_kind": NAIVE, "role": "baseline", "data_end": data_end},
        )
        run_id = run.info.run_id
        try:
            with mlflow.start_run(run_id=run_id):
                info = self._log_pyfunc(NaiveForecaster(), history, NAIVE, artifacts=None)
            version = self._register(
                ticker, info.model_uri, run_id, {"model_kind": NAIVE, "decision": "baseline", "data_end": data_end},
                info.model_id,
            )
            self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version.version)
            self.client.set_terminated(run_id, "FINISHED")
        except BaseException:
            self.client.set_terminated(run_id, "FAILED")
            raise
        log.info("%s: registered the naive forecaster as %s v%s (champion)", ticker, name, version.version)
        return Champion(str(version.version), NAIVE, f"models:/{name}@{CHAMPION_ALIAS}")

    def _register(self, ticker: str, model_uri: str, run_id: str, tags: dict[str, str],
                  model_id: str | None = None) -> ModelVersion:
        # Tags go in with the version so there is never a version without its decision. A tracking server
        # refuses a `models:/m-...` source unless the logged model's id comes with it.
        return self.client.create_model_version(
            registered_model_name(ticker), source=model_uri, run_id=run_id, tags={k: str(v) for k, v in tags.items()},
            model_id=model_id,
        )

    def register_challenger(self, ticker: str, run_id: str, model_uri: str, tags: dict[str, Any],
                            model_id: str | None = None) -> ModelVersion:
        return self._register(ticker, model_uri, run_id, {**tags, "model_kind": LSTM}, model_id)

    def promote(self, ticker: str, version: str) -> None:
        name = registered_model_name(ticker)
        current = self.champion(ticker)
        if current is not None:
            self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, current.version)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, version)

    def rollback(self, ticker: str, reason: str) -> tuple[str, str]:
        """Move `champion` back to the `previous` version; the demoted one becomes `previous` (so it can be undone)."""
        name = registered_model_name(ticker)
        current = self.champion(ticker)
        if current is None:
            raise LookupError(f"{ticker}: no champion registered under {name}; nothing to roll back")
        try:
            target = self.client.get_model_version_by_alias(name, PREVIOUS_ALIAS)
        except (RestException, MlflowException):
            raise LookupError(f"{ticker}: {name} has no `{PREVIOUS_ALIAS}` version to roll back to") from None
        demoted, restored = current.version, str(target.version)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, restored)
        self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, demoted)
        self.client.set_model_version_tag(name, demoted, "rolled_back", reason)
        self.client.set_model_version_tag(name, restored, "restored_by_rollback_from", f"v{demoted}")
        self.client.set_registered_model_tag(name, "last_rollback", f"v{demoted} -> v{restored}: {reason}")
        log.info("%s: rolled back %s from v%s to v%s (%s)", ticker, name, demoted, restored, reason)
        return demoted, restored

    def champion_data_end(self, ticker: str) -> dt.date | None:
        """The last price date the champion was built on, from its version's tags."""
        champion = self.champion(ticker)
        if champion is None:
            return None
        tag = self.champion_version(ticker).tags.get("data_end")
        return dt.date.fromisoformat(tag) if tag else None

    def champion_version(self, ticker: str) -> ModelVersion:
        return self.client.get_model_version_by_alias(registered_model_name(ticker), CHAMPION_ALIAS)

    def version_of_run(self, ticker: str, run_id: str) -> ModelVersion | None:
        """The version registered from a run, if any (a run registers at most one)."""
        found = self.client.search_model_versions(f"name = '{registered_model_name(ticker)}' and run_id = '{run_id}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    def tag_version(self, ticker: str, version: str | int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(registered_model_name(ticker), str(version), key, value)

    def load(self, model_uri: str):
        return mlflow.pyfunc.load_model(model_uri)

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], history: dict[str, list[float]] | None = None) -> None:
        from mlflow.entities import Metric
        import time

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, values in (history or {}).items():
            entries += [Metric(f"epoch_{key}", float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(entries), 900):  # stay under the server's 1000-metric batch limit
            self.client.log_batch(run_id, metrics=entries[start : start + 900])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_json(self, run_id: str, payload: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, payload, artifact_file)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_dataset(self, run_id: str, history: pd.DataFrame, name: str, source: str, digest: str) -> None:
        dataset = mlflow.data.from_pandas(history, source=source, name=name, digest=digest)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_input(dataset, context="training")

    def log_lstm(self, run_id: str, forecaster: LstmForecaster, keras_model, preprocessing: dict, history: pd.DataFrame):
        with tempfile.TemporaryDirectory() as tmp:
            keras_path = Path(tmp) / "model.keras"
            keras_model.save(keras_path)
            spec_path = Path(tmp) / "preprocessing.json"
            spec_path.write_text(json.dumps(preprocessing, indent=2))
            with mlflow.start_run(run_id=run_id):
                return self._log_pyfunc(
                    forecaster,
                    history,
                    LSTM,
                    artifacts={KERAS_ARTIFACT: str(keras_path), PREPROCESSING_ARTIFACT: str(spec_path)},
                    example_rows=preprocessing["window"] + 5,
                    min_input_rows=preprocessing["window"] + 1,
                )

    def _log_pyfunc(self, python_model, history: pd.DataFrame, kind: str, artifacts, example_rows: int = 5,
                    min_input_rows: int = 1):
        example = to_model_input(history.tail(example_rows))
        output = pd.DataFrame({"as_of": ["2000-01-03"], "forecast_close": [1.0]})
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=python_model,
            artifacts=artifacts,
            code_paths=[str(PIPELINE_PACKAGE)],
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=model_requirements(kind),
            tags={"model_kind": kind},
            # Serving reads this to send enough history; the model itself ignores extra rows.
            metadata={"model_kind": kind, "min_input_rows": min_input_rows},
        )

    # -- queries --------------------------------------------------------------------------------

    def challenger_run(self, ticker: str, challenger_id: str) -> Run | None:
        """The run that tracks one trained challenger, whatever its status: the key that makes tracking resumable."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.ticker = '{ticker}' and tags.challenger_id = '{challenger_id}'",
            order_by=["attributes.start_time ASC"],
        )
        return runs[0] if runs else None

    def last_run(self, ticker: str):
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.ticker = '{ticker}' and tags.role = 'daily'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None
