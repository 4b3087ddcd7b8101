"""The Prefect server's side of alerting: the notification blocks and automations that `stockpipe alerts install`
puts on the server PREFECT_API_URL names, so that someone hears of what a run cannot say itself.

Three automations, each sending to every channel the settings name (one notification block per channel):
  - a `daily-pipeline` flow run that failed, crashed or timed out;
  - a stockpipe ticker event (`stockpipe.*` on `stockpipe.ticker.*`, emitted by flows/alerts.py);
  - no `daily-pipeline` run completed for STOCKPIPE_ALERT_MISSED_RUN_HOURS since the last one: the silence of a
    stopped worker, a paused schedule or a deployment that was never made, which no run can report. The schedule
    runs every day (a closed-market day completes as a quick no-op), so 24 hours plus grace pass without a completed
    run only when one is missing.

Installing is idempotent: blocks are saved by name with overwrite, automations created or updated by name, and an
automation that is already as wanted is left alone (a missed-run window in progress is not restarted).
Email stays with the runs themselves: Prefect's server sends through notification blocks, and prefect-email's
EmailServerCredentials is a credentials block, not one of them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
from prefect.blocks.abstract import NotificationBlock
from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
from prefect.client.orchestration import PrefectClient, get_client
from prefect.events.actions import SendNotification
from prefect.events.schemas.automations import Automation, AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings

from flows.alerts import apprise_block
from pipeline.alerts import EVENT_PREFIX, RESOURCE_PREFIX
from pipeline.common.redact import masked_uri
from pipeline.common.settings import Settings

FLOW_NAME = "daily-pipeline"
BLOCK_NAME = "stockpipe-alerts"
FAILED_RUN = "stockpipe: daily-pipeline run failed"
TICKER_EVENT = "stockpipe: ticker event"
MISSED_RUN = "stockpipe: no daily-pipeline run completed"
AUTOMATION_NAMES = (FAILED_RUN, TICKER_EVENT, MISSED_RUN)
# Prefect refuses a proactive trigger with a shorter window.
MIN_PROACTIVE_SECONDS = 10
# What a webhook receives: who sent it, so a receiver also fed by the runs themselves can tell the two apart.
WEBHOOK_JSON = {"source": "prefect-automation", "subject": "{{subject}}", "body": "{{body}}"}
DAILY_FLOW = {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME}


class AlertsNotInstalled(RuntimeError):
    """The server could not be reached or refused; the text says which and how, never a credential."""


class NoChannel(ValueError):
    """No channel the server can send to is set."""


@dataclass(frozen=True)
class Installed:
    kind: str
    name: str
    outcome: str
    what: str


def server_url() -> str:
    url = get_current_settings().api.url
    if not url:
        raise AlertsNotInstalled(
            "no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to the server to install on"
        )
    return url


def notification_blocks(settings: Settings) -> dict[str, NotificationBlock]:
    """One block per channel the settings name that a server can send to; the URLs stay secret in the block."""
    blocks: dict[str, NotificationBlock] = {}
    if settings.alert_webhook_url:
        # The URL may carry a token: kept among the block's secrets, not in its plain `url` field.
        blocks["webhook"] = CustomWebhookNotificationBlock(
            name=BLOCK_NAME,
            url="{{webhook_url}}",
            secrets={"webhook_url": settings.alert_webhook_url.get_secret_value()},
            json_data=WEBHOOK_JSON,
        )
    if settings.alert_slack_url:
        blocks["slack"] = apprise_block("STOCKPIPE_ALERT_SLACK_URL", SlackWebhook, settings.alert_slack_url)
    if settings.alert_teams_url:
        blocks["teams"] = apprise_block("STOCKPIPE_ALERT_TEAMS_URL", MicrosoftTeamsWebhook, settings.alert_teams_url)
    if not blocks:
        raise NoChannel(
            "no alert channel for the server: set STOCKPIPE_ALERT_WEBHOOK_URL, STOCKPIPE_ALERT_SLACK_URL or "
            "STOCKPIPE_ALERT_TEAMS_URL (email, STOCKPIPE_ALERT_EMAIL_TO, is sent by the runs themselves only)"
        )
    return blocks


def notify(block_ids: list[UUID], subject: str, body: str) -> list[SendNotification]:
    return [SendNotification(block_document_id=i, subject=subject, body=body) for i in block_ids]


FAILED_RUN_SUBJECT = 'stockpipe: flow run "{{ flow_run.name }}" {{ flow_run.state.name }}'
# A link needs the server's PREFECT_UI_URL (docker/compose.yaml sets it); without it the line is left out.
FAILED_RUN_BODY = """\
The {{ flow.name }} flow run "{{ flow_run.name }}" ended {{ flow_run.state.name }}: {{ flow_run.state.message }}
{%- set link = flow_run|ui_url %}{% if link %}
Flow run: {{ link }}{% endif %}"""

TICKER_EVENT_SUBJECT = "stockpipe {{ event.resource.name }}: {{ event.payload.headline }}"
# The lines of the run's own message (pipeline.alerts.Alert.text) after its subject, from the event's payload.
TICKER_EVENT_BODY = """\
{{ event.payload.reason }}
{%- if event.payload.data_day %}
data to {{ event.payload.data_day }}{% endif %}
{%- if event.payload.champion %}
champion serving: {{ event.payload.champion }}{% endif %}
{%- if event.payload.mlflow_run %}
MLflow run: {{ event.payload.mlflow_run }}{% endif %}
{%- if event.payload.prefect_flow_run %}
Prefect flow run: {{ event.payload.prefect_flow_run }}{% endif %}"""

MISSED_RUN_BODY = """\
No {flow} flow run has completed in the last {window} (STOCKPIPE_ALERT_MISSED_RUN_HOURS), though the `daily` \
deployment is scheduled every day: is the worker running, and the deployment's schedule active?
{{%- set link = automation|ui_url %}}{{% if link %}}
Automation: {{{{ link }}}}{{% endif %}}"""


def _duration(window: dt.timedelta) -> str:
    seconds = window.total_seconds()
    return f"{seconds / 3600:g} hours" if seconds >= 3600 else f"{seconds:g} seconds"


def failed_run(block_ids: list[UUID]) -> AutomationCore:
    return AutomationCore(
        name=FAILED_RUN,
        description=f"A {FLOW_NAME} flow run failed, crashed or timed out.",
        trigger=EventTrigger(
            expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=DAILY_FLOW,
            posture=Posture.Reactive,
            threshold=1,
            within=dt.timedelta(0),
        ),
        actions=notify(block_ids, FAILED_RUN_SUBJECT, FAILED_RUN_BODY),
    )


def ticker_event(block_ids: list[UUID]) -> AutomationCore:
    return AutomationCore(
        name=TICKER_EVENT,
        description="A refused batch, stale data, a failed ticker, or a champion promoted, degraded or rolled back.",
        trigger=EventTrigger(
            expect={f"{EVENT_PREFIX}*"},
            match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
            posture=Posture.Reactive,
            threshold=1,
            within=dt.timedelta(0),
        ),
        actions=notify(block_ids, TICKER_EVENT_SUBJECT, TICKER_EVENT_BODY),
    )


def missed_run(block_ids: list[UUID], hours: float) -> AutomationCore:
    window = dt.timedelta(hours=hours)
    if window < dt.timedelta(seconds=MIN_PROACTIVE_SECONDS):
        raise ValueError(
            f"STOCKPIPE_ALERT_MISSED_RUN_HOURS={hours} is under {MIN_PROACTIVE_SECONDS} seconds, "
            "the shortest window Prefect allows a proactive trigger"
        )
    return AutomationCore(
        name=MISSED_RUN,
        description=f"No {FLOW_NAME} flow run completed within {_duration(window)}.",
        # Each completed run opens a window of `within` (the same event in `after` and `expect`: Prefect's heartbeat
        # form), so the alert comes `within` after the last completion, then every second window while none comes.
        # Windows not restarted by each run (no `after`) would be heard of only 2 to 3 windows after the last one.
        trigger=EventTrigger(
            after={"prefect.flow-run.Completed"},
            expect={"prefect.flow-run.Completed"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=DAILY_FLOW,
            posture=Posture.Proactive,
            threshold=1,
            within=window,
        ),
        actions=notify(
            block_ids,
            f"stockpipe: no {FLOW_NAME} run completed in {_duration(window)}",
            MISSED_RUN_BODY.format(flow=FLOW_NAME, window=_duration(window)),
        ),
    )


def automations(settings: Settings, block_ids: list[UUID]) -> list[AutomationCore]:
    return [failed_run(block_ids), ticker_event(block_ids), missed_run(block_ids, settings.alert_missed_run_hours)]


async def _save_block(client: PrefectClient, channel: str, block: NotificationBlock) -> tuple[UUID, Installed]:
    slug = block.get_block_type_slug()
    try:
        await client.read_block_document_by_name(BLOCK_NAME, slug, include_secrets=False)
        outcome = "updated"
    except ObjectNotFound:
        outcome = "created"
    block_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    return block_id, Installed("block", f"{slug}/{BLOCK_NAME}", outcome, f"{channel} channel")


def _comparable(automation: AutomationCore) -> dict[str, Any]:
    """What an automation does, without the ids the server or the client gave it."""
    core = AutomationCore.model_validate(automation.model_dump())
    return core.model_dump(exclude={"trigger": {"id"}})


async def _put_automation(client: PrefectClient, wanted: AutomationCore) -> Installed:
    """Create `wanted`, or update the automation of that name (its duplicates removed), or leave it if it is so."""
    current, *duplicates = await client.read_automations_by_name(wanted.name) or [None]
    if current is None:
        await client.create_automation(wanted)
        return Installed("automation", wanted.name, "created", wanted.description)
    for duplicate in duplicates:
        await client.delete_automation(duplicate.id)
    if _comparable(current) == _comparable(wanted) and not duplicates:
        return Installed("automation", wanted.name, "unchanged", wanted.description)
    # The same trigger id keeps the server's open window: it holds a proactive trigger's bucket by that id.
    wanted.trigger.id = current.trigger.id
    await client.update_automation(current.id, wanted)
    return Installed("automation", wanted.name, "updated", wanted.description)


async def install(settings: Settings) -> list[Installed]:
    """Save the blocks and create or update the automations on the server; what was done, one row each."""
    blocks = notification_blocks(settings)
    automations(settings, [])  # a window Prefect would refuse is refused before anything on the server changes
    async with connected() as client:
        saved = [await _save_block(client, channel, block) for channel, block in blocks.items()]
        rows = [row for _, row in saved]
        for wanted in automations(settings, [block_id for block_id, _ in saved]):
            rows.append(await _put_automation(client, wanted))
    return rows


async def installed() -> list[Installed]:
    """What the server holds of stockpipe's automations and the channels each sends to (names, never URLs)."""
    rows = []
    async with connected() as client:
        for name in AUTOMATION_NAMES:
            found = await client.read_automations_by_name(name)
            if not found:
                rows.append(Installed("automation", name, "missing", "run `stockpipe alerts install`"))
            for automation in found:
                sends = [a for a in automation.actions if isinstance(a, SendNotification)]
                channels = ", ".join([await _block_name(client, a) for a in sends])
                state = "enabled" if automation.enabled else "paused"
                rows.append(Installed("automation", name, state, f"{_trigger_text(automation)} -> {channels}"))
    return rows


