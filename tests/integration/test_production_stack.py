"""The production stack of docker/compose.yaml, without Docker: the same services run natively.

PostgreSQL (databases created by docker/postgres/init-databases.sh), `mlflow server` on it with served artifacts,
`prefect server` on it; the daily pipeline runs against both as a client would (`MLFLOW_TRACKING_URI`,
`PREFECT_API_URL`), and everything is checked through the servers' own APIs and in the databases. The compose
file's deploy and worker commands run against the same servers, and the worker runs the deployment. A
tracking-server restart loses nothing; the tracking server killed mid-run fails the ticker after retries with the
champion unchanged and nothing half-registered. The compose file itself is checked in tests/unit/test_docker_stack.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipeline.promotion import CHAMPION_ALIAS, KEPT, PROMOTED
from pipeline.symbols import registered_model_name
from tests.integration.conftest import TINY_TRAINING
from tests import servers
from tests.servers import (
    VENV_BIN,
    HttpServer,
    Postgres,
    api_post,
    clean_env,
    free_port,
    log_tail,
    mlflow_server,
    postgres_bindir,
    postgres_server,
    postgres_version,
    started,
    wait_for_flow_run,
    wait_for_http,
    wait_until,
)

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKER = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PREFECT = str(VENV_BIN / "prefect")
TICKER, AS_OF = "MSFT", "2017-11-10"
MODEL = registered_model_name(TICKER)
TEST_METRICS = {"test_rmse", "test_naive_rmse", "test_u2", "test_mae", "test_mape", "test_directional_accuracy",
                "champion_test_rmse"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# -- the native stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    pg: Postgres
    passwords: dict[str, str]
    prefect: HttpServer
    mlflow: HttpServer | None = None
    mlflow_port: int = 0
    _mlflow_context: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    @property
    def home(self) -> Path:
        """The pipeline client's STOCKPIPE_HOME (price store, journal); runs and models live on the servers."""
        return self.root / "client-state"

    @property
    def mlflow_db(self) -> str:
        return self.pg.url("mlflow", "mlflow", self.passwords["MLFLOW_DB_PASSWORD"])

    def start_mlflow(self, wait: bool = True) -> HttpServer:
        """The compose file's `mlflow server` options, with this machine's address, port and artifacts directory."""
        self.mlflow_port = self.mlflow_port or free_port()
        self.mlflow = self._mlflow_context.enter_context(mlflow_server(
            self.mlflow_db, self.artifacts, self.root / "logs" / "mlflow.log", port=self.mlflow_port,
            extra_args=compose_mlflow_options(self.mlflow_port), wait=wait))
        return self.mlflow

    def stop_mlflow(self) -> None:
        self._mlflow_context.close()
        self.mlflow = None

    def client_env(self, **extra: str) -> dict[str, str]:
        """What a pipeline process on another machine would be given: the two servers' URLs."""
        return clean_env(**TINY_TRAINING, STOCKPIPE_HOME=str(self.home), MLFLOW_TRACKING_URI=self.mlflow.url,
                         PREFECT_API_URL=self.prefect.url, PREFECT_HOME=str(self.root / "client-prefect"),
                         PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300", **extra)

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log_tail(log, 3000)}" for log in sorted((self.root / "logs").glob("*.log")))


def compose_mlflow_options(port: int) -> list[str]:
    """docker/compose.yaml's `mlflow server` options, minus where it listens and stores artifacts; the allowed hosts
    gain this server's loopback address (the compose file names its published port, 5000)."""
    command = compose()["services"]["mlflow"]["command"]
    assert command[:2] == ["mlflow", "server"], command
    local = ("--host", "--port", "--artifacts-destination")
    options = [a for a in command[2:] if not a.startswith(local)]
    return [f"{a},127.0.0.1:{port}" if a.startswith("--allowed-hosts=") else a for a in options]


