"""Alerts from the run itself: each message to every channel the settings name, through Prefect's notification
blocks, and each event to Prefect's event stream (resource `stockpipe.ticker.<T>`) for a team's own automations.

Works on every path, `make run` with no server included. A channel that does not accept a message is retried, then
the failure is logged and said in the ticker's outcome; it never fails the ticker. What is logged names the channel
and the kind of failure, never the channel's URL (Slack and Teams URLs are their secrets) nor the server's answer.
"""

from __future__ import annotations

import asyncio
import html
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prefect import task
from prefect.blocks.abstract import NotificationError
from prefect.blocks.notifications import CustomWebhookNotificationBlock, MicrosoftTeamsWebhook, SlackWebhook
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.utilities.urls import url_for
from pydantic import SecretStr

from pipeline.alerts import Alert, alerts_for
from pipeline.common.outcome import TickerOutcome
from pipeline.common.settings import Settings

log = logging.getLogger("pipeline.flow.alerts")


class AlertNotDelivered(RuntimeError):
    """A channel did not take a message; the text says which channel and how, nothing it answered."""


class ChannelMisconfigured(ValueError):
    """A channel's settings cannot make a channel; the text names the setting, never its value."""


@dataclass(frozen=True)
class Channel:
    name: str
    send: Callable[[Alert], None]
    # Why this channel cannot send (its settings cannot make it); nothing is tried, let alone retried.
    problem: str | None = None


class _ChannelRequestsUnlogged(logging.Filter):
    """httpx logs every request's full URL at INFO; a channel's URL is its secret (Slack's path, a token in the
    query), so requests to a channel are not logged at all. Installed once; the URLs are kept as a set."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(url in message for url in self.urls)


_UNLOGGED = _ChannelRequestsUnlogged()


def _unlogged(url: str) -> str:
    if _UNLOGGED not in logging.getLogger("httpx").filters:
        logging.getLogger("httpx").addFilter(_UNLOGGED)
    _UNLOGGED.urls.add(url.split("?")[0])
    return url


def channels(settings: Settings) -> list[Channel]:
    """One channel per destination set in the settings; none set, none built. A channel that cannot be built (a
    Teams URL that is not a Workflows URL, email without a server) still stands with its problem, so the others
    deliver and the outcome says which one is not set up."""
    for secret in (settings.alert_webhook_url, settings.alert_slack_url, settings.alert_teams_url):
        if secret:
            _unlogged(secret.get_secret_value())
    builders: dict[str, Callable[[], Callable[[Alert], None]]] = {}
    if settings.alert_webhook_url:
        builders["webhook"] = lambda: _webhook(settings.alert_webhook_url.get_secret_value())
    if settings.alert_slack_url:
        builders["slack"] = lambda: _apprise(
            apprise_block("STOCKPIPE_ALERT_SLACK_URL", SlackWebhook, settings.alert_slack_url)
        )
    if settings.alert_teams_url:
        builders["teams"] = lambda: _apprise(
            apprise_block("STOCKPIPE_ALERT_TEAMS_URL", MicrosoftTeamsWebhook, settings.alert_teams_url)
        )
    if settings.alert_email_to:
        builders["email"] = lambda: _email(settings)
    return [_built(name, build) for name, build in builders.items()]


def _built(name: str, build: Callable[[], Callable[[Alert], None]]) -> Channel:
    try:
        return Channel(name, build())
    except Exception as exc:
        return Channel(name, _never_sent, problem=_misconfigured(name, exc))


def _never_sent(alert: Alert) -> None:
    raise ChannelMisconfigured("not set up")


def _misconfigured(name: str, exc: Exception) -> str:
    # Our own messages name the missing setting; a library's may quote the URL it was given, so only its kind.
    detail = str(exc) if isinstance(exc, ChannelMisconfigured) else type(exc).__name__
    return f"{name} is not set up right ({detail})"


def apprise_block(
    setting: str, kind: type[SlackWebhook | MicrosoftTeamsWebhook], url: SecretStr
) -> SlackWebhook | MicrosoftTeamsWebhook:
    """The block, or a ValueError naming the setting only: Apprise logs what it finds wrong in a URL (a Slack token
    it quotes), and that URL is the channel's secret, so its logger is off meanwhile."""
    apprise = logging.getLogger("apprise")
    was_disabled, apprise.disabled = apprise.disabled, True
    try:
        return kind(url=url)
    except Exception as exc:
        raise ValueError(f"{setting} is not a URL the {kind.__name__} block accepts ({type(exc).__name__})") from None
    finally:
        apprise.disabled = was_disabled


