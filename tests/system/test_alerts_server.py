"""Alerts from a real Prefect server: `stockpipe alerts install` against `prefect server start` (requiring an auth
string, as the compose stack's does), a local HTTP receiver on 127.0.0.1 as the webhook, and a real daily run.

Installed twice, the server holds one notification block and one of each automation, the second install changing
nothing. A daily run against the server with a ticker that has no data fails the ticker and the flow run: the
ticker's event and the failed run each reach the receiver through the server's automations within 60 s, once each
(the run itself is given no channel, so what arrives came from the server). The missed-run window is shortened to
12 s (Prefect's minimum for a proactive trigger is 10 s) and the server evaluates proactive triggers every second
(PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY, 5 s by default): with no run ever completed, the missed run arrives
a window after the install; while runs of the daily flow complete every few seconds it stays quiet, and it is heard
of again a window after the last one. An unreachable server, refused credentials, no channel and a window Prefect
would refuse each end the command with one line and exit code 1, changing nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.automations import AUTOMATION_NAMES, BLOCK_NAME, FAILED_RUN, MISSED_RUN, TICKER_EVENT
from tests.receiver import Received, Receiver
from tests.servers import HttpServer, clean_env, free_port, prefect_server
from tests.support import TINY_TRAINING, stockpipe

pytestmark = pytest.mark.system

WINDOW_SECONDS = 12
TOKEN = secrets.token_hex(12)


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as hook:
        yield hook


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("alerts-server")
    port = free_port()
    env = {"PREFECT_UI_URL": f"http://127.0.0.1:{port}", "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": "PT1S"}
    began = time.monotonic()
    auth = f"stockpipe:{secrets.token_hex(16)}"
    with prefect_server(root / "home", root / "prefect.log", port=port, auth_string=auth, env=env) as prefect:
        print(f"\nprefect server ready in {time.monotonic() - began:.1f} s")
        yield prefect


def client_env(server: HttpServer, root: Path, **settings: str) -> dict[str, str]:
    """A client of the server, with nothing of this process's settings: its URL, its credentials, fresh state."""
    return clean_env(
        PREFECT_API_URL=server.url,
        PREFECT_API_AUTH_STRING=server.auth or "",
        PREFECT_HOME=str(root / "client-prefect"),
        STOCKPIPE_HOME=str(root / "state"),
        **TINY_TRAINING,
        **settings,
    )


def from_server(subject: str):
    return lambda m: m.json.get("source") == "prefect-automation" and m.json.get("subject", "").startswith(subject)


@pytest.fixture(scope="module")
def installed(server, receiver, tmp_path_factory):
    """Installed twice, as a deploy step run again would; when the first ended (its window opened then)."""
    root = tmp_path_factory.mktemp("install")
    env = client_env(
        server,
        root,
        STOCKPIPE_ALERT_WEBHOOK_URL=f"{receiver.url}?token={TOKEN}",
        STOCKPIPE_ALERT_MISSED_RUN_HOURS=str(WINDOW_SECONDS / 3600),
    )
    outputs, ended = [], []
    for _ in range(2):
        began = time.time()
        result = stockpipe("alerts", "install", cwd=root, env=env)
        ended.append(time.time())
        print(f"stockpipe alerts install: {ended[-1] - began:.1f} s")
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout + result.stderr)
    return ended[0], outputs, env, root


