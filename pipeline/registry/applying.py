"""Applying a decision to the registry: only a promoted challenger is registered, and only then does `champion`
move. Every step checks what is already done, so a retry after a lost connection finishes the job exactly once."""

from __future__ import annotations

import logging

from pipeline.common.outcome import Decision
from pipeline.data.ingest import Admitted
from pipeline.evaluation.promotion import Verdict
from pipeline.registry.recording import APPLYING, DONE, MODEL_VERSION, STAGE, Recorded
from pipeline.registry.tracking import SERVED_INTERVALS_TAG, Tracker

log = logging.getLogger(__name__)


def apply(
    tracker: Tracker,
    run_id: str,
    *,
    ticker: str,
    admitted: Admitted,
    verdict: Verdict,
    recorded: Recorded,
    description: str,
    served_intervals: str | None = None,
) -> str | None:
    """Register and crown a promoted challenger, then close the run; returns the new version, if any."""
    tracker.set_tags(run_id, {STAGE: APPLYING})
    version = None
    if verdict.decision is Decision.promoted:
        registered = tracker.version_of_run(ticker, run_id) or tracker.register(
            ticker,
            recorded.logged,
            run_id,
            description=description,
            tags={
                "decision": verdict.decision.value,
                "data_end": admitted.data_end,
                "data_digest": admitted.data_digest,
                **({SERVED_INTERVALS_TAG: served_intervals} if served_intervals else {}),
            },
        )
        version = str(registered.version)
        tracker.make_champion(ticker, version)
        log.info("%s: v%s is the champion", ticker, version)
    tracker.set_tags(run_id, {STAGE: DONE, **({MODEL_VERSION: version} if version else {})})
    tracker.client.set_terminated(run_id, "FINISHED")
    return version
