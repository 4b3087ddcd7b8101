"""The production stack of docker/compose.yaml, without Docker: the same services run natively, authenticated.

A docker/.env is made as an operator would (fresh random secrets) and passes docker/check-secrets.sh; each service
gets its environment from the compose file, interpolated with that .env, its host names replaced by this machine's
addresses. PostgreSQL (databases created by docker/postgres/init-databases.sh), `mlflow server` on it with served
artifacts and the basic-auth app (its ini written by the compose file's entrypoint, docker/mlflow-basic-auth.sh),
`prefect server` on it requiring its auth string. Requests without valid credentials get 401 from both; the daily
pipeline runs against both as a client would (`MLFLOW_TRACKING_URI`, `PREFECT_API_URL` and the credentials the
compose file gives the worker), and everything is checked through the servers' own APIs and in the databases. The
compose file's deploy and worker commands run against the same servers, and the worker runs the deployment. A
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
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from flows.automations import AUTOMATION_NAMES, MISSED_RUN
from pipeline.common.outcome import Decision
from pipeline.common.settings import Settings
from pipeline.common.symbols import registered_model_name
from pipeline.evaluation.promotion import CHAMPION_ALIAS
from tests import servers
from tests.servers import (
    VENV_BIN,
    HttpServer,
    Postgres,
    clean_env,
    free_port,
    http_status,
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
from tests.support import TINY_TRAINING

pytestmark = pytest.mark.system

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKER = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
PREFECT = str(VENV_BIN / "prefect")
TICKER, AS_OF = "MSFT", "2017-11-10"
MODEL = registered_model_name(TICKER)
PROMOTED, KEPT = Decision.promoted.value, Decision.kept.value
TEST_METRICS = {
    "challenger_rmse",
    "naive_rmse",
    "u2",
    "challenger_mae",
    "challenger_mape",
    "challenger_directional_accuracy",
    "champion_rmse",
    "dm_pvalue",
    "challenger_coverage_80",
}
# What the worker's environment says about reaching the two servers (URLs and credentials); the pipeline settings
# it also carries (tickers, source, state directory) are each test's own.
SERVER_SETTINGS = ("PREFECT_API_", "MLFLOW_TRACKING_")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


# -- docker/.env and the compose file, natively ---------------------------------------------------


def is_secret(name: str) -> bool:
    """The docker/.env variables docker/check-secrets.sh holds to its rules."""
    return name.endswith(("_PASSWORD", "_SECRET_KEY"))


def operator_dotenv(pg: Postgres) -> dict[str, str]:
    """The docker/.env an operator would write: the example's names, every password and key fresh and random (as
    README says, `openssl rand -hex 24`), and this machine's PostgreSQL superuser."""
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    dotenv = {name: secrets.token_hex(24) if is_secret(name) else value for name, value in example.items()}
    return {**dotenv, "POSTGRES_USER": pg.superuser, "POSTGRES_PASSWORD": pg.password}


# ${VAR}, ${VAR:-default}, ${VAR:?message} and $$: what docker/compose.yaml uses of compose's interpolation.
INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:[-?])([^}]*))?\}")


def interpolate(value: str, dotenv: dict[str, str]) -> str:
    """A compose value as compose reads it with `dotenv` as docker/.env; refuses what compose would refuse."""

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, modifier, argument = match.groups()
        if dotenv.get(name):
            return dotenv[name]
        if modifier == ":?":
            raise LookupError(f"compose would refuse to start: {argument}")
        return argument if modifier == ":-" else ""

    return INTERPOLATION.sub(one, value)


def host_path(service: dict, argument: str) -> str:
    """A path inside the container that the service bind-mounts from docker/, as that file here; else unchanged."""
    for volume in service.get("volumes") or []:
        source, target = volume.split(":")[:2]
        if source.startswith(".") and argument == target:
            return str((DOCKER / source).resolve())
    return argument


