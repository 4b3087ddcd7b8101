"""MLflow's registry rules for stockpipe: one experiment of runs, logged models, a registered model per ticker with
its `champion` and `previous` aliases.

The `Tracker` is built around an injected `MlflowClient` (`tracker.client`, for plain calls); it never changes
process-wide MLflow state. Reading the registry, only MLflow's not-found error means "absent": every other error (a
503, a lost connection) propagates, so that a transient failure is retried instead of being mistaken for "no
champion".
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline.common.redact import excerpt, masked_uri
from pipeline.common.settings import Settings
from pipeline.common.symbols import MODEL_PREFIX, registered_model_name
from pipeline.evaluation.promotion import CHAMPION_ALIAS, CHOSEN_INTERVALS, PREVIOUS_ALIAS
from pipeline.models import model_files
from pipeline.models.forecasters import NAIVE, Forecaster
from pipeline.registry.connection import is_already_there, is_not_found, open_client
from pipeline.registry.logged_models import (
    KIND_TAG,
    MANIFEST_TAG,
    MODEL_NAME_IN_RUN,
    LoggedForecaster,
    save_pyfunc,
)

log = logging.getLogger(__name__)

# MLflow's own tag for a run's description, which its UI renders as Markdown.
DESCRIPTION_TAG = "mlflow.note.content"
# On a registered version that went bad on its live record: why (pipeline.evaluation.live_record.degradation).
DEGRADED_TAG = "degraded"
# The naive baseline registered on a ticker's first day.
BASELINE_VERSION = "1"
# On a registered version: whose intervals it serves (pipeline.evaluation.promotion.interval_serving).
SERVED_INTERVALS_TAG = "served_intervals"
# MLflow 3 opens experiments in its GenAI view unless told they hold classic model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML = "custom_model_development"
# Where run links point for a local store when no UI is named: the settings' own default.
DEFAULT_UI_URL = Settings.model_fields["mlflow_ui_url"].default


@dataclass(frozen=True)
class Champion:
    version: str
    kind: str
    model_uri: str
    data_end: str | None
    manifest: str | None
    run_id: str | None
    # CHOSEN_INTERVALS when the version was crowned serving the validation-chosen method's intervals.
    served_intervals: str | None = None

    @property
    def serves_chosen_intervals(self) -> bool:
        return self.kind == NAIVE or self.served_intervals == CHOSEN_INTERVALS


class Tracker:
    """One experiment for all tickers, one registered model per ticker."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        tracking_uri: str,
        ui_url: str | None = None,
        artifact_root: Path | None = None,
    ):
        self.client = client
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url
        # The configured folder of a local store's artifacts: the only place retention may delete from (the
        # experiment's own artifact location is a row in the store, and a row can be edited).
        self.artifact_root = artifact_root

    @classmethod
    def connect(
        cls, tracking_uri: str, experiment_name: str, artifact_root: Path | None = None, ui_url: str | None = None
    ) -> Tracker:
        """A Tracker on `experiment_name`, creating the experiment (classic ML, artifacts under `artifact_root` for a
        local store) the first time."""
        client = open_client(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        root = Path(artifact_root) if artifact_root is not None and local else None
        if experiment is None:
            location = root.as_uri() if root is not None else None
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
        return cls(client, experiment_id, tracking_uri, ui_url, root)

    @classmethod
    def from_settings(cls, settings: Settings) -> Tracker:
        """The tracker the settings name: their tracking store and experiment, a local store's artifacts under the
        state home, run links to their MLflow UI."""
        return cls.connect(
            settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir, settings.mlflow_ui_url
        )

    def run_url(self, run_id: str) -> str:
        """Where a person opens the run: the tracking server itself, or the configured UI for a local store."""
        remote = self.tracking_uri.startswith(("http://", "https://"))
        base = (self.tracking_uri if remote else (self.ui_url or DEFAULT_UI_URL)).rstrip("/")
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
            version.tags.get(SERVED_INTERVALS_TAG),
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

    def _ensure_registered_model(self, ticker: str) -> None:
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
        self._ensure_registered_model(ticker)
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

    def mark_degraded(self, ticker: str, version: str, reason: str) -> None:
        self.client.set_model_version_tag(registered_model_name(ticker), version, DEGRADED_TAG, excerpt(reason, 500))

    def fall_back(self, ticker: str, reason: str, by: str | None = None) -> tuple[str, str]:
        """A champion gone bad on its live record: `champion` moves to `previous`, or to the baseline v1 when there is
        none, and the degraded version becomes `previous` (so `rollback` undoes the move). Recorded like a rollback:
        the reason on both versions and on the registered model, with `by` (what made the move) there too."""
        name = registered_model_name(ticker)
        current = self.champion(ticker)
        if current is None:
            raise LookupError(f"{ticker}: no champion registered under {name}; nothing to fall back from")
        previous = self._version_by_alias(ticker, PREVIOUS_ALIAS)
        target = str(previous.version) if previous is not None else BASELINE_VERSION
        if target == current.version:
            target = BASELINE_VERSION
        if target == current.version:
            raise LookupError(f"{ticker}: v{current.version} is the baseline; there is nothing to fall back to")
        demoted = current.version
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, target)
        self.client.set_registered_model_alias(name, PREVIOUS_ALIAS, demoted)
        self.client.set_model_version_tag(name, demoted, DEGRADED_TAG, excerpt(reason, 500))
        self.client.set_model_version_tag(name, target, "restored_by_fallback_from", f"v{demoted}")
        who = f" ({excerpt(by, 200)})" if by else ""
        self.client.set_registered_model_tag(
            name, "last_fallback", f"v{demoted} -> v{target}: {excerpt(reason, 500)}{who}"
        )
        log.warning("%s: v%s degraded (%s); v%s serves again", ticker, demoted, reason, target)
        return demoted, target

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
        models = self.client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'")
        return sorted(m.tags.get("ticker") or m.name.removeprefix(MODEL_PREFIX) for m in models)

    # -- runs -----------------------------------------------------------------------------------

    def start_run(self, run_name: str, tags: dict[str, str], description: str | None = None) -> str:
        all_tags = {**tags, **({DESCRIPTION_TAG: description} if description else {})}
        return self.client.create_run(
            self.experiment_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()}
        ).info.run_id

    # Parameters and tags go in one request each, so a run cut off mid-way holds all of a set or none of it.
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], steps: dict[str, list[float]] | None = None) -> None:
        """Scalar metrics, plus per-step series (e.g. per-block RMSE with the block as the step)."""
        now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        for key, values in (steps or {}).items():
            entries += [Metric(key, float(v), now, step) for step, v in enumerate(values, start=1)]
        self.client.log_batch(run_id, metrics=entries)

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

    # -- logged models --------------------------------------------------------------------------

    def log_forecaster(
        self, run_id: str, forecaster: Forecaster, history: pd.DataFrame, min_input_rows: int
    ) -> LoggedForecaster:
        """Log a forecaster as a logged model of the run: data files plus a models-from-code pyfunc entry, so
        `mlflow.pyfunc.load_model` works without any pickle. Returns its id and file digests."""
        model = self.client.create_logged_model(
            self.experiment_id,
            name=MODEL_NAME_IN_RUN,
            source_run_id=run_id,
            tags={KIND_TAG: forecaster.kind},
            model_type="forecaster",
        )
        with tempfile.TemporaryDirectory(prefix="stockpipe-model-") as tmp:
            local = save_pyfunc(Path(tmp), forecaster, history, min_input_rows, model, run_id)
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

    def runs(self, ticker: str, *, filters: str = "", max_results: int = 100) -> list[Run]:
        """The ticker's daily runs, newest first."""
        extra = f" and {filters}" if filters else ""
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.ticker = '{ticker}' and tags.role = 'daily'{extra}",
                order_by=["attributes.start_time DESC"],
                max_results=max_results,
            )
        )

    def next_attempt(self, ticker: str, day: str) -> int:
        return len(self.runs(ticker, filters=f"tags.day = '{day}'", max_results=1000)) + 1
