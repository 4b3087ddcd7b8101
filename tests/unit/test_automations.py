"""The server's automations as built from the settings, and their messages as the server's own template engine
renders them, with no server (tests/system/test_alerts_server.py installs them on a real one and hears them fire)."""

from __future__ import annotations

import asyncio
import datetime as dt
from uuid import uuid4

import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
from prefect.events.schemas.automations import Posture
from prefect.server.events.jinja_filters import all_filters
from prefect.server.events.schemas.events import ReceivedEvent
from prefect.server.schemas.core import Flow, FlowRun
from prefect.server.schemas.states import Failed
from prefect.server.utilities.user_templates import register_user_template_filters, render_user_template
from prefect.settings import PREFECT_UI_URL, temporary_settings

from flows import automations
from flows.automations import NoChannel, notification_blocks
from pipeline.alerts import Alert, AlertKind
from pipeline.common.settings import Settings

HOOK = "http://127.0.0.1:8123/hook?token=s3cret-token"
SLACK = "https://hooks.slack.com/services/T000/B000/s3cretXXXX"
TEAMS = "https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=s3cret"


def settings(**values) -> Settings:
    return Settings.model_validate({"alert_missed_run_hours": 26, **values})


def render(template: str, **context) -> str:
    register_user_template_filters(all_filters)  # as the server's SendNotification does before rendering
    return asyncio.run(render_user_template(template, context))


def test_one_block_per_channel_the_server_can_send_to_and_none_without_one():
    with pytest.raises(NoChannel, match="STOCKPIPE_ALERT_WEBHOOK_URL"):
        notification_blocks(settings())
    with pytest.raises(NoChannel, match="email.*runs themselves"):
        notification_blocks(settings(alert_email_to=["ops@example.com"], alert_smtp_server="smtp.example.com"))
    blocks = notification_blocks(settings(alert_webhook_url=HOOK, alert_slack_url=SLACK, alert_teams_url=TEAMS))
    assert [(name, type(block)) for name, block in blocks.items()] == [
        ("webhook", CustomWebhookNotificationBlock),
        ("slack", SlackWebhook),
        ("teams", MicrosoftTeamsWebhook),
    ]
    webhook = blocks["webhook"]
    assert isinstance(webhook, CustomWebhookNotificationBlock)
    # The URL (its token) is among the block's secrets: what the server shows of the block does not hold it.
    assert "s3cret" not in webhook.url and "s3cret" not in str(webhook.model_dump())
    sent = webhook._build_request_args("b", "s")
    assert sent["url"] == HOOK and sent["json"] == {"source": "prefect-automation", "subject": "s", "body": "b"}
    # A message quoting the placeholder (a reason from a data file) cannot pull the secret into what is sent.
    assert webhook._build_request_args("{{webhook_url}}", "s")["json"]["body"] == "{{webhook_url}}"


def test_a_channel_url_its_block_refuses_is_named_by_its_setting_and_never_shown(caplog):
    with pytest.raises(
        ValueError, match="^STOCKPIPE_ALERT_TEAMS_URL is not a URL the MicrosoftTeamsWebhook block"
    ) as e:
        notification_blocks(settings(alert_teams_url="https://s3cret.example/teams"))
    notification_blocks(settings(alert_slack_url="https://hooks.slack.com/s3cret"))  # Apprise cannot parse it
    assert "s3cret" not in str(e.value) and "s3cret" not in caplog.text


def test_three_automations_a_failed_run_a_ticker_event_and_a_missed_run():
    block = uuid4()
    failed, ticker, missed = automations.automations(settings(alert_missed_run_hours=26), [block])
    assert [a.name for a in (failed, ticker, missed)] == list(automations.AUTOMATION_NAMES)
    for automation in (failed, ticker, missed):
        (action,) = automation.actions
        assert action.block_document_id == block
    daily = {"prefect.resource.role": "flow", "prefect.resource.name": "daily-pipeline"}

    assert failed.trigger.posture == Posture.Reactive
    assert failed.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut"}
    assert failed.trigger.match_related.model_dump() == daily

    assert ticker.trigger.posture == Posture.Reactive and ticker.trigger.expect == {"stockpipe.*"}
    assert ticker.trigger.match.model_dump() == {"prefect.resource.id": "stockpipe.ticker.*"}
    assert all(kind.event_name.startswith("stockpipe.") for kind in AlertKind)

    assert missed.trigger.posture == Posture.Proactive and missed.trigger.expect == {"prefect.flow-run.Completed"}
    assert missed.trigger.threshold == 1 and missed.trigger.within == dt.timedelta(hours=26)
    assert missed.trigger.match_related.model_dump() == daily
    assert missed.trigger.after == missed.trigger.expect, "each completed run opens the next window"


