"""What one ticker's day came to: a typed outcome that crosses every layer (pipeline, flow, CLI, status JSON)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pipeline.common.codec import KEEP_NON_FINITE


class Decision(StrEnum):
    promoted = "promoted"
    kept = "kept"
    skipped = "skipped"
    failed = "failed"

    @property
    def succeeded(self) -> bool:
        return self is not Decision.failed


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TickerOutcome:
    """Stored as `pipeline.common.codec.dump` writes it (last_run.json); `codec.load` reads it back."""

    # last_run.json has always carried an undefined figure (U2 over a perfect naive forecast) as NaN.
    __pydantic_config__ = KEEP_NON_FINITE

    ticker: str
    decision: Decision
    reason: str
    data_start: str | None = None
    data_end: str | None = None
    rows: int = 0
    new_rows: int = 0
    data_digest: str | None = None
    settings_digest: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    model_version: str | None = None
    champion_version: str | None = None
    champion_kind: str | None = None
    challenger_test_rmse: float | None = None
    champion_test_rmse: float | None = None
    naive_test_rmse: float | None = None
    u2: float | None = None
    coverage_80: float | None = None
    coverage_95: float | None = None
    # The coverage of what serves after this day (the champion's intervals, or the promoted challenger's).
    served_coverage_80: float | None = None
    served_coverage_95: float | None = None
    # The serving champion's live record when the day began (pipeline.evaluation.live_record).
    live_sessions: int | None = None
    live_u2_60: float | None = None
    live_coverage_80_60: float | None = None
    live_coverage_95_60: float | None = None
    live_kupiec_p_80: float | None = None
    # What went wrong when the day failed, as its family (BatchRefused for any refused batch, StaleData, else the
    # exception's class): what alerts are raised on.
    failure: str | None = None
    # The live record's verdict on the champion that served until today, when it went bad, and whether it was
    # replaced (fell back to `previous` or the baseline) or only marked degraded.
    degradation: str | None = None
    rolled_back: bool = False
    # Set by the flow when an alert this day raised could not be delivered (which, to which channel, and how).
    alert_note: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    finished_at: str = field(default_factory=utc_now)

    @property
    def succeeded(self) -> bool:
        return self.decision.succeeded

    def replace(self, **changes: Any) -> TickerOutcome:
        return dataclasses.replace(self, **changes)


# The figures a skip or a closed market carries over from the last real decision, so `status` keeps showing them.
CARRIED_OVER = (
    "data_start",
    "data_end",
    "rows",
    "data_digest",
    "settings_digest",
    "run_id",
    "run_url",
    "model_version",
    "champion_version",
    "champion_kind",
    "challenger_test_rmse",
    "champion_test_rmse",
    "naive_test_rmse",
    "u2",
    "coverage_80",
    "coverage_95",
    "served_coverage_80",
    "served_coverage_95",
    "live_sessions",
    "live_u2_60",
    "live_coverage_80_60",
    "live_coverage_95_60",
    "live_kupiec_p_80",
)


def carried_over(previous: TickerOutcome | None) -> dict[str, Any]:
    if previous is None:
        return {}
    return {name: getattr(previous, name) for name in CARRIED_OVER if getattr(previous, name) is not None}
