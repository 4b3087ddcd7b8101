"""Against a real `prefect server start`: the `daily` deployment served, triggered by hand, scheduled, and safe
when two runs of the same ticker start at once."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from pipeline.promotion import CHAMPION_ALIAS, KEPT, PROMOTED, SKIPPED
from pipeline.symbols import registered_model_name
from tests.integration.conftest import TINY_TRAINING
from tests.servers import api_post, clean_env, prefect_server, started, wait_for_flow_run

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server on a free loopback port, with its own database."""
    root = tmp_path_factory.mktemp("prefect-server")
    with prefect_server(root / "home", root / "server.log") as server:
        yield server.url


def pipeline_env(api: str, home: Path) -> dict[str, str]:
    return clean_env(
        **TINY_TRAINING, STOCKPIPE_HOME=str(home), PREFECT_API_URL=api, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300"
    )


def test_served_deployment_runs_when_triggered_and_refuses_bad_parameters(prefect_api, tmp_path):
    home = tmp_path / "state"
    env = pipeline_env(prefect_api, home)
    with started([sys.executable, "-m", "flows.cli", "serve"], log=tmp_path / "serve.log", env=env):
        deployment = None
        deadline = time.monotonic() + 120
        while deployment is None and time.monotonic() < deadline:
            found = api_post(prefect_api, "/deployments/filter", {"deployments": {"name": {"any_": ["daily"]}}})
            deployment = found[0] if found else None
            time.sleep(1)
        assert deployment, (tmp_path / "serve.log").read_text()[-3000:]
        assert deployment["global_concurrency_limit"]["limit"] == 1, "runs of the deployment never overlap"
        (schedule,) = deployment["schedules"]
        assert schedule["schedule"]["cron"] == "0 18 * * 1-5"
        assert schedule["schedule"]["timezone"] == "America/New_York"

        refused = subprocess.run(
            [PREFECT, "deployment", "run", "daily-pipeline/daily", "--param", 'tickers=["../x"]'],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert refused.returncode != 0 and "does not match" in refused.stdout + refused.stderr

        triggered = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "daily-pipeline/daily",
                "--param",
                'tickers=["MSFT"]',
                "--param",
                'as_of="2017-11-10"',
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        flow_run_id = next(line.split("UUID:")[1].strip() for line in triggered.stdout.splitlines() if "UUID:" in line)
        run = wait_for_flow_run(prefect_api, flow_run_id)
        assert run["state"]["type"] == "COMPLETED", (tmp_path / "serve.log").read_text()[-5000:]

    logs = api_post(prefect_api, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    assert any(entry["name"].startswith("pipeline.") for entry in logs), "library logs reach the Prefect UI"
    artifacts = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    (summary,) = [a for a in artifacts if a["key"] == "daily-pipeline-summary"]
    assert "| MSFT | 2017-11-10 |" in summary["data"]

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    champion = client.get_model_version_by_alias(registered_model_name("MSFT"), CHAMPION_ALIAS)
    run_ids = {v.run_id for v in client.search_model_versions(f"name = '{registered_model_name('MSFT')}'")}
    tagged = [client.get_run(r).data.tags.get("prefect_flow_run_id") for r in run_ids]
    assert flow_run_id in tagged, "the MLflow run records the Prefect flow run that made it"
    assert champion.version in ("1", "2", 1, 2)


def test_two_concurrent_runs_of_one_ticker_train_once_and_promote_at_most_once(prefect_api, tmp_path):
    home = tmp_path / "state"
    env = pipeline_env(prefect_api, home)
    command = [sys.executable, "-m", "flows.cli", "run", "--tickers", "MSFT", "--as-of", "2017-11-10"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs

    decisions = sorted(
        line.split()[1] for out in outputs for line in out.splitlines() if line.strip().startswith("MSFT ")
    )
    assert len(decisions) == 2 and decisions.count(SKIPPED) == 1, decisions
    assert set(decisions) - {SKIPPED} <= {PROMOTED, KEPT}

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{registered_model_name('MSFT')}'")
    assert sorted(v.tags["model_kind"] for v in versions) == ["lstm", "naive"], "one model version per data day"
    assert sum(v.tags.get("decision") == PROMOTED for v in versions) <= 1


def test_prefect_yaml_declares_the_same_deployment_as_serve():
    from flows.deployment import DEPLOYMENT_NAME, SCHEDULE_CRON, SCHEDULE_TIMEZONE, WORK_POOL

    (deployment,) = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    assert deployment["name"] == DEPLOYMENT_NAME
    assert deployment["entrypoint"] == "flows/daily.py:daily_pipeline"
    assert deployment["work_pool"]["name"] == WORK_POOL
    (schedule,) = deployment["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (SCHEDULE_CRON, SCHEDULE_TIMEZONE)
    assert deployment["concurrency_limit"]["limit"] == 1


def test_the_schedule_fires_on_trading_days_after_the_close():
    import asyncio
    from zoneinfo import ZoneInfo

    from prefect.server.schemas.schedules import CronSchedule  # what the server itself expands

    from flows.deployment import SCHEDULE_CRON, SCHEDULE_TIMEZONE
    from pipeline.trading_calendar import exchange_calendar

    schedule = CronSchedule(cron=SCHEDULE_CRON, timezone=SCHEDULE_TIMEZONE)
    start = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)  # a Friday; Thanksgiving is the 26th
    fires = [f.astimezone(ZoneInfo(SCHEDULE_TIMEZONE)) for f in asyncio.run(schedule.get_dates(n=10, start=start))]
    calendar = exchange_calendar()
    assert all(f.weekday() < 5 and (f.hour, f.minute) == (18, 0) for f in fires)
    sessions = [f for f in fires if calendar.is_session(f.date())]
    assert all(f > calendar.session_close(f.date()).tz_convert(SCHEDULE_TIMEZONE) for f in sessions), "after the close"
    closed = [f.date() for f in fires if not calendar.is_session(f.date())]
    assert closed == [dt.date(2026, 11, 26)], "Thanksgiving fires, and the flow makes it a quick no-op"
