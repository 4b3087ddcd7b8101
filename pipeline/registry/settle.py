"""Settling what a run left unfinished, so that no run stays RUNNING and no version carries a decision the aliases
contradict.

A run that fails while its process lives is settled at once; a process killed (or a tracking server lost for good) at
any point leaves its MLflow run RUNNING, and the next run of the ticker settles it before doing anything else. Under
the ticker's lock no live run of this host can be RUNNING, so every such run is a cut-off one:

- its version became champion: only the closing bookkeeping was lost; the run is finished as it would have been;
- a version was registered but never crowned: it is tagged as not promoted, and the run fails with the reason;
- nothing was registered: the run fails, naming the stage it was cut off in.
"""

from __future__ import annotations

import logging

from mlflow.entities import Run

from pipeline.common.outcome import Decision
from pipeline.registry.baseline import BASELINE
from pipeline.registry.recording import DONE, MODEL_VERSION, ROLE, STAGE, record_failure
from pipeline.registry.tracking import Tracker

log = logging.getLogger(__name__)


def settle_run(tracker: Tracker, ticker: str, run: Run, reason: str) -> str:
    """Close one unfinished run truthfully; returns what was done."""
    run_id = run.info.run_id
    version = tracker.version_of_run(ticker, run_id)
    champion = tracker.champion(ticker)
    crowned = version is not None and champion is not None and champion.version == str(version.version)
    if version is not None and (crowned or run.data.tags.get(ROLE) == BASELINE):
        # A baseline version without its alias is crowned by ensure_baseline; a crowned one is simply done.
        tracker.set_tags(run_id, {STAGE: DONE, MODEL_VERSION: str(version.version)})
        tracker.client.set_terminated(run_id, "FINISHED")
        return f"run {run_id} finished: v{version.version} was registered before it stopped"
    if version is not None:
        kept = f"v{champion.version}" if champion else "unset"
        tracker.tag_version(
            ticker,
            version.version,
            {
                "decision": Decision.failed.value,
                "reason": f"never applied: registered, but the run stopped before `champion` moved; the champion "
                f"stayed {kept}",
            },
        )
        reason += f"; v{version.version} was registered but never became champion"
    record_failure(tracker, run_id, reason)
    return f"run {run_id} marked FAILED ({reason})"


def settle_cut_off(tracker: Tracker, ticker: str) -> list[str]:
    """Settle every run of `ticker` still marked RUNNING; returns one line per run settled."""
    settled = []
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        filter_string=f"tags.ticker = '{ticker}' and attributes.status = 'RUNNING'",
        order_by=["attributes.start_time ASC"],
    )
    for run in runs:
        stage = run.data.tags.get(STAGE, "starting")
        line = settle_run(
            tracker,
            ticker,
            run,
            f"cut off while {stage}: the process stopped before this run ended (settled by a later run)",
        )
        log.warning("%s: settled an interrupted run: %s", ticker, line)
        settled.append(line)
    return settled