def _webhook(url: str) -> Callable[[Alert], None]:
    def send(alert: Alert) -> None:
        # A block per message: its JSON payload is the message itself.
        block = CustomWebhookNotificationBlock(name="stockpipe", url=url, json_data=alert.json_message())
        block.notify(body=alert.text(), subject=alert.subject)

    return send


def _apprise(block: SlackWebhook | MicrosoftTeamsWebhook) -> Callable[[Alert], None]:
    def send(alert: Alert) -> None:
        # Apprise only reports failure when asked to; its log text may quote the URL, so it is not passed on.
        with block.raise_on_failure():
            block.notify(body=alert.text(), subject=alert.subject)

    return send


def _email(settings: Settings) -> Callable[[Alert], None]:
    if not settings.alert_smtp_server:
        raise ChannelMisconfigured("STOCKPIPE_ALERT_EMAIL_TO is set but STOCKPIPE_ALERT_SMTP_SERVER is not")
    from prefect_email import EmailServerCredentials, email_send_message

    credentials = EmailServerCredentials(
        username=settings.alert_smtp_username,
        password=settings.alert_smtp_password.get_secret_value() if settings.alert_smtp_password else "",
        smtp_server=settings.alert_smtp_server,
        smtp_type=settings.alert_smtp_security,
        smtp_port=settings.alert_smtp_port,
    )

    def send(alert: Alert) -> None:
        sending = email_send_message.fn(
            subject=alert.subject,
            msg=f"<pre>{html.escape(alert.text())}</pre>",
            msg_plain=alert.text(),
            email_server_credentials=credentials,
            email_from=settings.alert_email_from or settings.alert_smtp_username,
            email_to=settings.alert_email_to,
        )
        asyncio.run(sending)

    return send


def _failure(channel: str, exc: BaseException) -> str:
    if isinstance(exc, ChannelMisconfigured):
        return str(exc)
    if isinstance(exc, httpx.HTTPStatusError):
        return f"{channel} answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.TimeoutException):
        return f"{channel} did not answer in time"
    if isinstance(exc, (httpx.TransportError, ConnectionError, OSError)):
        return f"{channel} could not be reached ({type(exc).__name__})"
    if isinstance(exc, NotificationError):
        return f"{channel} did not accept the message"
    return f"{channel} failed ({type(exc).__name__})"


def _send(channel: Channel, alert: Alert) -> None:
    try:
        channel.send(alert)
    except Exception as exc:
        raise AlertNotDelivered(_failure(channel.name, exc)) from None


send_alert = task(_send, name="alert", task_run_name="alert-{channel.name}-{alert.event}", cache_policy=NO_CACHE)


def emit(alert: Alert) -> None:
    """The alert as a Prefect event: automations on a server match `stockpipe.*` events on `stockpipe.ticker.*`."""
    try:
        emit_event(
            event=alert.event.event_name,
            resource={
                "prefect.resource.id": alert.resource_id,
                "prefect.resource.name": alert.ticker,
                "stockpipe.ticker": alert.ticker,
            },
            payload=alert.model_dump(mode="json"),
        )
    except Exception as exc:  # the event stream is for others' automations; it must not cost the ticker anything
        log.warning("%s: the %s event was not emitted (%s)", alert.ticker, alert.event, type(exc).__name__)


def raise_alerts(outcome: TickerOutcome, settings: Settings) -> TickerOutcome:
    """Emit and deliver the alerts the ticker's day raises; the outcome comes back saying what was not delivered."""
    alerts = alerts_for(outcome, _flow_run_url())
    if not alerts:
        return outcome
    for alert in alerts:
        emit(alert)
    targets = channels(settings)
    undelivered = []
    for alert in alerts:
        for channel in targets:
            if channel.problem:
                undelivered.append(f"{alert.event} to {channel.problem}")
                continue
            attempt = send_alert.with_options(
                retries=settings.alert_retries, retry_delay_seconds=settings.alert_retry_seconds
            )
            state = attempt(channel, alert, return_state=True)
            if state.is_failed():
                undelivered.append(f"{alert.event} to {_failure_text(state)}")
    if not undelivered:
        return outcome
    note = f"alert not delivered: {'; '.join(undelivered)} (after {settings.alert_retries} retries)"
    log.warning("%s: %s", outcome.ticker, note)
    return outcome.replace(alert_note=note)


def _failure_text(state) -> str:
    try:
        state.result()
    except AlertNotDelivered as exc:
        return str(exc)
    except Exception as exc:
        return type(exc).__name__
    return "unknown"


def _flow_run_url() -> str | None:
    # url_for gives the UI's own route (runs/flow-run/<id>); the runtime's ui_url is an older one it redirects.
    try:
        return url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None
    except Exception:
        return None
