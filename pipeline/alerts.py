"""What someone watching should hear about a ticker's day: the alerts an outcome raises, as plain messages.

Pure: an outcome in, messages out. Delivering them (webhook, Slack, Teams, email) and emitting them as Prefect events
is the flow's job (flows/alerts.py). A message carries what a person acts on (the ticker, what happened, the reason,
the data day, links to the MLflow run and the Prefect flow run) and never a secret or raw input: the reason is the
outcome's, already cut to an excerpt with secrets masked, and is masked again here.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from pipeline.common.outcome import Decision, TickerOutcome, utc_now
from pipeline.common.redact import excerpt

# The resource every ticker event is about, in Prefect's event stream: `stockpipe.ticker.MSFT`.
RESOURCE_PREFIX = "stockpipe.ticker."
EVENT_PREFIX = "stockpipe."
REASON_CHARS = 600


class AlertKind(StrEnum):
    batch_refused = "batch-refused"
    stale_data = "stale-data"
    ticker_failed = "ticker-failed"
    champion_promoted = "champion-promoted"
    champion_degraded = "champion-degraded"
    champion_rolled_back = "champion-rolled-back"

    @property
    def event_name(self) -> str:
        """The Prefect event name, e.g. `stockpipe.batch-refused`."""
        return EVENT_PREFIX + self.value


HEADLINES = {
    AlertKind.batch_refused: "batch refused, nothing stored",
    AlertKind.stale_data: "data is stale",
    AlertKind.ticker_failed: "the day failed",
    AlertKind.champion_promoted: "new champion",
    AlertKind.champion_degraded: "champion degraded, still serving",
    AlertKind.champion_rolled_back: "champion rolled back",
}

# Failures that have an alert of their own; any other failure is `ticker-failed`.
_FAILURE_KINDS = {"BatchRefused": AlertKind.batch_refused, "StaleData": AlertKind.stale_data}


class Alert(BaseModel):
    """One message: the JSON a webhook receives, and what the Slack, Teams and email texts are made of."""

    model_config = ConfigDict(frozen=True)

    ticker: str
    event: AlertKind
    headline: str
    reason: str
    data_day: str | None = None
    champion: str | None = None
    mlflow_run: str | None = None
    prefect_flow_run: str | None = None
    at: str

    @property
    def subject(self) -> str:
        return f"stockpipe {self.ticker}: {self.headline}"

    @property
    def resource_id(self) -> str:
        return RESOURCE_PREFIX + self.ticker

    def text(self) -> str:
        """The plain-text body (Slack, Teams, email)."""
        lines = [self.subject, self.reason]
        if self.data_day:
            lines.append(f"data to {self.data_day}")
        if self.champion:
            lines.append(f"champion serving: {self.champion}")
        if self.mlflow_run:
            lines.append(f"MLflow run: {self.mlflow_run}")
        if self.prefect_flow_run:
            lines.append(f"Prefect flow run: {self.prefect_flow_run}")
        return "\n".join(lines)

    def json_message(self) -> dict[str, str | None]:
        """The webhook's JSON body. `{{` is broken up: the webhook block reads `{{name}}` in its payload as a
        placeholder, and a reason quoting a data file must not be able to pull anything into the message."""
        return {k: _unplaceheld(v) for k, v in self.model_dump(mode="json").items()}


def _unplaceheld(value: str | None) -> str | None:
    return value.replace("{{", "{ {").replace("}}", "} }") if isinstance(value, str) else value


def kinds_for(outcome: TickerOutcome) -> list[AlertKind]:
    """The events a ticker's day raises, most urgent first; a kept model or a skipped day raises none."""
    kinds: list[AlertKind] = []
    if outcome.decision is Decision.failed:
        kinds.append(_FAILURE_KINDS.get(outcome.failure or "", AlertKind.ticker_failed))
    if outcome.degradation:
        kinds.append(AlertKind.champion_rolled_back if outcome.rolled_back else AlertKind.champion_degraded)
    if outcome.decision is Decision.promoted:
        kinds.append(AlertKind.champion_promoted)
    return kinds


def alerts_for(outcome: TickerOutcome, prefect_flow_run: str | None = None) -> list[Alert]:
    """The messages for one ticker's day."""
    at = utc_now()
    alerts = []
    for kind in kinds_for(outcome):
        why = outcome.degradation if kind in (AlertKind.champion_degraded, AlertKind.champion_rolled_back) else None
        alerts.append(
            Alert(
                ticker=outcome.ticker,
                event=kind,
                headline=HEADLINES[kind],
                reason=excerpt(_unplaceheld(why or outcome.reason), REASON_CHARS),
                data_day=outcome.data_end,
                champion=f"v{outcome.champion_version}" if outcome.champion_version else None,
                mlflow_run=outcome.run_url,
                prefect_flow_run=prefect_flow_run,
                at=at,
            )
        )
    return alerts
