"""The process environment, prepared in this one place: what Prefect, MLflow, TensorFlow and GX must read before they
import, and what every process that runs the flow needs (the CLI's, a deployment's worker, a Dask worker)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from pipeline.common.files import private_dir
from pipeline.common.settings import Settings
from pipeline.registry import relocate
from pipeline.registry.relocate import HomeMoved

# Set whatever the environment says: safety, not preference.
ENFORCED = {
    # Model files are data: MLflow itself must refuse to unpickle anything, whatever a model directory holds.
    "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    # MLflow prints each run's URL with the tracking URI as given, password included; the pipeline logs its own, masked.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# Quiet, offline defaults a user may override.
DEFAULTS = {
    # Library code logs through `logging`; this hands those records to Prefect's console and UI handlers.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pipeline",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def before_imports(settings: Settings, parallel_trainings: int = 1) -> None:
    """Point Prefect, MLflow and friends at the state directory before they are imported (the CLI's first step)."""
    home = private_dir(settings.home)
    if not os.environ.get("PREFECT_API_URL"):
        # Without a server, Prefect starts a temporary one; its database belongs with the rest of the state.
        os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
        # Its first start creates the database; 20 s (Prefect's default) is too short for a busy 2-core machine.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    _defaults_and_enforced()
    if parallel_trainings > 1:
        # Each parallel training gets its share of the cores: TensorFlow's default, one pool per process spanning
        # all cores, makes two tickers' small LSTMs fight over the same threads (measured: 25% slower on 2 cores).
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // parallel_trainings)))
    try:
        home_in_place(settings)
    except HomeMoved as exc:
        # The CLI's first step: one line and exit code 2, as for a bad setting, rather than a traceback.
        sys.stderr.write(f"{exc}\n")
        raise SystemExit(2) from None


def while_the_api_starts(settings: Settings, api_ready: Callable[[], bool]) -> None:
    """Work a run does anyway, done while its own Prefect API starts in a child process on the other core (about
    12 s on a fresh home, 5 s on a used one), and only until the API answers, so a run with nothing to train never
    waits for it: the MLflow store (created and migrated on a fresh home), GX's context, TensorFlow's import. Each
    step is best effort: what fails here is met, and reported, in the flow itself."""

    def mlflow_store() -> None:
        # Only the home's own SQLite store has a schema to create here; a tracking server is the flow's to reach
        # (with its retries), never waited on twice.
        if settings.tracking_uri().startswith("sqlite:"):
            from pipeline.registry.tracking import Tracker

            Tracker.from_settings(settings)

    def gx_context() -> None:
        from pipeline.contract.gx_context import gx_state

        with gx_state():
            pass

    def tensorflow() -> None:
        import keras  # noqa: F401

    for step in (mlflow_store, gx_context, tensorflow):
        if api_ready():
            return
        try:
            step()
        except Exception as exc:
            logging.getLogger("pipeline.flow").debug("%s not prepared early: %s", step.__name__, type(exc).__name__)


def in_flow_process(settings: Settings) -> None:
    """What every process running the flow needs, set at its edge (a deployment's worker never runs the CLI):
    MLflow's Keras callback logs through MLflow's process-wide tracking URI, and the enforced settings above."""
    import mlflow

    _defaults_and_enforced()
    home_in_place(settings)
    mlflow.set_tracking_uri(settings.tracking_uri())


def home_in_place(settings: Settings) -> None:
    """A home moved or renamed since its MLflow store was written: when the store is the home's own SQLite file, its
    artifact locations follow the home (pipeline.registry.relocate); a store elsewhere keeps its own. Raises
    HomeMoved when the old place still holds the artifacts and the new one does not."""
    database = settings.home / "mlflow.db"
    if settings.tracking_uri() != f"sqlite:///{database}":
        return
    moved = relocate.repoint_artifacts(database, settings.artifacts_dir, settings.experiment_name)
    if moved is not None and not (relocate.log.isEnabledFor(logging.INFO) and relocate.log.hasHandlers()):
        # Before Prefect sets up logging (the CLI's first step) the INFO record goes nowhere: say it here.
        sys.stderr.write(f"{moved.message}\n")


def _defaults_and_enforced() -> None:
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.update(ENFORCED)