def test_installing_twice_leaves_one_block_and_one_of_each_automation(server, installed):
    _, (first, second), env, root = installed
    for name in AUTOMATION_NAMES:
        assert any(name in line and "created" in line for line in first.splitlines()), first
        assert any(name in line and "unchanged" in line for line in second.splitlines()), second
    assert any(f"custom-webhook/{BLOCK_NAME}" in line and "updated" in line for line in second.splitlines()), second

    automations = server.post("/automations/filter", {})
    assert sorted(a["name"] for a in automations) == sorted(AUTOMATION_NAMES)
    assert all(a["enabled"] for a in automations)
    blocks = [b for b in server.post("/block_documents/filter", {}) if not b.get("is_anonymous")]
    assert [(b["block_type"]["slug"], b["name"]) for b in blocks] == [("custom-webhook", BLOCK_NAME)]
    (block,) = blocks
    assert {a["actions"][0]["block_document_id"] for a in automations} == {block["id"]}
    # What the server shows of the block, and what the commands printed, never holds the webhook's token.
    assert TOKEN not in str(block) and TOKEN not in first + second

    shown = stockpipe("alerts", "show", cwd=root, env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    for name in AUTOMATION_NAMES:
        assert any(name in line and "enabled" in line for line in shown.stdout.splitlines()), shown.stdout
    assert "none of prefect.flow-run.Completed within 12 seconds" in shown.stdout
    assert TOKEN not in shown.stdout + shown.stderr


def test_a_failed_ticker_and_the_failed_run_reach_the_webhook_through_the_server(server, receiver, installed):
    _, _, _, root = installed
    empty = root / "no-prices"
    empty.mkdir()
    # The run itself is given no channel: whatever arrives, the server's automations sent.
    env = client_env(server, root / "run")
    began = time.time()
    result = stockpipe("run", "--tickers", "NOPE", "--source", "csv", "--csv-dir", str(empty), cwd=root, env=env)
    ended = time.time()
    print(f"stockpipe run against the server: {ended - began:.1f} s")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "NOPE" in result.stdout and "failed" in result.stdout

    ticker = receiver.wait_for(from_server("stockpipe NOPE: the day failed"), timeout=60)
    failed = receiver.wait_for(from_server('stockpipe: flow run "daily latest NOPE" Failed'), timeout=60)
    (run,) = server.post("/flow_runs/filter", {"flows": {"name": {"any_": ["daily-pipeline"]}}})
    flow_run_ended = dt.datetime.fromisoformat(run["end_time"]).timestamp()
    for message, what in ((ticker, TICKER_EVENT), (failed, FAILED_RUN)):
        print(f"{what}: arrived {arrival(message, flow_run_ended):+.2f} s after the flow run ended (server's clock)")
        assert arrival(message, flow_run_ended) < 60 and arrival(message, ended) < 60
        assert TOKEN in message.path and TOKEN not in message.body.decode(), "sent to the URL, which is not told"
    assert "no price file for NOPE" in ticker.json["body"]
    assert f"Prefect flow run: {server.url.removesuffix('/api')}/runs/flow-run/{run['id']}" in ticker.json["body"]
    assert failed.json["body"].splitlines() == [
        'The daily-pipeline flow run "daily latest NOPE" ended Failed: 1 of 1 ticker(s) failed: NOPE',
        f"Flow run: {server.url.removesuffix('/api')}/runs/flow-run/{run['id']}",
    ]
    time.sleep(2)
    assert len(receiver.received(from_server("stockpipe NOPE:"))) == 1, "one message per event"
    assert len(receiver.received(from_server("stockpipe: flow run"))) == 1


# Every kind of alert, emitted as the flow emits it (flows.alerts.emit), by a client of the server.
EMITTING = """
from flows.alerts import emit
from pipeline.alerts import HEADLINES, Alert, AlertKind

for kind in AlertKind:
    emit(Alert(ticker="ZZZ", event=kind, headline=HEADLINES[kind], reason=f"because {kind.value}", at="2017-11-10"))
"""


def test_every_kind_of_ticker_event_reaches_the_webhook(server, receiver, installed, tmp_path):
    from pipeline.alerts import HEADLINES, AlertKind

    result = subprocess.run(
        [sys.executable, "-c", EMITTING], env=client_env(server, tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for kind in AlertKind:
        message = receiver.wait_for(from_server(f"stockpipe ZZZ: {HEADLINES[kind]}"), timeout=60)
        assert message.json["body"] == f"because {kind.value}"


def arrival(message: Received, then: float) -> float:
    """Seconds from `then` (time.time()) to when the receiver got the message."""
    return message.at.timestamp() - then


def test_a_missed_run_arrives_when_no_run_completes_within_the_window(receiver, installed):
    installed_at, *_ = installed
    missed = receiver.wait_for(from_server("stockpipe: no daily-pipeline run completed in 12 seconds"), timeout=90)
    late = arrival(missed, installed_at) - WINDOW_SECONDS
    print(f"{MISSED_RUN}: arrived {late:+.1f} s after the window's end")
    assert -2 < late < 60, "a window after the install, when no run ever completed"
    assert missed.json["body"].startswith("No daily-pipeline flow run has completed in the last 12 seconds")
    assert "/automations/automation/" in missed.json["body"]


# Runs of a flow named as the daily one, completing every few seconds: what the missed-run automation expects.
COMPLETING = """
import sys, time
from prefect import flow

@flow(name="daily-pipeline")
def daily_pipeline():
    return None

for _ in range(int(sys.argv[1])):
    daily_pipeline()
    print(time.time(), flush=True)
    time.sleep(2)
"""


def test_runs_completing_within_the_window_keep_the_missed_run_automation_quiet(server, receiver, tmp_path):
    missed = from_server("stockpipe: no daily-pipeline run completed")
    result = subprocess.run(
        [sys.executable, "-c", COMPLETING, "14"],
        env=client_env(server, tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    completed = [float(line) for line in result.stdout.split()]
    assert max(b - a for a, b in itertools.pairwise(completed)) < WINDOW_SECONDS / 2
    # A window that ended before the first completion may still be heard of, within a second's evaluation period.
    quiet_from, quiet_to = completed[0] + 3, completed[-1]
    assert quiet_to - quiet_from > 2 * WINDOW_SECONDS, "long enough for the automation to have fired twice"
    heard = [m.at.timestamp() - quiet_from for m in receiver.received(missed)]
    assert not [t for t in heard if 0 <= t <= quiet_to - quiet_from], f"fired while runs completed: {heard}"
    # With the runs stopped, it is heard of one window after the last completed run.
    again = receiver.wait_for(lambda m: missed(m) and m.at.timestamp() > quiet_to, timeout=WINDOW_SECONDS + 60)
    late = arrival(again, completed[-1]) - WINDOW_SECONDS
    print(f"{MISSED_RUN}: quiet through {quiet_to - quiet_from:.0f} s of completing runs, then {late:+.1f} s late")
    assert -2 < late < 60


def test_the_command_refuses_in_one_line_without_a_server_a_login_a_channel_or_a_valid_window(server, tmp_path):
    hook = {"STOCKPIPE_ALERT_WEBHOOK_URL": f"http://127.0.0.1:9/hook?token={TOKEN}"}
    cases = {
        "no channel": (client_env(server, tmp_path), "no alert channel for the server"),
        "closed port": (
            {**client_env(server, tmp_path, **hook), "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
            "does not answer",
        ),
        "wrong login": (
            {**client_env(server, tmp_path, **hook), "PREFECT_API_AUTH_STRING": f"stockpipe:{secrets.token_hex(8)}"},
            "refused the request (HTTP 401): set PREFECT_API_AUTH_STRING",
        ),
        "no server": ({**client_env(server, tmp_path, **hook), "PREFECT_API_URL": ""}, "set PREFECT_API_URL"),
        "window too short": (
            client_env(server, tmp_path, **hook, STOCKPIPE_ALERT_MISSED_RUN_HOURS=str(5 / 3600)),
            "under 10 seconds",
        ),
    }
    before = server.post("/automations/filter", {})
    for case, (env, said) in cases.items():
        result = stockpipe("alerts", "install", cwd=tmp_path, env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 1, (case, output)
        assert said in output and "Traceback" not in output, (case, output)
        assert TOKEN not in output and (server.auth or "-") not in output, case
    assert server.post("/automations/filter", {}) == before, "nothing changed on the server"

    quiet = stockpipe("alerts", "install", "--if-configured", cwd=tmp_path, env=client_env(server, tmp_path))
    assert quiet.returncode == 0 and "alerts not installed: no alert channel" in quiet.stdout, quiet.stderr
