"""Each champion version's live record as an MLflow run of its own: one run per registered version, its `live_*`
metrics logged with the number of scored sessions as the step, so the run's charts draw the record as it grew.

The day's run also carries the serving version's record (one point per daily run); this run is where one version's
record reads as a curve, whichever day's run is open. A re-run of a day logs the same step with the same figures.
"""

from __future__ import annotations

import datetime as dt

from mlflow.entities import Metric

from pipeline.evaluation.live_record import LiveRecord
from pipeline.registry.tracking import Tracker

LIVE_RECORD_ROLE = "live_record"


def live_record_run(tracker: Tracker, ticker: str, version: str) -> str:
    """The run holding `version`'s live record, made the first time it is needed."""
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=(
            f"tags.ticker = '{ticker}' and tags.role = '{LIVE_RECORD_ROLE}' and tags.model_version = '{version}'"
        ),
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run_id = tracker.start_run(
        f"{ticker} v{version} live record",
        {"ticker": ticker, "role": LIVE_RECORD_ROLE, "model_version": str(version)},
        description=(
            f"What {ticker} v{version} served, scored as each target session's close arrived: the `live_*` metrics "
            "with step = sessions scored (open a metric to see its curve). RMSE, U2 against tomorrow = today and "
            "80%/95% coverage over the last 20 and 60 scored sessions; Kupiec's p of the 80% coverage over the last 60."
        ),
    )
    # Finished at once: it is a record, not work in progress (a RUNNING run reads as one cut off).
    tracker.client.set_terminated(run_id, "FINISHED")
    return run_id


def log_live_record(tracker: Tracker, ticker: str, record: LiveRecord) -> None:
    """Add the record's figures to its version's run, at step = sessions scored (nothing before the first)."""
    if record.sessions == 0:
        return
    run_id = live_record_run(tracker, ticker, record.model_version)
    now = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
    metrics = [Metric(key, value, now, record.sessions) for key, value in record.metrics().items()]
    tracker.client.log_batch(run_id, metrics=metrics)
