"""What a ticker's day raises and what the messages carry: the pure half of alerts, and the channels the settings
build (no message is sent here; tests/integration/test_alerts.py delivers them for real)."""

from __future__ import annotations

import logging

import httpx
import pytest

from flows.alerts import _UNLOGGED, AlertNotDelivered, Channel, _failure, _send, channels
from pipeline.alerts import AlertKind, alerts_for, kinds_for
from pipeline.common.outcome import Decision, TickerOutcome
from pipeline.common.settings import Settings
from pipeline.data.ingest import DataContractViolation, HistoryWouldShrink, StaleData
from pipeline.failures import failure_family


def outcome(decision=Decision.kept, **fields):
    return TickerOutcome("MSFT", decision, fields.pop("reason", "why"), **fields)


@pytest.mark.parametrize(
    ("day", "kinds"),
    [
        (outcome(), []),
        (outcome(Decision.skipped), []),
        (outcome(Decision.promoted), [AlertKind.champion_promoted]),
        (outcome(Decision.failed, failure="BatchRefused"), [AlertKind.batch_refused]),
        (outcome(Decision.failed, failure="StaleData"), [AlertKind.stale_data]),
        (outcome(Decision.failed, failure="SourceError"), [AlertKind.ticker_failed]),
        (outcome(Decision.failed), [AlertKind.ticker_failed]),
        (outcome(degradation="U2 1.4 over 60 sessions"), [AlertKind.champion_degraded]),
        (
            outcome(Decision.promoted, degradation="coverage 61%", rolled_back=True),
            [AlertKind.champion_rolled_back, AlertKind.champion_promoted],
        ),
    ],
)
def test_each_day_raises_the_events_it_should(day, kinds):
    assert kinds_for(day) == kinds


def test_every_refused_batch_is_one_family_whatever_refused_it():
    assert failure_family(DataContractViolation("MSFT", "x", None)) == "BatchRefused"
    assert failure_family(HistoryWouldShrink("MSFT", "x", None)) == "BatchRefused"
    assert failure_family(StaleData("x")) == "StaleData"
    assert failure_family(KeyError("x")) == "KeyError"


def test_a_message_names_what_happened_and_links_to_both_runs():
    day = outcome(
        Decision.promoted,
        reason="challenger beat champion on 250 sessions",
        data_end="2018-01-05",
        champion_version="7",
        run_url="http://mlflow/#/experiments/1/runs/abc",
    )
    (alert,) = alerts_for(day, "http://prefect/runs/flow-run/f1")
    assert alert.subject == "stockpipe MSFT: new champion"
    assert alert.resource_id == "stockpipe.ticker.MSFT" and alert.event.event_name == "stockpipe.champion-promoted"
    message = alert.json_message()
    assert message["champion"] == "v7" and message["data_day"] == "2018-01-05"
    assert message["mlflow_run"].endswith("/runs/abc") and message["prefect_flow_run"].endswith("/f1")
    assert alert.text().splitlines() == [
        "stockpipe MSFT: new champion",
        "challenger beat champion on 250 sessions",
        "data to 2018-01-05",
        "champion serving: v7",
        "MLflow run: http://mlflow/#/experiments/1/runs/abc",
        "Prefect flow run: http://prefect/runs/flow-run/f1",
    ]


def test_a_degradation_alert_gives_the_live_records_verdict_not_the_days_decision():
    day = outcome(Decision.kept, reason="kept v3", degradation="U2 1.40 > 1 over 60 sessions", rolled_back=True)
    (alert,) = alerts_for(day)
    assert alert.event is AlertKind.champion_rolled_back and alert.reason == "U2 1.40 > 1 over 60 sessions"


def test_no_secret_and_no_placeholder_from_a_data_file_reaches_a_message():
    reason = "bad row\x1b[31m password=hunter22 {{ body }} http://u:s3cretpw@host/x " + "x" * 2000
    (alert,) = alerts_for(outcome(Decision.failed, reason=reason))
    message = alert.json_message()
    assert "hunter22" not in message["reason"] and "s3cretpw" not in message["reason"]
    assert "{{" not in message["reason"] and "\x1b" not in message["reason"]
    assert len(message["reason"]) <= 600


def test_channels_are_built_from_the_settings_only():
    assert channels(Settings(_env_file=None)) == []
    built = channels(
        Settings(
            _env_file=None,
            alert_webhook_url="http://127.0.0.1:9/hook?token=abcdef123",
            alert_slack_url="https://hooks.slack.com/services/T000/B000/XXXXXXXX",
            alert_teams_url="https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=XYZ",
            alert_email_to=["desk@example.com"],
            alert_smtp_server="smtp.example.com",
        )
    )
    assert [(c.name, c.problem) for c in built] == [(name, None) for name in ("webhook", "slack", "teams", "email")]


def test_a_channel_that_cannot_be_built_says_why_and_the_others_still_stand():
    secret = "https://outlook.office.com/webhook/old-style-secret-9f2"
    built = channels(
        Settings(
            _env_file=None,
            alert_webhook_url="http://127.0.0.1:9/hook",
            alert_teams_url=secret,
            alert_email_to=["desk@example.com"],
        )
    )
    assert [(c.name, c.problem) for c in built] == [
        ("webhook", None),
        ("teams", "teams is not set up right (ValueError)"),
        ("email", "email is not set up right (STOCKPIPE_ALERT_EMAIL_TO is set but STOCKPIPE_ALERT_SMTP_SERVER is not)"),
    ]
    assert all(secret not in (c.problem or "") for c in built)


def test_a_channels_url_is_never_logged_by_its_http_client(caplog):
    channels(Settings(_env_file=None, alert_webhook_url="http://127.0.0.1:9/hook-unit?token=abcdef123"))
    caplog.set_level(logging.INFO, logger="httpx")
    logging.getLogger("httpx").info('HTTP Request: POST http://127.0.0.1:9/hook-unit?token=abcdef123 "200 OK"')
    logging.getLogger("httpx").info("HTTP Request: POST http://127.0.0.1:4200/api/logs/")
    assert "abcdef123" not in caplog.text and "/api/logs/" in caplog.text
    assert _UNLOGGED in logging.getLogger("httpx").filters


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (httpx.ConnectError("refused http://x/?token=abcdef123"), "webhook could not be reached (ConnectError)"),
        (httpx.ReadTimeout("slow"), "webhook did not answer in time"),
        (
            httpx.HTTPStatusError(
                "503 at http://x/?token=abcdef123",
                request=httpx.Request("POST", "http://x/"),
                response=httpx.Response(503),
            ),
            "webhook answered HTTP 503",
        ),
        (RuntimeError("token=abcdef123"), "webhook failed (RuntimeError)"),
    ],
)
def test_an_undelivered_alert_says_how_without_the_url_or_the_answer(exc, text):
    assert _failure("webhook", exc) == text

    def refuse(alert):
        raise exc

    (alert,) = alerts_for(outcome(Decision.promoted))
    with pytest.raises(AlertNotDelivered) as caught:
        _send(Channel("webhook", refuse), alert)
    assert str(caught.value) == text and caught.value.__cause__ is None


def test_a_url_apprise_finds_wrong_is_not_logged_by_it(caplog):
    # Apprise warns "An invalid Slack (first) Token (<the token>) was specified" while the block is built.
    caplog.set_level(logging.DEBUG)
    (slack,) = channels(Settings(_env_file=None, alert_slack_url="slack://zz-secret-77"))
    assert slack.name == "slack" and "zz-secret-77" not in caplog.text