# -- the native stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    pg: Postgres
    dotenv: dict[str, str]
    prefect_port: int
    mlflow_port: int
    prefect: HttpServer | None = None
    mlflow: HttpServer | None = None
    _mlflow_context: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def artifacts(self) -> Path:
        return self.root / "mlflow-artifacts"

    @property
    def home(self) -> Path:
        """The pipeline client's STOCKPIPE_HOME (price store, journal); runs and models live on the servers."""
        return self.root / "client-state"

    @property
    def auth_config(self) -> Path:
        """Where the mlflow entrypoint writes basic_auth.ini (in the container, the user's home)."""
        return self.root / "mlflow-home" / "mlflow-auth" / "basic_auth.ini"

    @property
    def addresses(self) -> dict[str, str]:
        """Each host name of the compose network, as where its native server listens."""
        return {
            "@postgres:5432/": f"@127.0.0.1:{self.pg.port}/",
            "http://mlflow:5000": f"http://127.0.0.1:{self.mlflow_port}",
            "http://prefect-server:4200/api": f"http://127.0.0.1:{self.prefect_port}/api",
        }

    def environment(self, service: str) -> dict[str, str]:
        """The service's `environment` from the compose file, interpolated with this stack's docker/.env."""
        env = {}
        for name, value in (compose()["services"][service].get("environment") or {}).items():
            value = interpolate(str(value), self.dotenv)
            for host, address in self.addresses.items():
                value = value.replace(host, address)
            env[name] = value
        return env

    def command(self, service: str, key: str = "command") -> list[str]:
        """The service's command (or entrypoint), its bind-mounted scripts as the files in docker/."""
        spec = compose()["services"][service]
        return [host_path(spec, argument) for argument in spec[key]]

    @property
    def mlflow_auth(self) -> str:
        """The admin docker/.env names, which the worker's pipeline runs log in as."""
        return f"{self.dotenv['MLFLOW_ADMIN_USERNAME']}:{self.dotenv['MLFLOW_ADMIN_PASSWORD']}"

    def start_prefect(self, wait: bool = True) -> contextlib.AbstractContextManager[HttpServer]:
        env = self.environment("prefect-server")
        return servers.prefect_server(
            self.root / "prefect-home",
            self.root / "logs" / "prefect-server.log",
            wait=wait,
            port=self.prefect_port,
            database_url=env["PREFECT_API_DATABASE_CONNECTION_URL"],
            auth_string=env["PREFECT_SERVER_API_AUTH_STRING"],
        )

    def start_mlflow(self, wait: bool = True) -> HttpServer:
        """The compose file's entrypoint, `mlflow server` options and environment, with this machine's address,
        port, artifacts directory and place for the ini."""
        env = self.environment("mlflow")
        backend_store_uri = env.pop("MLFLOW_BACKEND_STORE_URI")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
        self.mlflow = self._mlflow_context.enter_context(
            mlflow_server(
                backend_store_uri,
                self.artifacts,
                self.root / "logs" / "mlflow.log",
                port=self.mlflow_port,
                extra_args=compose_mlflow_options(self.mlflow_port),
                wait=wait,
                env=env,
                entrypoint=self.command("mlflow", "entrypoint"),
                auth=self.mlflow_auth,
            )
        )
        return self.mlflow

    def stop_mlflow(self) -> None:
        self._mlflow_context.close()
        self.mlflow = None

    def client_env(self, **extra: str) -> dict[str, str]:
        """What a pipeline process on another machine would be given: the two servers' URLs and credentials, as
        the compose file gives them to the worker."""
        reach = {k: v for k, v in self.environment("prefect-worker").items() if k.startswith(SERVER_SETTINGS)}
        return clean_env(
            **{
                **TINY_TRAINING,
                **reach,
                "STOCKPIPE_HOME": str(self.home),
                "PREFECT_HOME": str(self.root / "client-prefect"),
                "PYTHONPATH": str(PROJECT_ROOT),
                "COLUMNS": "300",
                **extra,
            }
        )

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log_tail(log, 3000)}" for log in sorted((self.root / "logs").glob("*.log")))


