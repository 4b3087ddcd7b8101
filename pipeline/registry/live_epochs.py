"""Each training epoch's losses logged to the ticker's run as the epoch ends: live curves in MLflow's UI."""

from __future__ import annotations

import logging
from typing import Any

from pipeline.common.disk import disk_full_cause
from pipeline.registry.connection import tracking_errors

log = logging.getLogger(__name__)


def epoch_callback(run_id: str) -> Any:
    """MLflow's Keras callback, logging each epoch's losses to `run_id` as the epoch ends.

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
            lines: list[str] = []
            self.model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
            with tracking_errors(mlflow.get_tracking_uri(), "logging the model summary"):
                mlflow.log_params({f"optimizer_{k}": v for k, v in config.items()}, run_id=run_id)
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
                    why = "disk full" if disk_full_cause(exc) else type(exc).__name__
                    log.warning("epoch %d not logged live to MLflow: %s", epoch + 1, why)

        def on_test_end(self, logs: dict | None = None) -> None:
            return None

    return RunCallback(log_every_epoch=True)