def require_postgres() -> Path:
    bindir = postgres_bindir()
    if bindir is not None:
        return bindir
    message = "PostgreSQL server binaries (initdb, postgres) not found: run `make postgres`"
    if os.environ.get("CI") or os.environ.get("STOCKPIPE_REQUIRE_POSTGRES"):
        pytest.fail(message)  # CI installs PostgreSQL first (.ci/run): missing there is a failure, never a skip
    pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """Overrides the integration suite's in-process Prefect test server: every test here runs its own real servers
    (or none), in subprocesses given their URLs explicitly, so that one need not start for them."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    bindir = require_postgres()
    root = tmp_path_factory.mktemp("production-stack")
    passwords = {"MLFLOW_DB_PASSWORD": secrets.token_hex(12), "PREFECT_DB_PASSWORD": secrets.token_hex(12)}
    with contextlib.ExitStack() as cleanup:
        began = time.monotonic()
        pg = cleanup.enter_context(postgres_server(root / "logs", bindir=bindir))
        print(f"\n{postgres_version(bindir)} on 127.0.0.1:{pg.port} ({time.monotonic() - began:.1f} s)")
        # The very script the postgres container runs on its first start.
        init = subprocess.run(["bash", str(DOCKER / "postgres" / "init-databases.sh")], capture_output=True, text=True,
                              env=pg.client_env(POSTGRES_USER=pg.superuser, **passwords), timeout=60)
        assert init.returncode == 0, init.stdout + init.stderr

        began = time.monotonic()
        prefect = cleanup.enter_context(servers.prefect_server(
            root / "prefect-home", root / "logs" / "prefect-server.log", wait=False,
            database_url=pg.url("prefect", "prefect", passwords["PREFECT_DB_PASSWORD"], driver="postgresql+asyncpg")))
        stack = Stack(root, pg, passwords, prefect)
        cleanup.callback(stack.stop_mlflow)
        stack.start_mlflow(wait=False)
        stack.mlflow.wait_ready()  # both start at once
        prefect.wait_ready()
        print(f"mlflow server and prefect server on PostgreSQL ready in {time.monotonic() - began:.1f} s")
        yield stack


def stockpipe(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=stack.root, env=stack.client_env(),
                          capture_output=True, text=True, timeout=600)


def mlflow_status(url: str, host: str) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stockpipe",
                                     headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def registry_snapshot(tracking_uri: str, dst: Path) -> dict:
    """Everything a restart must not lose: versions and their tags, aliases, the runs' metrics, artifacts' bytes."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    model = client.get_registered_model(MODEL)
    runs = {v.run_id: client.get_run(v.run_id) for v in versions}
    lstm_run = next(runs[v.run_id] for v in versions if v.tags.get("model_kind") == "lstm")
    dst.mkdir(parents=True, exist_ok=True)
    decision = Path(download_artifacts(run_id=lstm_run.info.run_id, artifact_path="promotion/decision.json",
                                       dst_path=str(dst), tracking_uri=tracking_uri))
    champion = model.aliases[CHAMPION_ALIAS]
    champion_dir = Path(download_artifacts(artifact_uri=client.get_model_version_download_uri(MODEL, champion),
                                           dst_path=str(dst / "champion"), tracking_uri=tracking_uri))
    return {
        "versions": [(str(v.version), v.tags.get("model_kind"), v.tags.get("decision"), v.run_id, v.source)
                     for v in versions],
        "aliases": dict(model.aliases),
        "metrics": {run_id: run.data.metrics for run_id, run in runs.items()},
        "artifact_uris": {run_id: run.info.artifact_uri for run_id, run in runs.items()},
        "decision": json.loads(decision.read_text()),
        "champion_files": sorted(str(p.relative_to(champion_dir)) for p in champion_dir.rglob("*") if p.is_file()),
        "lstm_run_id": lstm_run.info.run_id,
        "lstm_tags": lstm_run.data.tags,
    }


# -- tests ----------------------------------------------------------------------------------------


