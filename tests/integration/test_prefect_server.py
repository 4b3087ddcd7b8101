"""Against a real `prefect server start`: the `daily` deployment served with the schedule from prefect.yaml,
triggered by hand, its parameters refused by the server's API when bad, untrusted folders refused by the run, and
two runs of one ticker starting at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mlflow import MlflowClient

from flows.deployment import deployment_spec, schedules
from pipeline.common.symbols import registered_model_name
from tests.servers import HttpServer, http_status, prefect_server, started, wait_for_flow_run
from tests.support import PROJECT_ROOT, TINY_TRAINING, clean_env

pytestmark = pytest.mark.integration

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server on a free loopback port, with its own database."""
    root = tmp_path_factory.mktemp("prefect-server")
    # The scheduler looks for deployments to schedule every 2 s instead of every minute.
    with prefect_server(root / "home", root / "server.log",
                        env={"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}) as server:  # fmt: skip
        yield server


def pipeline_env(api: str, home: Path, **extra: str) -> dict[str, str]:
    return clean_env(**TINY_TRAINING, STOCKPIPE_HOME=str(home), PREFECT_API_URL=api, PYTHONPATH=str(PROJECT_ROOT),
                     COLUMNS="300", **extra)  # fmt: skip


@pytest.fixture(scope="module")
def served(prefect_api, tmp_path_factory):
    """`stockpipe serve` running against the server; yields the deployment as the API shows it, and the state."""
    root = tmp_path_factory.mktemp("served")
    data_root = root / "data-root"
    data_root.mkdir()
    env = pipeline_env(prefect_api.url, root / "state", STOCKPIPE_CSV_ROOT=str(data_root))
    with started([sys.executable, "-m", "flows.cli", "serve"], log=root / "serve.log", env=env):
        deadline = time.monotonic() + 180
        found: list = []
        while not found and time.monotonic() < deadline:
            found = prefect_api.post("/deployments/filter", {"deployments": {"name": {"any_": ["daily"]}}})
            time.sleep(1)
        assert found, (root / "serve.log").read_text()[-3000:]
        yield found[0], root, env


def create_flow_run(server: HttpServer, deployment_id: str, parameters: dict) -> tuple[int, str]:
    url = f"{server.url}/deployments/{deployment_id}/create_flow_run"
    status = http_status(url, body={"parameters": parameters}, auth=server.auth)
    return status, url


def flow_run_count(server: HttpServer, deployment_id: str) -> int:
    return len(server.post("/flow_runs/filter", {"deployments": {"id": {"any_": [deployment_id]}}}))


def test_the_deployment_carries_the_schedule_limits_and_parameter_descriptions(served):
    deployment, _, _ = served
    spec = deployment_spec()
    assert deployment["global_concurrency_limit"]["limit"] == 1, "runs of the deployment never overlap"
    (schedule,) = deployment["schedules"]
    (declared,) = spec["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == (declared["cron"], declared["timezone"])
    assert deployment["enforce_parameter_schema"] is True
    properties = deployment["parameter_openapi_schema"]["properties"]
    for name in ("tickers", "source", "csv_dir", "as_of", "epochs", "force", "warm_start"):
        assert properties[name].get("description"), f"the custom-run form explains {name}"


def test_the_server_schedules_the_daily_runs_after_the_close(prefect_api, served):
    """The server's own scheduler (not an expansion in this process) creates the runs: with SQLAlchemy 2.1 it
    failed on every loop and no scheduled run was ever created."""
    deployment, _, _ = served
    deadline = time.monotonic() + 60
    scheduled: list = []
    while not scheduled and time.monotonic() < deadline:
        scheduled = prefect_api.post("/flow_runs/filter", {
            "deployments": {"id": {"any_": [deployment["id"]]}},
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        })  # fmt: skip
        time.sleep(2)
    assert scheduled, "the scheduler created no run"
    zone = ZoneInfo(deployment_spec()["schedules"][0]["timezone"])
    for run in scheduled:
        start = dt.datetime.fromisoformat(run["expected_start_time"]).astimezone(zone)
        assert (start.hour, start.minute) == (18, 0), start


@pytest.mark.parametrize("parameters, complaint", [
    ({"as_of": "2017-13-45"}, "as_of"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": -5}, "epochs"),
    ({"tickers": ["../x"]}, "tickers"),
    ({"source": "ftp"}, "source"),
])  # fmt: skip
def test_bad_parameters_are_refused_by_the_api_and_create_no_run(prefect_api, served, parameters, complaint):
    deployment, _, _ = served
    before = flow_run_count(prefect_api, deployment["id"])
    status, _ = create_flow_run(prefect_api, deployment["id"], parameters)
    assert status in (409, 422), status
    assert flow_run_count(prefect_api, deployment["id"]) == before, "no flow run was created"
    refused = subprocess.run(
        [PREFECT, "deployment", "run", "daily-pipeline/daily", *[a for k, v in parameters.items()
                                                                  for a in ("--param", f"{k}={_json(v)}")]],
        env=served[2], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert refused.returncode != 0 and complaint in refused.stdout + refused.stderr


def _json(value) -> str:
    import json

    return json.dumps(value)


@pytest.mark.parametrize("folder", ["/etc", "link out of the root", "../../etc"])
def test_a_csv_folder_outside_the_root_is_refused_before_anything_is_read(prefect_api, served, folder):
    deployment, root, _ = served
    data_root = root / "data-root"
    if folder == "link out of the root":
        link = data_root / "exports"
        if not link.exists():
            link.symlink_to("/etc")
        folder = str(link)
    elif folder.startswith(".."):
        folder = str(data_root / folder)
    run = prefect_api.post(
        f"/deployments/{deployment['id']}/create_flow_run",
        {"parameters": {"source": "csv", "csv_dir": folder, "tickers": ["MSFT"]}},
    )
    finished = wait_for_flow_run(prefect_api.url, run["id"], auth=prefect_api.auth)
    assert finished["state"]["type"] == "FAILED"
    assert "outside STOCKPIPE_CSV_ROOT" in finished["state"]["message"]
    assert not (root / "state" / "store").exists(), "nothing was read, nothing was stored"


def test_a_triggered_run_completes_with_logs_a_table_and_links(prefect_api, served):
    _, root, env = served
    triggered = subprocess.run(
        [PREFECT, "deployment", "run", "daily-pipeline/daily", "--param", 'tickers=["MSFT"]', "--param",
         'as_of="2017-11-10"'], env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    flow_run_id = next(line.split("UUID:")[1].strip() for line in triggered.stdout.splitlines() if "UUID:" in line)
    run = wait_for_flow_run(prefect_api.url, flow_run_id, auth=prefect_api.auth)
    assert run["state"]["type"] == "COMPLETED", (root / "serve.log").read_text()[-5000:]
    assert run["name"] == "daily 2017-11-10 MSFT"

    logs = prefect_api.post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    assert any(entry["name"].startswith("pipeline.") for entry in logs), "library logs reach the Prefect UI"
    artifacts = prefect_api.post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    keys = {a["key"]: a for a in artifacts}
    assert keys["daily-pipeline-summary"]["type"] == "table" and '"MSFT"' in keys["daily-pipeline-summary"]["data"]
    assert "mlflow-run-msft" in keys and keys["daily-pipeline-progress"]["type"] == "progress"

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'state' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("stockpipe")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.ticker = 'MSFT'")
    assert flow_run_id in {r.data.tags.get("prefect_flow_run_id") for r in runs}, "the MLflow run names its flow run"


def test_two_concurrent_runs_of_one_ticker_train_once_and_promote_at_most_once(prefect_api, tmp_path):
    home = tmp_path / "state"
    env = pipeline_env(prefect_api.url, home)
    command = [sys.executable, "-m", "flows.cli", "run", "--tickers", "MSFT", "--as-of", "2017-11-10"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs

    decisions = sorted(line.split()[1] for out in outputs for line in out.splitlines()
                       if line.strip().startswith("MSFT "))  # fmt: skip
    assert len(decisions) == 2 and decisions.count("skipped") == 1, decisions
    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    versions = client.search_model_versions(f"name = '{registered_model_name('MSFT')}'")
    assert len(versions) <= 2, "the baseline, and at most one promoted challenger"
    experiment = client.get_experiment_by_name("stockpipe")
    assert len(client.search_runs([experiment.experiment_id], "tags.role = 'daily'")) == 1, "trained once"


def test_the_schedule_fires_every_day_after_the_close():
    from prefect.server.schemas.schedules import CronSchedule  # what the server itself expands

    from pipeline.common.trading_calendar import exchange_calendar

    (declared,) = schedules(deployment_spec())
    schedule = CronSchedule(cron=declared.cron, timezone=declared.timezone)
    start = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)  # a Friday; Thanksgiving is the 26th
    zone = ZoneInfo(declared.timezone)
    fires = [f.astimezone(zone) for f in asyncio.run(schedule.get_dates(n=10, start=start))]
    calendar = exchange_calendar()
    # Every day, so the missed-run automation hears a completed run each day; a closed day is a quick no-op.
    assert [f.date() for f in fires] == [dt.date(2026, 11, 20) + dt.timedelta(days=d) for d in range(10)]
    assert all((f.hour, f.minute) == (18, 0) for f in fires)
    sessions = [f for f in fires if calendar.is_session(f.date())]
    assert all(f > calendar.session_close(f.date()).tz_convert(declared.timezone) for f in sessions), "after the close"
    closed = [f.date() for f in fires if not calendar.is_session(f.date())]
    assert closed == [dt.date(2026, 11, d) for d in (21, 22, 26, 28, 29)], "weekends and Thanksgiving: no-ops"