def test_the_flow_they_watch_is_the_daily_flow():
    from flows.daily import daily_pipeline

    assert daily_pipeline.name == automations.FLOW_NAME


def test_a_missed_run_window_prefect_would_refuse_is_refused_before_anything_is_installed():
    with pytest.raises(ValueError, match="under 10 seconds"):
        automations.automations(settings(alert_missed_run_hours=9 / 3600), [uuid4()])
    (_, _, missed) = automations.automations(settings(alert_missed_run_hours=10 / 3600), [uuid4()])
    assert missed.trigger.within == dt.timedelta(seconds=10)


def test_a_ticker_event_reads_as_the_runs_own_message():
    alert = Alert(
        ticker="MSFT",
        event=AlertKind.champion_promoted,
        headline="new champion",
        reason="challenger beat the champion: RMSE 0.91 vs 1.02",
        data_day="2017-11-10",
        champion="v3",
        mlflow_run="http://127.0.0.1:5000/#/experiments/1/runs/abc",
        prefect_flow_run="http://127.0.0.1:4200/runs/flow-run/def",
        at="2017-11-10T23:00:00+00:00",
    )
    event = ReceivedEvent(
        occurred=dt.datetime.now(dt.UTC),
        event=alert.event.event_name,
        resource={
            "prefect.resource.id": alert.resource_id,
            "prefect.resource.name": "MSFT",
            "stockpipe.ticker": "MSFT",
        },
        payload=alert.model_dump(mode="json"),
        id=uuid4(),
    )
    assert render(automations.TICKER_EVENT_SUBJECT, event=event) == alert.subject
    assert render(automations.TICKER_EVENT_BODY, event=event).splitlines() == alert.text().splitlines()[1:]

    failed = event.model_copy(
        update={"payload": {**event.payload, "data_day": None, "champion": None, "mlflow_run": None}}
    )
    assert render(automations.TICKER_EVENT_BODY, event=failed).splitlines() == [
        "challenger beat the champion: RMSE 0.91 vs 1.02",
        "Prefect flow run: http://127.0.0.1:4200/runs/flow-run/def",
    ]


def test_a_failed_run_names_the_run_its_state_message_and_links_to_it_when_the_server_knows_its_ui():
    flow = Flow(name="daily-pipeline")
    run = FlowRun(
        id=uuid4(), name="daily latest NOPE", flow_id=flow.id, state=Failed(message="1 of 1 ticker(s) failed: NOPE")
    )
    assert render(automations.FAILED_RUN_SUBJECT, flow_run=run) == 'stockpipe: flow run "daily latest NOPE" Failed'
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4200"}):
        body = render(automations.FAILED_RUN_BODY, flow=flow, flow_run=run)
    assert body.splitlines() == [
        'The daily-pipeline flow run "daily latest NOPE" ended Failed: 1 of 1 ticker(s) failed: NOPE',
        f"Flow run: http://127.0.0.1:4200/runs/flow-run/{run.id}",
    ]
    with temporary_settings({PREFECT_UI_URL: None}):
        assert "Flow run:" not in render(automations.FAILED_RUN_BODY, flow=flow, flow_run=run)


def test_a_missed_run_says_how_long_nothing_completed_and_what_to_look_at():
    (_, _, missed) = automations.automations(settings(alert_missed_run_hours=26), [uuid4()])
    (action,) = missed.actions
    assert action.subject == "stockpipe: no daily-pipeline run completed in 26 hours"
    with temporary_settings({PREFECT_UI_URL: None}):
        body = render(action.body, automation=None)
    assert body.startswith("No daily-pipeline flow run has completed in the last 26 hours")
    assert "worker" in body and "schedule" in body and "{" not in body