def test_daily_pipeline_against_postgres_backed_mlflow_and_prefect_servers(stack, tmp_path):
    home = stack.home
    began = time.monotonic()
    result = stockpipe(stack, "run", "--tickers", TICKER, "--as-of", AS_OF)
    print(f"stockpipe run against the servers: {time.monotonic() - began:.1f} s")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:] + stack.logs()
    (line,) = [l for l in result.stdout.splitlines() if l.strip().startswith(f"{TICKER} ")]
    decision = line.split()[1]
    assert decision in (PROMOTED, KEPT), line

    # MLflow, through the tracking server's REST API: naive v1, LSTM v2, the champion alias, metrics, artifacts.
    state = registry_snapshot(stack.mlflow.url, tmp_path / "downloads")
    assert [(v[0], v[1]) for v in state["versions"]] == [("1", "naive"), ("2", "lstm")]
    assert state["aliases"][CHAMPION_ALIAS] == ("2" if decision == PROMOTED else "1")
    lstm_metrics = state["metrics"][state["lstm_run_id"]]
    assert TEST_METRICS <= set(lstm_metrics), TEST_METRICS - set(lstm_metrics)
    assert lstm_metrics["test_rmse"] > 0 and lstm_metrics["test_naive_rmse"] > 0
    assert state["lstm_tags"]["ticker"] == TICKER and state["lstm_tags"]["data_end"] == AS_OF
    assert (state["decision"]["ticker"], state["decision"]["verdict"]) == (TICKER, decision), state["decision"]
    assert "MLmodel" in state["champion_files"]
    # Artifacts went through the server (mlflow-artifacts:/) into its artifacts destination, not to a local path.
    assert all(uri.startswith("mlflow-artifacts:/") for uri in state["artifact_uris"].values()), state["artifact_uris"]
    assert list(stack.artifacts.rglob("promotion/decision.json")), "the server stored the uploaded artifacts"
    assert not (home / "mlflow.db").exists() and not (home / "artifacts").exists(), "nothing went to a local store"
    # The compose file's --allowed-hosts: the worker's `mlflow:5000` is served, a foreign Host header is refused.
    assert mlflow_status(stack.mlflow.url, "mlflow:5000") == 200
    assert mlflow_status(stack.mlflow.url, "attacker.example:5000") == 403

    # Prefect, through the server's REST API: one completed `daily-pipeline` flow run, the one the MLflow run names.
    runs = api_post(stack.prefect.url, "/flow_runs/filter", {"flows": {"name": {"any_": ["daily-pipeline"]}}})
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"], runs
    assert state["lstm_tags"]["prefect_flow_run_id"] == runs[0]["id"]
    tasks = api_post(stack.prefect.url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert {t["name"] for t in tasks} >= {f"fetch-{TICKER}", f"train-{TICKER}", f"track-and-promote-{TICKER}"}

    # And it all lives in PostgreSQL, in the databases the init script created for each service.
    assert stack.pg.psql(f"SELECT count(*) FROM model_versions WHERE name = '{MODEL}'", database="mlflow") == "2"
    assert stack.pg.psql("SELECT count(*) FROM flow_run", database="prefect") == "1"
    owners = stack.pg.psql("SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
                           "WHERE datname IN ('mlflow', 'prefect') ORDER BY 1")
    assert owners.split() == ["mlflow=mlflow", "prefect=prefect"]


def test_compose_deploy_and_worker_commands_against_the_servers(stack):
    """The compose file's deploy and prefect-worker commands, verbatim, against the native servers.

    Deploy first, as `docker compose run --rm deploy` would on a fresh server: it must make the work pool itself
    (`prefect deploy` refuses a missing one); the worker then finds the pool, reports healthy, and runs the
    deployment when it is triggered by hand.
    """
    services = compose()["services"]
    health_port = free_port()
    env = stack.client_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", STOCKPIPE_PROJECT_DIR=str(PROJECT_ROOT),
                           PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1", PREFECT_WORKER_WEBSERVER_PORT=str(health_port),
                           PREFECT_WORKER_QUERY_SECONDS="2")  # the compose worker polls every 10 s
    deploy = subprocess.run(services["deploy"]["command"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                            timeout=180)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    pool = json.loads(urllib.request.urlopen(f"{stack.prefect.url}/work_pools/stockpipe", timeout=10).read())
    assert pool["type"] == "process"

    log = stack.root / "logs" / "prefect-worker.log"
    with started(services["prefect-worker"]["command"], log=log, env=env) as worker:
        # The compose health check's URL, on the port given to this worker.
        wait_for_http(f"http://127.0.0.1:{health_port}/health", worker, log, timeout=120)
        # And the server sees it polling the pool (its first heartbeat may follow the health server by a moment).
        wait_until(lambda: bool(api_post(stack.prefect.url, "/work_pools/stockpipe/workers/filter", {})), worker, log,
                   timeout=60, what="registered with the server")
        workers = api_post(stack.prefect.url, "/work_pools/stockpipe/workers/filter", {})
        assert [w["name"] for w in workers] == ["stockpipe-worker"]

        # Triggered by hand as the README says, the deployment runs as a subprocess of this worker, from the
        # directory of prefect.yaml's pull step, and tracks into the MLflow server.
        trigger = subprocess.run([PREFECT, "deployment", "run", "daily-pipeline/daily", "--param", f'tickers=["{TICKER}"]',
                                  "--param", f'as_of="{AS_OF}"', "--param", "force=true"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", trigger.stdout).group(1)
        flow_run = wait_for_flow_run(stack.prefect.url, flow_run_id, timeout=400)
        assert flow_run["state"]["type"] == "COMPLETED", log_tail(log)
        assert flow_run["work_pool_name"] == "stockpipe" and flow_run["deployment_id"]
    assert worker.returncode is not None, "the worker was stopped"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    (run,) = client.search_runs([client.get_experiment_by_name("stockpipe").experiment_id],
                                filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'")
    assert run.info.status == "FINISHED" and run.data.tags["decision"] in (PROMOTED, KEPT)
    assert client.search_model_versions(f"name = '{MODEL}' and run_id = '{run.info.run_id}'"), "registered"

    (deployment,) = api_post(stack.prefect.url, "/deployments/filter", {"deployments": {"name": {"any_": ["daily"]}}})
    assert deployment["work_pool_name"] == "stockpipe"
    assert deployment["entrypoint"] == "flows/daily.py:daily_pipeline"
    (schedule,) = deployment["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == ("0 18 * * 1-5", "America/New_York")
    (step,) = deployment["pull_steps"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(PROJECT_ROOT)


def test_restarting_the_tracking_server_loses_nothing(stack, tmp_path):
    before = registry_snapshot(stack.mlflow.url, tmp_path / "before")
    old = stack.mlflow.process
    began = time.monotonic()
    stack.stop_mlflow()
    assert old.poll() is not None, "stopped by its process id"
    with pytest.raises(ProcessLookupError):
        os.killpg(old.pid, 0)  # nothing it spawned is left either
    stack.start_mlflow()  # same port, same database, same artifacts directory
    print(f"mlflow server restarted in {time.monotonic() - began:.1f} s")

    after = registry_snapshot(stack.mlflow.url, tmp_path / "after")
    assert after == before

    # The pipeline's own client sees the same champion through the restarted server.
    status = stockpipe(stack, "status", "--json")
    assert status.returncode == 0, status.stderr[-3000:]
    (row,) = json.loads(status.stdout)
    assert (row["ticker"], str(row["champion_version"])) == (TICKER, before["aliases"][CHAMPION_ALIAS])


# A run that has logged its metrics but not yet registered a version: the moment to pull the server away.
MID_RUN = ("SELECT count(*) FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
           "WHERE r.status = 'RUNNING' AND m.key = 'test_rmse'")
# The MLflow client's own retries, short here (its default waits about 4 minutes per request); the flow still
# retries the tracking task twice with backoff on top of them.
QUICK_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def registry_consistent(tracking_uri: str) -> list[str]:
    """Every version's run holds its test metrics and the version carries a decision: what `half-registered` is not."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    problems = []
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        metrics = client.get_run(version.run_id).data.metrics
        if version.tags.get("model_kind") == "lstm" and "test_rmse" not in metrics:
            problems.append(f"v{version.version} has no test metrics on its run")
        if not version.tags.get("decision"):
            problems.append(f"v{version.version} has no decision")
    return problems


def test_the_tracking_server_going_away_mid_run_fails_the_ticker_and_changes_nothing(stack, tmp_path):
    before = registry_snapshot(stack.mlflow.url, tmp_path / "before")
    server = stack.mlflow.process
    log = stack.root / "logs" / "cut-off-run.log"
    with log.open("w") as out:
        run = subprocess.Popen([sys.executable, "-m", "flows.cli", "run", "--tickers", TICKER, "--as-of", AS_OF, "--force"],
                               cwd=stack.root, env=stack.client_env(**QUICK_CLIENT_RETRIES), stdout=out,
                               stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: stack.pg.psql(MID_RUN, database="mlflow") != "0", run, log, timeout=300,
                       what="logging a challenger's metrics")
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, at once, with no goodbye
            began = time.monotonic()
            assert run.wait(timeout=300) == 1
            print(f"the ticker failed {time.monotonic() - began:.1f} s after the server went away")
        finally:
            if run.poll() is None:
                run.kill()
    stack.stop_mlflow()
    output = log.read_text()
    (line,) = [l for l in output.splitlines() if l.strip().startswith(f"{TICKER} ")]
    assert re.search(rf"{TICKER}\s+failed\s+TrackingUnavailable: MLflow tracking server "
                     rf"http://127\.0\.0\.1:{stack.mlflow_port} unreachable while tracking {TICKER}: "
                     rf"Connection refused \(gave up after 3 attempts", line), line
    # The Prefect server saw the tracking task tried three times (two retries) before the ticker failed.
    (flow_run,) = api_post(stack.prefect.url, "/flow_runs/filter", {"sort": "START_TIME_DESC", "limit": 1})
    assert flow_run["state"]["type"] == "FAILED"
    tasks = api_post(stack.prefect.url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    (tracking,) = [t for t in tasks if t["name"] == f"track-and-promote-{TICKER}"]
    assert (tracking["run_count"], tracking["state"]["type"]) == (3, "FAILED")
    journal = json.loads((stack.home / "reports" / TICKER / "last_run.json").read_text())
    assert journal["decision"] == "failed" and journal["challenger_id"]

    stack.start_mlflow()
    after = registry_snapshot(stack.mlflow.url, tmp_path / "after")
    assert after["aliases"] == before["aliases"], "the champion alias is unchanged"
    assert after["versions"] == before["versions"], "no version was registered"
    assert registry_consistent(stack.mlflow.url) == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow.url)
    (cut,) = client.search_runs([client.get_experiment_by_name("stockpipe").experiment_id],
                                filter_string=f"tags.challenger_id = '{journal['challenger_id']}'")
    assert cut.info.status in ("RUNNING", "FAILED") and "test_rmse" in cut.data.metrics

    # The next run, with the server back, settles the cut-off run first and then tracks its own challenger.
    again = stockpipe(stack, "run", "--tickers", TICKER, "--as-of", AS_OF, "--force")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    settled = client.get_run(cut.info.run_id)
    assert (settled.info.status, settled.data.tags["decision"]) == ("FAILED", "failed")
    assert "tracking server became unreachable" in settled.data.tags["interrupted"]
    final = registry_snapshot(stack.mlflow.url, tmp_path / "final")
    assert len(final["versions"]) == len(before["versions"]) + 1
    assert registry_consistent(stack.mlflow.url) == []
