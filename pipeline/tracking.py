"""MLflow I/O: the experiment's runs, logged models, the per-ticker registered model and its aliases.

The `Tracker` is built around an injected `MlflowClient`; it never changes process-wide MLflow state. Only MLflow's
not-found error means "absent": every other error (a 503, a lost connection) propagates, so that a transient failure
is retried instead of being mistaken for "no champion".
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from pipeline import model_files
from pipeline.forecasters import LSTM, NAIVE, Forecaster, to_model_input
from pipeline.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS
from pipeline.redact import excerpt, masked_uri
from pipeline.symbols import registered_model_name

log = logging.getLogger(__name__)

MODEL_NAME_IN_RUN = "model"
# The model version tag holding the SHA-256 of every file of the model, checked before each load.
MANIFEST_TAG = "model_files_sha256"
KIND_TAG = "model_kind"
# MLflow's own tag for a run's description, which its UI renders as Markdown.
DESCRIPTION_TAG = "mlflow.note.content"
# MLflow 3 opens experiments in its GenAI view unless told they hold classic model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"
# MLflow's limit on one request's batch of metrics.
METRICS_PER_BATCH = 900

# The models-from-code entry point MLflow runs for `mlflow.pyfunc.load_model` and `mlflow models serve`: the code
# is this installed package's, the model itself only data.
MODEL_CODE = '''"""stockpipe's model for MLflow pyfunc: loads the model's data with the installed stockpipe package."""
from mlflow.models import set_model

from pipeline.served_model import ServedModel

set_model(ServedModel())
'''


def _error_code(exc: MlflowException) -> str:
    code = getattr(exc, "error_code", None)
    return code if isinstance(code, str) else ErrorCode.Name(code) if isinstance(code, int) else ""


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and _error_code(exc) == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def is_already_there(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and _error_code(exc) == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached (refused, reset, timed out, or 5xx after MLflow's own retries).

    Waiting may help, so the flow retries on this and on nothing else from tracking.
    """


def unreachable_reason(exc: BaseException) -> str | None:
    """A short reason when `exc`, or anything in its chain, says the server could not be reached; None otherwise.

    MLflow re-raises transport errors (refused, reset, timed out, retries exhausted on 5xx answers) as an
    MlflowException that keeps the original in its chain; a server that answered "unavailable" is reported with
    that error code.
    """
    import requests

    transport = (
        ConnectionError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
    )
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, transport):
            return _transport_reason(link)
    for link in chain:
        if isinstance(link, MlflowException) and _error_code(link) in UNAVAILABLE_CODES:
            return _error_code(link)
    return None


# What a server says when it is there but cannot serve right now (a restart, maintenance, an overloaded proxy).
UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE")


def _chain(exc: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in links):
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _transport_reason(exc: BaseException) -> str:
    """The innermost OS-level cause (e.g. 'Connection refused'), else the exception's type."""
    import requests

    if isinstance(exc, requests.exceptions.RetryError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return f"retries exhausted ({type(reason).__name__ if reason else 'RetryError'})"
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        nested = current.args[0] if getattr(current, "args", None) else None
        current = getattr(nested, "reason", None) or current.__cause__ or current.__context__
    return type(exc).__name__


@contextmanager
def tracking_errors(tracking_uri: str, doing: str) -> Iterator[None]:
    """Turn a lost tracking server, however MLflow reports it, into one clear TrackingUnavailable."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        reason = unreachable_reason(exc)
        if reason is None:
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server {masked_uri(tracking_uri)} unreachable while {doing}: {reason}"
        ) from exc


def _sqlite_init_lock(tracking_uri: str):
    """Two processes creating one fresh SQLite store race through MLflow's schema migrations; take turns.

    A tracking server serialises this itself, so only a local SQLite file needs the lock.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".init.lock")


def open_client(tracking_uri: str) -> MlflowClient:
    with _sqlite_init_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        # Opening the store is what migrates a fresh SQLite schema: do it while holding the lock.
        client.search_experiments(max_results=1)
    return client


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


@dataclass(frozen=True)
class Champion:
    version: str
    kind: str
    model_uri: str
    data_end: str | None
    manifest: str | None
    run_id: str | None


@dataclass(frozen=True)
class LoggedForecaster:
    model_id: str
    manifest: str
    kind: str
    artifact_location: str