async def _block_name(client: PrefectClient, action: SendNotification) -> str:
    try:
        document = await client.read_block_document(action.block_document_id, include_secrets=False)
    except ObjectNotFound:
        return "(block deleted)"
    return f"{document.block_type.slug if document.block_type else '?'}/{document.name}"


def _trigger_text(automation: Automation) -> str:
    trigger = automation.trigger
    if not isinstance(trigger, EventTrigger):
        return type(trigger).__name__
    expect = ", ".join(sorted(trigger.expect))
    if trigger.posture == Posture.Proactive:
        return f"none of {expect} within {_duration(trigger.within)}"
    return expect


@contextlib.asynccontextmanager
async def connected() -> AsyncIterator[PrefectClient]:
    """A client of the server PREFECT_API_URL names, known to answer; its failures said in one line."""
    url = masked_uri(server_url())
    try:
        async with get_client() as client:
            problem = await client.api_healthcheck()
            if problem is not None:
                raise AlertsNotInstalled(f"the Prefect server at {url} does not answer ({type(problem).__name__})")
            yield client
    except httpx.HTTPStatusError as exc:
        status = exc.response.status_code
        hint = ": set PREFECT_API_AUTH_STRING to its user:password" if status in (401, 403) else ""
        raise AlertsNotInstalled(f"the Prefect server at {url} refused the request (HTTP {status}){hint}") from None
    except httpx.TransportError as exc:
        raise AlertsNotInstalled(f"the Prefect server at {url} could not be reached ({type(exc).__name__})") from None
