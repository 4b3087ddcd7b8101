"""Alerts from the run itself, delivered for real: a local HTTP receiver and a local SMTP server on 127.0.0.1
take what the flow sends for a refused batch, a failed ticker and a promotion; with the receiver down the run still
succeeds and says the alert was not delivered. Nothing sent or logged carries the webhook's secret."""

from __future__ import annotations

import datetime as dt
import logging

import pandas as pd
import pytest

from flows.daily import daily_pipeline
from flows.local_server import free_port
from pipeline.common.outcome import Decision, utc_now
from pipeline.common.settings import Settings
from pipeline.data.store import PriceStore
from pipeline.registry.tracking import Tracker
from tests.receiver import Receiver
from tests.support import MSFT_LAST_SESSION, plant_lstm_champion

pytestmark = pytest.mark.integration

AS_OF = MSFT_LAST_SESSION
TOKEN = "hook-token-8f3a2c91"


def event(name):
    return lambda m: m.json.get("event") == name


def run(**params):
    state = daily_pipeline(return_state=True, **params)
    return state, {o.ticker: o for o in state.result(raise_on_failure=False)}


def arrived_within(message, outcome, seconds: float = 60) -> bool:
    finished = dt.datetime.fromisoformat(outcome.finished_at)
    return (message.at - finished).total_seconds() < seconds


def test_refused_batch_failed_ticker_and_promotion_reach_the_webhook(home, csv_dir, monkeypatch, caplog):
    with Receiver() as hook:
        monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK_URL", f"{hook.url}?token={TOKEN}")
        caplog.set_level(logging.INFO)
        csv = {"source": "csv", "csv_dir": str(csv_dir)}
        run(tickers=["MSFT"], as_of=dt.date(2017, 10, 31), **csv)

        clean = pd.read_csv(csv_dir / "MSFT.csv")
        bad = clean.copy()
        bad.loc[bad["Date"] == "2017-11-07", "Close"] = -1.0
        bad.to_csv(csv_dir / "MSFT.csv", index=False)
        state, outcomes = run(tickers=["MSFT", "NOPE"], as_of=AS_OF, **csv)
        assert state.is_failed()
        refused = hook.wait_for(event("batch-refused"), timeout=60).json
        assert refused["ticker"] == "MSFT" and refused["headline"] == "batch refused, nothing stored"
        assert "expect_column_values_to_be_between(Close)" in refused["reason"]
        assert refused["data_day"] == "2017-10-31", "the newest session stored: the refused batch added nothing"
        assert refused["mlflow_run"].startswith("http://127.0.0.1:5000/#/experiments/")
        assert refused["prefect_flow_run"] and "/runs/flow-run/" in refused["prefect_flow_run"]
        assert arrived_within(hook.wait_for(event("batch-refused"), 1), outcomes["MSFT"])
        failed = hook.wait_for(event("ticker-failed"), timeout=60).json
        assert failed["ticker"] == "NOPE" and "NOPE" in failed["reason"]
        assert outcomes["MSFT"].alert_note is None, "delivered: nothing to say"

        clean.to_csv(csv_dir / "MSFT.csv", index=False)
        settings = Settings()
        tracker = Tracker.connect(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
        history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
        plant_lstm_champion(tracker, "MSFT", history, settings.training, return_bias=0.03)
        before = len(hook.received(event("champion-promoted")))
        state, outcomes = run(tickers=["MSFT"], as_of=AS_OF, force=True, **csv)
        assert outcomes["MSFT"].decision is Decision.promoted, outcomes["MSFT"].reason
        promoted = hook.received(event("champion-promoted"))[before:]
        assert len(promoted) == 1, "one message per event"
        assert promoted[0].json["champion"] == f"v{outcomes['MSFT'].model_version}"
        assert arrived_within(promoted[0], outcomes["MSFT"])

        for message in hook.received():
            assert message.path.startswith("/hook") and TOKEN in message.path, "sent to the configured URL"
            assert TOKEN.encode() not in message.body, "the URL's secret is never in a message"
        assert TOKEN not in caplog.text, "nor in the run's log"


def test_with_the_receiver_down_the_run_succeeds_and_says_the_alert_was_not_delivered(home, monkeypatch, caplog):
    closed = f"http://127.0.0.1:{free_port()}/hook?token={TOKEN}"
    monkeypatch.setenv("STOCKPIPE_ALERT_WEBHOOK_URL", closed)
    monkeypatch.setenv("STOCKPIPE_ALERT_RETRIES", "1")
    monkeypatch.setenv("STOCKPIPE_ALERT_RETRY_SECONDS", "0")
    settings = Settings()
    run(tickers=["MSFT"], as_of=AS_OF)
    tracker = Tracker.connect(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
    plant_lstm_champion(tracker, "MSFT", history, settings.training, return_bias=0.03)
    caplog.set_level(logging.WARNING)
    state, outcomes = run(tickers=["MSFT"], as_of=AS_OF, force=True)
    outcome = outcomes["MSFT"]
    assert state.is_completed() and outcome.decision is Decision.promoted, outcome.reason
    assert outcome.alert_note == (
        "alert not delivered: champion-promoted to webhook could not be reached (ConnectError) (after 1 retries)"
    )
    assert "alerts of 1 ticker(s) not delivered" in state.message
    assert "champion-promoted to webhook could not be reached" in caplog.text
    assert TOKEN not in caplog.text and "Traceback" not in caplog.text


def test_an_email_per_event_reaches_a_real_smtp_server(home, csv_dir, monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self):
            super().__init__()
            self.mails = []

        def handle_message(self, message):
            self.mails.append(message)

    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        monkeypatch.setenv("STOCKPIPE_ALERT_EMAIL_TO", '["desk@example.com"]')
        monkeypatch.setenv("STOCKPIPE_ALERT_EMAIL_FROM", "stockpipe@example.com")
        monkeypatch.setenv("STOCKPIPE_ALERT_SMTP_SERVER", "127.0.0.1")
        monkeypatch.setenv("STOCKPIPE_ALERT_SMTP_PORT", str(port))
        monkeypatch.setenv("STOCKPIPE_ALERT_SMTP_SECURITY", "INSECURE")
        sent_after = utc_now()
        _, outcomes = run(tickers=["NOPE"], source="csv", csv_dir=str(csv_dir), as_of=AS_OF)
        assert outcomes["NOPE"].decision is Decision.failed and outcomes["NOPE"].alert_note is None
        (mail,) = inbox.mails
        assert mail["Subject"] == "stockpipe NOPE: the day failed"
        assert mail["To"] == "desk@example.com" and mail["From"] == "stockpipe@example.com"
        plain = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True)
        assert b"Prefect flow run:" in plain and b"NOPE" in plain
        assert outcomes["NOPE"].finished_at >= sent_after[:19]
    finally:
        controller.stop()