class Tracker:
    """One experiment for all tickers, one registered model per ticker."""

    def __init__(self, client: MlflowClient, experiment_id: str, tracking_uri: str, ui_url: str | None = None):
        self.client = client
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url

    @classmethod
    def connect(
        cls, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None, ui_url: str | None = None
    ) -> Tracker:
        """A Tracker on `experiment_name`, creating the experiment (classic ML, artifacts under `artifact_root` for a
        local store) the first time."""
        client = open_client(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
            location = Path(artifact_root).as_uri() if artifact_root is not None and local else None
            try:
                experiment_id = client.create_experiment(
                    experiment_name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML}
                )
            except MlflowException as exc:
                if not is_already_there(exc):  # created by a concurrent run in the meantime
                    raise
                created = client.get_experiment_by_name(experiment_name)
                if created is None:
                    raise
                experiment_id = created.experiment_id
        else:
            experiment_id = experiment.experiment_id
            if EXPERIMENT_KIND_TAG not in experiment.tags:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)
        return cls(client, experiment_id, tracking_uri, ui_url)

    def run_url(self, run_id: str) -> str:
        """Where a person opens the run: the tracking server itself, or the configured UI for a local store."""
        remote = self.tracking_uri.startswith(("http://", "https://"))
        base = (self.tracking_uri if remote else (self.ui_url or "http://127.0.0.1:5000")).rstrip("/")
        return f"{masked_uri(base)}/#/experiments/{self.experiment_id}/runs/{run_id}"

    # -- registry -----------------------------------------------------------------------------

    def champion(self, ticker: str) -> Champion | None:
        """The serving version, or None when the ticker has none; any other error propagates."""
        version = self._version_by_alias(ticker, CHAMPION_ALIAS)
        return None if version is None else self._as_champion(version)

    def _version_by_alias(self, ticker: str, alias: str) -> ModelVersion | None:
        """Read through the registered model's alias map: MLflow reports a missing alias as an invalid parameter,
        which must not be confused with any other refusal."""
        name = registered_model_name(ticker)
        try:
            model = self.client.get_registered_model(name)
        except MlflowException as exc:
            if is_not_found(exc):
                return None
            raise
        version = model.aliases.get(alias)
        return None if version is None else self.client.get_model_version(name, str(version))

    def _as_champion(self, version: ModelVersion) -> Champion:
        return Champion(
            str(version.version),
            version.tags.get(KIND_TAG, "unknown"),
            version.source or "",
            version.tags.get("data_end"),
            version.tags.get(MANIFEST_TAG),
            version.run_id,
        )

    def load(self, champion: Champion, ticker: str) -> Forecaster:
        """The champion's forecaster, from its files checked against the digests recorded at registration."""
        what = f"{registered_model_name(ticker)} v{champion.version}"
        with tempfile.TemporaryDirectory(prefix="stockpipe-model-") as folder:
            import mlflow.artifacts

            # The version's own artifact location, through this tracker's store: a `models:/` URI would be resolved
            # against MLflow's process-wide registry URI and add registry metadata beside the model's files.
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=champion.model_uri, dst_path=folder, tracking_uri=self.tracking_uri
                )
            )
            model_files.verify(local, champion.manifest, what)
            return model_files.load(local / model_files.ARTIFACTS_DIR)

    def ensure_registered_model(self, ticker: str) -> None:
        try:
            self.client.create_registered_model(
                registered_model_name(ticker),
                tags={"ticker": ticker},
                description=f"Next-session close forecasts for {ticker}. Alias `{CHAMPION_ALIAS}` serves; each version "
                "is a model that served, with the decision that made it champion.",
            )
        except MlflowException as exc:
            if not is_already_there(exc):
                raise

    def register(
        self, ticker: str, logged: LoggedForecaster, run_id: str, tags: dict[str, str], description: str
    ) -> ModelVersion:
        """A new version from a logged model; its tags (decision, digests) go in with it, never after."""
        self.ensure_registered_model(ticker)
        # The logged model's artifact location with its id: the form both a local store and a tracking server accept
        # (a `models:/m-...` source is resolved through MLflow's process-wide URI by a local store).
        return self.client.create_model_version(
            registered_model_name(ticker),
            source=logged.artifact_location,
            run_id=run_id,
            tags={**{k: str(v) for k, v in tags.items()}, KIND_TAG: logged.kind, MANIFEST_TAG: logged.manifest},
            description=description,
            model_id=logged.model_id,
        )

    def make_champion(self, ticker: str, version: str) -> None:
        """`champion` to `version`; the version it replaces becomes `previous` (moved first, so a cut between the two
        moves leaves `champion` where it was)."""
        name = registered_model_name(ticker)
        current = self.champion(ticker)
        if current is not None and current.version == str(version):
            return
        if current is not None:
            self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, current.version)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, str(version))

    def rollback(self, ticker: str, reason: str) -> tuple[str, str]:
        """Move `champion` back to the `previous` version; the demoted one becomes `previous` (so it can be undone)."""
        name = registered_model_name(ticker)
        current = self.champion(ticker)
        if current is None:
            raise LookupError(f"{ticker}: no champion registered under {name}; nothing to roll back")
        target = self._version_by_alias(ticker, PREVIOUS_ALIAS)
        if target is None:
            raise LookupError(f"{ticker}: {name} has no `{PREVIOUS_ALIAS}` version to roll back to")
        demoted, restored = current.version, str(target.version)
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, restored)
        self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, demoted)
        self.client.set_model_version_tag(name, demoted, "rolled_back", excerpt(reason, 500))
        self.client.set_model_version_tag(name, restored, "restored_by_rollback_from", f"v{demoted}")
        self.client.set_registered_model_tag(
            name, "last_rollback", f"v{demoted} -> v{restored}: {excerpt(reason, 500)}"
        )
        log.info("%s: rolled back %s from v%s to v%s", ticker, name, demoted, restored)
        return demoted, restored

    def versions(self, ticker: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(f"name = '{registered_model_name(ticker)}'")
        return sorted(found, key=lambda v: int(v.version))

    def version_of_run(self, ticker: str, run_id: str) -> ModelVersion | None:
        """The version registered from a run, if any (a run registers at most one)."""
        found = self.client.search_model_versions(f"name = '{registered_model_name(ticker)}' and run_id = '{run_id}'")
        return min(found, key=lambda v: int(v.version)) if found else None

    def tag_version(self, ticker: str, version: str | int, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(registered_model_name(ticker), str(version), key, value)

    def registered_tickers(self) -> list[str]:
        models = self.client.search_registered_models(filter_string="name LIKE 'stockpipe-%'")
        return sorted(m.tags.get("ticker") or m.name.removeprefix("stockpipe-") for m in models)

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, run_name: str, tags: dict[str, str], description: str | None = None) -> str:
        all_tags = {**tags, **({DESCRIPTION_TAG: description} if description else {})}
        return self.client.create_run(
            self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()}
        ).info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def get_run(self, run_id: str) -> Run:
        return self.client.get_run(run_id)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], steps: dict[str, list[float]] | None = None) -> None:
        """Scalar metrics, plus per-step series (e.g. per-block RMSE with the block as the step)."""
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, values in (steps or {}).items():
            entries += [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
        for start in range(0, len(entries), METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=entries[start : start + METRICS_PER_BATCH])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_json(self, run_id: str, payload: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, payload, artifact_file)

    def log_figure(self, run_id: str, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_dataset(self, run_id: str, history: pd.DataFrame, name: str, source: str, digest: str) -> None:
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        dataset = from_pandas(history, source=source, name=name, digest=digest)
        self.client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(key="mlflow.data.context", value="training")])
            ],
        )

    def artifact_paths(self, run_id: str, folder: str | None = None) -> set[str]:
        return {a.path for a in self.client.list_artifacts(run_id, folder)}

    # -- logged models --------------------------------------------------------------------------

    def log_forecaster(
        self, run_id: str, forecaster: Forecaster, history: pd.DataFrame, min_input_rows: int
    ) -> LoggedForecaster:
        """Log a forecaster as a logged model of the run: data files plus a models-from-code pyfunc entry, so
        `mlflow.pyfunc.load_model` works without any pickle. Returns its id and file digests."""
        import mlflow.pyfunc
        from mlflow.models import Model, infer_signature

        model = self.client.create_logged_model(
            self.experiment_id,
            name=MODEL_NAME_IN_RUN,
            source_run_id=run_id,
            tags={KIND_TAG: forecaster.kind},
            model_type="forecaster",
        )
        with tempfile.TemporaryDirectory(prefix="stockpipe-model-") as tmp:
            data = model_files.save(forecaster, Path(tmp) / "data")
            code = Path(tmp) / "stockpipe_model.py"
            code.write_text(MODEL_CODE)
            example = to_model_input(history.tail(min_input_rows + 4))
            local = Path(tmp) / "model"
            mlflow.pyfunc.save_model(
                path=str(local),
                python_model=str(code),
                artifacts={role: str(path) for role, path in data.items()},
                signature=infer_signature(example, _output_example(forecaster, example)),
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
            manifest = model_files.manifest_text(model_files.manifest(local))
            self.client.log_model_artifacts(model.model_id, str(local))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        # The digests mark the logged model complete: a retry finds it by them instead of logging it twice.
        self.client.set_logged_model_tags(model.model_id, {MANIFEST_TAG: manifest})
        self.client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        return LoggedForecaster(model.model_id, manifest, forecaster.kind, model.artifact_location)

    def logged_forecaster_of(self, run_id: str) -> LoggedForecaster | None:
        """The forecaster a run already logged (a retry after a lost connection must not log it twice)."""
        found = self.client.search_logged_models([self.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        ready = [m for m in found if m.status == LoggedModelStatus.READY and MANIFEST_TAG in m.tags]
        if not ready:
            return None
        model = ready[0]
        return LoggedForecaster(
            model.model_id, model.tags[MANIFEST_TAG], model.tags.get(KIND_TAG, "unknown"), model.artifact_location
        )

    # -- queries --------------------------------------------------------------------------------

    def runs(self, ticker: str, *, filters: str = "", order: str = "DESC", max_results: int = 100) -> list[Run]:
        extra = f" and {filters}" if filters else ""
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.ticker = '{ticker}' and tags.role = 'daily'{extra}",
                order_by=[f"attributes.start_time {order}"],
                max_results=max_results,
            )
        )

    def last_run(self, ticker: str) -> Run | None:
        found = self.runs(ticker, max_results=1)
        return found[0] if found else None

    def running_runs(self, ticker: str) -> list[Run]:
        return self.runs(ticker, filters="attributes.status = 'RUNNING'", order="ASC")

    def next_attempt(self, ticker: str, day: str) -> int:
        return len(self.runs(ticker, filters=f"tags.day = '{day}'", max_results=1000)) + 1


def _output_example(forecaster: Forecaster, example: pd.DataFrame) -> pd.DataFrame:
    return forecaster.predict(example).tail(1).reset_index(drop=True)


def baseline_tags(ticker: str, history: pd.DataFrame) -> dict[str, str]:
    return {"ticker": ticker, "decision": "baseline", "data_end": history["Date"].max().strftime("%Y-%m-%d")}


__all__ = [
    "LSTM",
    "NAIVE",
    "Champion",
    "LoggedForecaster",
    "Tracker",
    "TrackingUnavailable",
    "is_not_found",
    "tracking_errors",
    "unreachable_reason",
]


def epoch_callback(run_id: str) -> Any:
    """MLflow's Keras callback, logging each epoch's losses to `run_id` as the epoch ends (live curves in the UI).

    MLflow's own hooks log to the thread's active run; here the run is named instead, because parallel tickers share
    a process and a ticker's run stays open after training (ending it is the decision's job). Its fluent calls use
    MLflow's process-wide tracking URI, which the orchestration sets once, at the edge. The validation pass is not
    logged a second time: Keras already hands it to `on_epoch_end` as `val_loss`.
    """
    import mlflow
    from mlflow.keras import MlflowCallback

    class RunCallback(MlflowCallback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            config = self.model.optimizer.get_config()
            mlflow.log_params({f"optimizer_{k}": v for k, v in config.items()}, run_id=run_id)
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            mlflow.log_text("\n".join(lines), artifact_file="model_summary.txt", run_id=run_id)

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            # Live curves are a courtesy: a tracking server lost mid-training must not stop the training; the
            # recording stage after it reports the loss (and is retried) properly.
            if logs:
                try:
                    mlflow.log_metrics(
                        {k: float(v) for k, v in logs.items()}, step=epoch, run_id=run_id, synchronous=True
                    )
                except Exception as exc:
                    log.warning("epoch %d not logged live to MLflow: %s", epoch + 1, type(exc).__name__)

        def on_test_end(self, logs: dict | None = None) -> None:
            return None

    return RunCallback(log_every_epoch=True)