def assert_no_secret_in(stack: Stack, text: str, where: str) -> None:
    leaked = [name for name, value in stack.dotenv.items() if is_secret(name) and value in text]
    assert not leaked, f"{where} printed the value of {leaked}"


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
    return


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    bindir = require_postgres()
    root = tmp_path_factory.mktemp("production-stack")
    with contextlib.ExitStack() as cleanup:
        began = time.monotonic()
        pg = cleanup.enter_context(postgres_server(root / "logs", bindir=bindir))
        print(f"\n{postgres_version(bindir)} on 127.0.0.1:{pg.port} ({time.monotonic() - began:.1f} s)")
        stack = Stack(root, pg, operator_dotenv(pg), prefect_port=free_port(), mlflow_port=free_port())

        # The one-shot check-secrets service, which everything else waits for, accepts this .env.
        check = subprocess.run(
            stack.command("check-secrets"),
            env=clean_env(**stack.environment("check-secrets")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        # The very script the postgres container runs on its first start, with that container's environment.
        init = subprocess.run(
            ["bash", str(DOCKER / "postgres" / "init-databases.sh")],
            capture_output=True,
            text=True,
            env=pg.client_env(**stack.environment("postgres")),
            timeout=60,
        )
        assert init.returncode == 0, init.stdout + init.stderr

        began = time.monotonic()
        stack.prefect = cleanup.enter_context(stack.start_prefect(wait=False))
        cleanup.callback(stack.stop_mlflow)
        stack.start_mlflow(wait=False)
        stack.mlflow.wait_ready()  # both start at once
        stack.prefect.wait_ready()
        print(
            f"mlflow server and prefect server on PostgreSQL, authenticated, ready in {time.monotonic() - began:.1f} s"
        )
        # This process's own MLflow client (registry snapshots) logs in as the pipeline does: from the environment.
        with pytest.MonkeyPatch.context() as env:
            for name, value in stack.client_env().items():
                if name.startswith("MLFLOW_TRACKING_") and name != "MLFLOW_TRACKING_URI":
                    env.setenv(name, value)
            yield stack


def stockpipe(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=stack.root,
        env=stack.client_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def mlflow_status(server: HttpServer, host: str) -> int:
    return http_status(
        f"{server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stockpipe",
        auth=server.auth,
        headers={"Host": host},
    )


def registry_snapshot(tracking_uri: str, dst: Path) -> dict:
    """Everything a restart must not lose: versions and their tags, aliases, the runs' metrics, artifacts' bytes."""
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    versions = sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    model = client.get_registered_model(MODEL)
    runs = {v.run_id: client.get_run(v.run_id) for v in versions}
    experiment = client.get_experiment_by_name("stockpipe")
    (lstm_run,) = client.search_runs(
        [experiment.experiment_id],
        "tags.role = 'daily' and attributes.status = 'FINISHED'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    runs[lstm_run.info.run_id] = lstm_run
    dst.mkdir(parents=True, exist_ok=True)
    decision = Path(
        download_artifacts(
            run_id=lstm_run.info.run_id,
            artifact_path="decision/decision.json",
            dst_path=str(dst),
            tracking_uri=tracking_uri,
        )
    )
    champion = model.aliases[CHAMPION_ALIAS]
    champion_dir = Path(
        download_artifacts(
            artifact_uri=client.get_model_version_download_uri(MODEL, champion),
            dst_path=str(dst / "champion"),
            tracking_uri=tracking_uri,
        )
    )
    return {
        "versions": [
            (str(v.version), v.tags.get("model_kind"), v.tags.get("decision"), v.run_id, v.source) for v in versions
        ],
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
    (line,) = [row for row in result.stdout.splitlines() if row.strip().startswith(f"{TICKER} ")]
    decision = line.split()[1]
    assert decision in (PROMOTED, KEPT), line

    # MLflow, through the tracking server's REST API: naive v1, the LSTM as v2 if it was promoted, the champion
    # alias, metrics, artifacts.
    state = registry_snapshot(stack.mlflow.url, tmp_path / "downloads")
    expected = [("1", "naive"), ("2", "lstm")] if decision == PROMOTED else [("1", "naive")]
    assert [(v[0], v[1]) for v in state["versions"]] == expected
    assert state["aliases"][CHAMPION_ALIAS] == ("2" if decision == PROMOTED else "1")
    lstm_metrics = state["metrics"][state["lstm_run_id"]]
    assert set(lstm_metrics) >= TEST_METRICS, TEST_METRICS - set(lstm_metrics)
    assert lstm_metrics["challenger_rmse"] > 0 and lstm_metrics["naive_rmse"] > 0
    assert state["lstm_tags"]["ticker"] == TICKER and state["lstm_tags"]["day"] == AS_OF
    assert (state["decision"]["ticker"], state["decision"]["decision"]) == (TICKER, decision), state["decision"]
    assert "MLmodel" in state["champion_files"]
    # Artifacts went through the server (mlflow-artifacts:/) into its artifacts destination, not to a local path.
    assert all(uri.startswith("mlflow-artifacts:/") for uri in state["artifact_uris"].values()), state["artifact_uris"]
    assert list(stack.artifacts.rglob("decision/decision.json")), "the server stored the uploaded artifacts"
    assert not (home / "mlflow.db").exists() and not (home / "artifacts").exists(), "nothing went to a local store"
    # The compose file's --allowed-hosts: the worker's `mlflow:5000` is served, a foreign Host header is refused.
    assert mlflow_status(stack.mlflow, "mlflow:5000") == 200
    assert mlflow_status(stack.mlflow, "attacker.example:5000") == 403

    # Prefect, through the server's REST API: one completed `daily-pipeline` flow run, the one the MLflow run names.
    runs = stack.prefect.post("/flow_runs/filter", {"flows": {"name": {"any_": ["daily-pipeline"]}}})
    assert [r["state"]["type"] for r in runs] == ["COMPLETED"], runs
    assert state["lstm_tags"]["prefect_flow_run_id"] == runs[0]["id"]
    tasks = stack.prefect.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [runs[0]["id"]]}}})
    assert {t["name"] for t in tasks} >= {f"fetch-{TICKER}", f"train-{TICKER}", f"track-and-promote-{TICKER}"}

    # And it all lives in PostgreSQL, in the databases the init script created for each service.
    assert stack.pg.psql(f"SELECT count(*) FROM model_versions WHERE name = '{MODEL}'", database="mlflow") == "2"
    assert stack.pg.psql("SELECT count(*) FROM flow_run", database="prefect") == "1"
    owners = stack.pg.psql(
        "SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database "
        "WHERE datname IN ('mlflow', 'prefect') ORDER BY 1"
    )
    assert owners.split() == ["mlflow=mlflow", "prefect=prefect"]
    assert_no_secret_in(stack, result.stdout + result.stderr, "stockpipe run")


def test_both_servers_refuse_requests_without_valid_credentials(stack):
    """What the pipeline's run above did with the credentials from its environment, nobody can do without them."""
    admin = stack.dotenv["MLFLOW_ADMIN_USERNAME"]
    search = f"{stack.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=10"
    assert http_status(search) == 401
    assert http_status(search, auth=f"{admin}:{secrets.token_hex(24)}") == 401
    assert http_status(search, auth="admin:password1234") == 401, "MLflow's old default admin does not exist"
    assert http_status(search, auth=stack.mlflow.auth) == 200

    flows = f"{stack.prefect.url}/flows/filter"
    prefect_user = stack.dotenv["PREFECT_AUTH_USERNAME"]
    assert http_status(flows, body={}) == 401
    assert http_status(flows, body={}, auth=f"{prefect_user}:{secrets.token_hex(24)}") == 401
    assert http_status(flows, body={}, auth=stack.prefect.auth) == 200

    # The compose health checks need no credentials.
    assert http_status(stack.mlflow.health_url) == 200 and http_status(stack.prefect.health_url) == 200

    # MLflow's only account is the admin docker/.env names, in its own database; the ini the entrypoint wrote is
    # private and holds no admin password; no server log shows a secret.
    assert stack.pg.psql("SELECT username || '=' || is_admin FROM users", database="mlflow_auth") == f"{admin}=true"
    assert stack.pg.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow_auth'") == "mlflow"
    assert stat.S_IMODE(stack.auth_config.stat().st_mode) == 0o600
    assert stack.dotenv["MLFLOW_ADMIN_PASSWORD"] not in stack.auth_config.read_text()
    for log in (stack.root / "logs").glob("*.log"):
        assert_no_secret_in(stack, log.read_text(errors="replace"), log.name)

    # An account made as README says (the admin's client, credentials from the environment) gets the default
    # permission, READ: it sees the models and cannot move `champion` until granted EDIT on that model.
    from mlflow.server import get_app_client

    users = get_app_client("basic-auth", tracking_uri=stack.mlflow.url)
    password = secrets.token_hex(16)
    users.create_user("alice", password)
    model = f"/api/2.0/mlflow/registered-models/get?name={MODEL}"
    (champion,) = [
        a["version"] for a in stack.mlflow.get(model)["registered_model"]["aliases"] if a["alias"] == CHAMPION_ALIAS
    ]
    move = {"name": MODEL, "alias": CHAMPION_ALIAS, "version": champion}  # to where it is: changes nothing
    alias = f"{stack.mlflow.url}/api/2.0/mlflow/registered-models/alias"
    assert http_status(f"{stack.mlflow.url}{model}", auth=f"alice:{password}") == 200
    assert http_status(alias, body=move, auth=f"alice:{password}") == 403
    users.grant_user_permission("alice", "registered_model", MODEL, "EDIT")
    assert http_status(alias, body=move, auth=f"alice:{password}") == 200


def test_compose_deploy_and_worker_commands_against_the_servers(stack):
    """The compose file's deploy and prefect-worker commands, verbatim, against the native servers.

    Deploy first, as `docker compose run --rm deploy` would on a fresh server: it must make the work pool itself
    (`prefect deploy` refuses a missing one); the worker then finds the pool, reports healthy, and runs the
    deployment when it is triggered by hand.
    """
    services = compose()["services"]
    health_port = free_port()
    env = stack.client_env(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        STOCKPIPE_PROJECT_DIR=str(PROJECT_ROOT),
        PREFECT_WORKER_WEBSERVER_HOST="127.0.0.1",
        PREFECT_WORKER_WEBSERVER_PORT=str(health_port),
        PREFECT_WORKER_QUERY_SECONDS="2",
    )  # the compose worker polls every 10 s
    # The deploy step alone gets the alert settings (the compose file's, a webhook set as an operator would).
    alerts = {k: v for k, v in stack.environment("deploy").items() if k.startswith("STOCKPIPE_ALERT_")}
    alerts["STOCKPIPE_ALERT_WEBHOOK_URL"] = f"http://127.0.0.1:{free_port()}/hook"
    deploy = subprocess.run(
        services["deploy"]["command"],
        cwd=PROJECT_ROOT,
        env={**env, **alerts},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    pool = stack.prefect.get("/work_pools/stockpipe")
    assert pool["type"] == "process"
    # ...and installed the server's alerts, through its auth string, the missed-run window the settings' default.
    automations = {a["name"]: a for a in stack.prefect.post("/automations/filter", {})}
    assert sorted(automations) == sorted(AUTOMATION_NAMES), deploy.stdout[-3000:]
    hours = Settings.model_fields["alert_missed_run_hours"].default
    assert automations[MISSED_RUN]["trigger"]["within"] == hours * 3600

    log = stack.root / "logs" / "prefect-worker.log"
    with started(services["prefect-worker"]["command"], log=log, env=env) as worker:
        # The compose health check's URL, on the port given to this worker.
        wait_for_http(f"http://127.0.0.1:{health_port}/health", worker, log, timeout=120)
        # And the server sees it polling the pool (its first heartbeat may follow the health server by a moment).
        wait_until(
            lambda: bool(stack.prefect.post("/work_pools/stockpipe/workers/filter", {})),
            worker,
            log,
            timeout=60,
            what="registered with the server",
        )
        workers = stack.prefect.post("/work_pools/stockpipe/workers/filter", {})
        assert [w["name"] for w in workers] == ["stockpipe-worker"]

        # Triggered by hand as the README says, the deployment runs as a subprocess of this worker, from the
        # directory of prefect.yaml's pull step, and tracks into the MLflow server.
        trigger = subprocess.run(
            [
                PREFECT,
                "deployment",
                "run",
                "daily-pipeline/daily",
                "--param",
                f'tickers=["{TICKER}"]',
                "--param",
                f'as_of="{AS_OF}"',
                "--param",
                "force=true",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert trigger.returncode == 0, trigger.stdout + trigger.stderr
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", trigger.stdout).group(1)
        flow_run = wait_for_flow_run(stack.prefect.url, flow_run_id, timeout=400, auth=stack.prefect.auth)
        assert flow_run["state"]["type"] == "COMPLETED", log_tail(log)
        assert flow_run["work_pool_name"] == "stockpipe" and flow_run["deployment_id"]
    assert worker.returncode is not None, "the worker was stopped"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow.url, registry_uri=stack.mlflow.url)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("stockpipe").experiment_id],
        filter_string=f"tags.prefect_flow_run_id = '{flow_run_id}'",
    )
    assert run.info.status == "FINISHED" and run.data.tags["decision"] in (PROMOTED, KEPT)
    registered = client.search_model_versions(f"name = '{MODEL}' and run_id = '{run.info.run_id}'")
    assert bool(registered) == (run.data.tags["decision"] == PROMOTED), "only a promoted challenger is registered"

    (deployment,) = stack.prefect.post("/deployments/filter", {"deployments": {"name": {"any_": ["daily"]}}})
    assert deployment["work_pool_name"] == "stockpipe"
    assert deployment["entrypoint"] == "flows/daily.py:daily_pipeline"
    (schedule,) = deployment["schedules"]
    (declared,) = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"][0]["schedules"]
    assert (schedule["schedule"]["cron"], schedule["schedule"]["timezone"]) == (declared["cron"], declared["timezone"])
    (step,) = deployment["pull_steps"]
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(PROJECT_ROOT)
    assert_no_secret_in(stack, deploy.stdout + deploy.stderr + trigger.stdout + trigger.stderr, "deploy or trigger")
    assert_no_secret_in(stack, log.read_text(errors="replace"), "the worker (and its flow run)")


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


# A run in the middle of training (its first epoch logged, more to come): the moment to pull the server away.
MID_RUN = (
    "SELECT count(*) FROM runs r JOIN latest_metrics m ON m.run_uuid = r.run_uuid "
    "WHERE r.status = 'RUNNING' AND m.key = 'loss'"
)
# The MLflow client's own retries, short here (its default waits about 4 minutes per request); the flow still
# retries the tracking task twice with backoff on top of them.
QUICK_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def registry_consistent(tracking_uri: str) -> list[str]:
    """Every version carries a decision and, unless it is the naive baseline, its run holds the test metrics: what
    `half-registered` is not."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    problems = []
    for version in client.search_model_versions(f"name = '{MODEL}'"):
        metrics = client.get_run(version.run_id).data.metrics
        if version.tags.get("model_kind") == "lstm" and "challenger_rmse" not in metrics:
            problems.append(f"v{version.version} has no test metrics on its run")
        if not version.tags.get("decision"):
            problems.append(f"v{version.version} has no decision")
    return problems


def test_the_tracking_server_going_away_mid_run_fails_the_ticker_and_changes_nothing(stack, tmp_path):
    before = registry_snapshot(stack.mlflow.url, tmp_path / "before")
    server = stack.mlflow.process
    log = stack.root / "logs" / "cut-off-run.log"
    with log.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "run", "--tickers", TICKER, "--as-of", AS_OF, "--force"],
            cwd=stack.root,
            env=stack.client_env(**QUICK_CLIENT_RETRIES, STOCKPIPE_TRAINING__EPOCHS="4"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: stack.pg.psql(MID_RUN, database="mlflow") != "0",
                run,
                log,
                timeout=300,
                what="logging a challenger's metrics",
            )
            os.killpg(server.pid, signal.SIGKILL)  # the server and its workers, at once, with no goodbye
            began = time.monotonic()
            assert run.wait(timeout=300) == 1
            print(f"the ticker failed {time.monotonic() - began:.1f} s after the server went away")
        finally:
            if run.poll() is None:
                run.kill()
    stack.stop_mlflow()
    output = log.read_text()
    (line,) = [row for row in output.splitlines() if row.strip().startswith(f"{TICKER} ")]
    assert re.search(
        rf"{TICKER}\s+failed\s+TrackingUnavailable: MLflow tracking server "
        rf"http://127\.0\.0\.1:{stack.mlflow_port} unreachable while tracking {TICKER}: "
        rf"Connection refused \(the next run settles the run left unfinished\)",
        line,
    ), line
    # The Prefect server saw the tracking task tried three times (two retries) before the ticker failed.
    # The newest run started by hand (no deployment): the deployment's schedule adds runs dated in the future.
    (flow_run,) = stack.prefect.post(
        "/flow_runs/filter",
        {"flow_runs": {"deployment_id": {"is_null_": True}}, "sort": "START_TIME_DESC", "limit": 1},
    )
    assert flow_run["state"]["type"] == "FAILED"
    tasks = stack.prefect.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run["id"]]}}})
    (tracking,) = [t for t in tasks if t["name"] == f"evaluate-{TICKER}"]
    assert (tracking["run_count"], tracking["state"]["type"]) == (3, "FAILED")
    journal = json.loads((stack.home / "reports" / TICKER / "last_run.json").read_text())
    assert journal["decision"] == "failed" and journal["run_id"]

    stack.start_mlflow()
    after = registry_snapshot(stack.mlflow.url, tmp_path / "after")
    assert after["aliases"] == before["aliases"], "the champion alias is unchanged"
    assert after["versions"] == before["versions"], "no version was registered"
    assert registry_consistent(stack.mlflow.url) == []
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow.url)
    cut = client.get_run(journal["run_id"])
    assert cut.info.status == "RUNNING", "nothing could end it while the server was away"

    # The next run, with the server back, settles the cut-off run first and then tracks its own challenger.
    again = stockpipe(stack, "run", "--tickers", TICKER, "--as-of", AS_OF, "--force")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    settled = client.get_run(cut.info.run_id)
    assert (settled.info.status, settled.data.tags["decision"]) == ("FAILED", "failed")
    assert settled.data.tags["reason"].startswith("cut off while"), settled.data.tags["reason"]
    final = registry_snapshot(stack.mlflow.url, tmp_path / "final")
    promoted = again.stdout.count(f"{TICKER}  promoted")
    assert len(final["versions"]) == len(before["versions"]) + promoted
    assert registry_consistent(stack.mlflow.url) == []
