"""Secrets never leave: the pipeline run against a Prefect server requiring an auth string and an MLflow server with
its basic-auth app, each password a fresh random value, and every place the pipeline writes to scanned for them.

Scanned: every file under STOCKPIPE_HOME (and the client's PREFECT_HOME inside it), the captured stdout and stderr
of every command, everything MLflow holds (experiment tags; each run's params, tags including its description, metric
names and every artifact; logged models; registered models and versions), and everything the Prefect server holds
about the flow runs (the runs with their parameters and state messages, their task runs, logs and artifacts), and
the servers' own logs. Each secret is looked for as it is and base64-encoded at any alignment (a basic-auth header,
a result Prefect pickled and stored as base64), in every file and inside zip archives (Keras models) and gzip files.

Runs: `stockpipe run` with the credentials in MLFLOW_TRACKING_USERNAME/_PASSWORD and PREFECT_API_AUTH_STRING, then
`status --json` and `predict --json`; then the same with the password inline in the tracking URI
(http://admin:<password>@127.0.0.1:<port>, which MLflow's client sends as basic auth), a forced run included so that
a whole run is recorded through that URI; and a run against a closed port with the password inline, which fails with
TrackingUnavailable naming the server with its password masked.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import re
import secrets
import subprocess
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import servers
from tests.servers import HttpServer, clean_env, free_port, http_status, log_tail, mlflow_server
from tests.support import TINY_TRAINING, stockpipe

pytestmark = pytest.mark.system

TICKER, AS_OF = "MSFT", "2017-11-10"
MLFLOW_ADMIN = "admin"
PREFECT_USER = "stockpipe"
# The MLflow client gives up at once on a closed port instead of retrying for minutes.
NO_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """Overrides the integration suite's in-process Prefect test server: every command here runs against the real
    servers started below, given their URLs explicitly."""
    return


# -- what is looked for ---------------------------------------------------------------------------------------------


def base64_forms(secret: bytes) -> list[bytes]:
    """How `secret` reads inside any base64 text (a basic-auth header, a pickled result Prefect stored as base64):
    one form per alignment in the encoded stream, without the characters that depend on neighbouring bytes."""
    forms = []
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * shift + secret)
            forms.append(encoded[(shift * 4 + 2) // 3 : (shift + len(secret)) // 3 * 4])
    return forms


@dataclass(frozen=True)
class Secret:
    name: str
    value: str

    def needles(self) -> list[tuple[str, bytes]]:
        """What betrays the secret: itself, and itself base64-encoded (e.g. in a basic-auth header)."""
        raw = self.value.encode()
        return [(self.name, raw)] + [(f"{self.name} (base64-encoded)", form) for form in base64_forms(raw)]


@dataclass
class Scan:
    """What was looked at, and where a secret was found."""

    secrets: list[Secret]
    looked: dict[str, int] = field(default_factory=dict)
    leaks: list[str] = field(default_factory=list)

    def check(self, kind: str, where: str, content: bytes | str) -> None:
        data = content.encode(errors="surrogateescape") if isinstance(content, str) else content
        self.looked[kind] = self.looked.get(kind, 0) + 1
        for secret in self.secrets:
            for what, needle in secret.needles():
                if needle in data:
                    at = data.index(needle)
                    context = data[max(0, at - 80) : at].decode(errors="replace")
                    times = data.count(needle)
                    self.leaks.append(f"{what} in {kind} {where}, {times} time(s), first after: {context!r}")
                    break

    def check_file(self, kind: str, where: str, path: Path) -> None:
        """A file's bytes, and each member of it when it is a zip (a Keras model) or its content when gzipped."""
        data = path.read_bytes()
        self.check(kind, where, data)
        if data[:2] == b"\x1f\x8b":
            with contextlib.suppress(OSError, EOFError):
                self.check(f"{kind} (gunzipped)", where, gzip.decompress(data))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    self.check(f"{kind} (zip member)", f"{where}!{member}", archive.read(member))

    def assert_clean(self) -> None:
        assert not self.leaks, "secrets leaked:\n" + "\n".join(self.leaks)


# -- the servers and the commands -----------------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    mlflow: HttpServer
    prefect: HttpServer
    mlflow_password: str
    prefect_password: str
    flask_secret_key: str
    results: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    closed_port: int = 0

    @property
    def home(self) -> Path:
        return self.root / "state"

    @property
    def secrets(self) -> list[Secret]:
        return [
            Secret("the MLflow admin password", self.mlflow_password),
            Secret("the Prefect auth string's password", self.prefect_password),
            Secret("the MLflow server's Flask secret key", self.flask_secret_key),
        ]

    def inline_uri(self, port: int | None = None) -> str:
        port = port or int(self.mlflow.url.rsplit(":", 1)[1])
        return f"http://{MLFLOW_ADMIN}:{self.mlflow_password}@127.0.0.1:{port}"

    def env(self, home: Path | None = None, **extra: str) -> dict[str, str]:
        """A client of both servers, credentials from the environment; `extra` on top."""
        home = home or self.home
        env = clean_env(
            **TINY_TRAINING,
            STOCKPIPE_HOME=str(home),
            # Where the Prefect client keeps anything of its own: inside the state directory, so it is scanned too.
            PREFECT_HOME=str(home / "prefect"),
            PREFECT_API_URL=self.prefect.url,
            PREFECT_API_AUTH_STRING=self.prefect.auth or "",
            MLFLOW_TRACKING_URI=self.mlflow.url,
            MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN,
            MLFLOW_TRACKING_PASSWORD=self.mlflow_password,
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
        )
        env.update(extra)
        return env

    def inline_env(self, port: int | None = None, home: Path | None = None, **extra: str) -> dict[str, str]:
        """The password only inside the tracking URI: no MLFLOW_TRACKING_USERNAME/_PASSWORD."""
        env = self.env(home, MLFLOW_TRACKING_URI=self.inline_uri(port), **extra)
        del env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]
        return env

    def run(self, label: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        began = time.monotonic()
        result = stockpipe(*args, cwd=self.root, env=env, timeout=300)
        print(f"{label}: exit {result.returncode} in {time.monotonic() - began:.1f} s")
        self.results[label] = result
        return result

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log_tail(log, 3000)}" for log in sorted((self.root / "logs").glob("*.log")))


def write_auth_ini(path: Path, database_uri: str) -> None:
    """basic_auth.ini as docker/mlflow-basic-auth.sh writes it: no admin in it (MLflow reads MLFLOW_AUTH_ADMIN_*),
    readable by this user only."""
    value = database_uri.replace("%", "%%")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = "\n".join(
        [
            "# Written by tests/system/test_secrets.py in the format of docker/mlflow-basic-auth.sh.",
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = {value}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "grant_default_workspace_access = false",
            "auth_cache_ttl_seconds = 60",
            "",
        ]
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


@contextlib.contextmanager
def started_stack(root: Path) -> Iterator[Stack]:
    mlflow_password, prefect_password, flask_key = (secrets.token_hex(24) for _ in range(3))
    ini = root / "mlflow-home" / "mlflow-auth" / "basic_auth.ini"
    write_auth_ini(ini, f"sqlite:///{root / 'mlflow-auth.db'}")
    began = time.monotonic()
    with (
        servers.prefect_server(
            root / "prefect-server-home",
            root / "logs" / "prefect-server.log",
            auth_string=f"{PREFECT_USER}:{prefect_password}",
            wait=False,
        ) as prefect,
        mlflow_server(
            f"sqlite:///{root / 'mlflow.db'}",
            root / "mlflow-artifacts",
            root / "logs" / "mlflow.log",
            extra_args=["--app-name=basic-auth"],
            env={
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_USERNAME": MLFLOW_ADMIN,
                "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": flask_key,
            },
            auth=f"{MLFLOW_ADMIN}:{mlflow_password}",
            wait=False,
        ) as mlflow,
    ):
        mlflow.wait_ready()  # both start at once
        prefect.wait_ready()
        print(f"\nmlflow (basic-auth) and prefect (auth string) servers ready in {time.monotonic() - began:.1f} s")
        yield Stack(root, mlflow, prefect, mlflow_password, prefect_password, flask_key)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("secrets")
    with started_stack(root) as stack:
        began = time.monotonic()
        # A run against a closed port, with the password inline, fails while the real run trains (it only waits
        # for its retries). Its own state directory, so that it cannot race the real run's.
        stack.closed_port = free_port()
        closed_env = stack.inline_env(stack.closed_port, home=stack.root / "state-closed-port", **NO_CLIENT_RETRIES)
        with ThreadPoolExecutor(max_workers=2) as pool:
            closed = pool.submit(
                stack.run, "run (closed port)", "run", "--tickers", TICKER, "--as-of", AS_OF, env=closed_env
            )
            run = stack.run("run", "run", "--tickers", TICKER, "--as-of", AS_OF, env=stack.env())
            closed.result()
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + stack.logs()

        inline = stack.inline_env()
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [
                pool.submit(stack.run, "status", "status", "--json", env=stack.env()),
                pool.submit(stack.run, "predict", "predict", TICKER, "--json", env=stack.env()),
                pool.submit(stack.run, "predict (inline)", "predict", TICKER, "--json", env=inline),
                pool.submit(
                    stack.run,
                    "status (closed port)",
                    "status",
                    "--json",
                    env=stack.inline_env(stack.closed_port, **NO_CLIENT_RETRIES),
                ),
            ]
            for job in jobs:
                job.result()
        # The whole run again through the URI carrying the password: a new MLflow run, its URL, its tags.
        stack.run("run (inline)", "run", "--tickers", TICKER, "--as-of", AS_OF, "--force", env=inline)
        stack.run("status (inline)", "status", "--json", env=inline)
        print(f"commands done in {time.monotonic() - began:.1f} s")
        yield stack


# -- the commands did what they should (so that the scans below mean something) -------------------------------------


def test_the_commands_ran_with_the_credentials(stack):
    # Both servers refuse a request without credentials: whatever the commands did, they did it logged in.
    assert http_status(f"{stack.mlflow.url}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert http_status(f"{stack.prefect.url}/flow_runs/filter", body={}) == 401
    results = stack.results
    for label in ("status", "predict", "run (inline)", "predict (inline)", "status (inline)"):
        assert results[label].returncode == 0, f"{label}:\n{results[label].stdout[-3000:]}{results[label].stderr}"

    (row,) = json.loads(results["status"].stdout)
    assert row["ticker"] == TICKER and row["champion_version"] and row["last_decision"] in ("promoted", "kept")
    forecast = json.loads(results["predict"].stdout)
    assert forecast["forecast_close"] > 0 and str(forecast["model_version"]) == str(row["champion_version"])

    # MLflow's client authenticates with the credentials of the URI itself: the forced run was tracked through it.
    (line,) = [r for r in results["run (inline)"].stdout.splitlines() if r.strip().startswith(f"{TICKER} ")]
    assert line.split()[1] in ("promoted", "kept"), line
    assert json.loads(results["predict (inline)"].stdout)["forecast_close"] > 0
    (inline_row,) = json.loads(results["status (inline)"].stdout)
    assert inline_row["ticker"] == TICKER and inline_row["champion_version"]


def test_an_unreachable_tracking_uri_is_named_with_its_password_masked(stack):
    masked = f"http://{MLFLOW_ADMIN}:***@127.0.0.1:{stack.closed_port}"
    run = stack.results["run (closed port)"]
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]
    output = run.stdout + run.stderr
    assert "TrackingUnavailable" in output and f"MLflow tracking server {masked} unreachable" in output, output[-3000:]

    status = stack.results["status (closed port)"]
    assert status.returncode == 0, status.stderr[-3000:]
    assert f"MLflow tracking server {masked} unreachable" in status.stderr, status.stderr[-3000:]


# -- the scans ------------------------------------------------------------------------------------------------------


def test_no_secret_in_the_captured_output_of_any_command(stack):
    scan = Scan(stack.secrets)
    for label, result in stack.results.items():
        scan.check("output", f"of `{label}` (stdout)", result.stdout)
        scan.check("output", f"of `{label}` (stderr)", result.stderr)
    assert scan.looked["output"] == 2 * 8, scan.looked
    scan.assert_clean()


def test_no_secret_in_any_file_under_the_state_directories(stack):
    scan = Scan(stack.secrets)
    homes = [stack.home, stack.root / "state-closed-port"]
    for home in homes:
        for folder, _, names in os.walk(home):
            for name in names:
                path = Path(folder) / name
                if path.is_file() and not path.is_symlink():
                    scan.check_file("file", str(path.relative_to(stack.root)), path)
    names = {Path(p).name for p in _walk(stack.home)}
    # The run really left its state there: the price store, the journal, the validation report.
    assert {f"{TICKER}.parquet", "last_run.json"} <= names, sorted(names)
    # The last run went through the inline URI: its cached outcome links to the MLflow run with the password masked.
    last = json.loads((stack.home / "reports" / TICKER / "last_run.json").read_text())
    assert last["run_url"].startswith(f"http://{MLFLOW_ADMIN}:***@127.0.0.1:"), last["run_url"]
    assert scan.looked["file"] >= 3, scan.looked
    print(f"scanned {scan.looked['file']} files under the state directories")
    scan.assert_clean()


def _walk(root: Path) -> list[str]:
    return [str(Path(folder) / name) for folder, _, names in os.walk(root) for name in names]


def test_no_secret_in_anything_mlflow_holds(stack, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.mlflow_password)
    uri = stack.mlflow.url
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    scan = Scan(stack.secrets)

    experiment = client.get_experiment_by_name("stockpipe")
    scan.check("experiment", "stockpipe", json.dumps({"tags": experiment.tags, "name": experiment.name}))
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    for run in runs:
        run_id = run.info.run_id
        scan.check("run", f"{run_id} params", json.dumps(run.data.params))
        scan.check("run", f"{run_id} tags", json.dumps(run.data.tags))  # mlflow.note.content: the description
        scan.check("run", f"{run_id} metric names", json.dumps(sorted(run.data.metrics)))
        scan.check("run", f"{run_id} name and inputs", json.dumps([run.info.run_name, str(run.inputs)]))
        if client.list_artifacts(run_id):
            local = Path(download_artifacts(run_id=run_id, dst_path=str(tmp_path / run_id), tracking_uri=uri))
            for path in (p for p in local.rglob("*") if p.is_file()):
                scan.check_file("artifact", f"{run_id}/{path.relative_to(local)}", path)

    logged = client.search_logged_models([experiment.experiment_id], max_results=100)
    for model in logged:
        scan.check("logged model", model.model_id, json.dumps([model.params, model.tags, model.name]))
        local = Path(
            download_artifacts(
                artifact_uri=model.artifact_location, dst_path=str(tmp_path / model.model_id), tracking_uri=uri
            )
        )
        for path in (p for p in local.rglob("*") if p.is_file()):
            scan.check_file("artifact", f"{model.model_id}/{path.relative_to(local)}", path)

    registered = client.search_registered_models()
    for model in registered:
        scan.check("registered model", model.name, json.dumps([model.description, model.tags, model.aliases]))
    versions = client.search_model_versions()
    for version in versions:
        scan.check(
            "model version",
            f"{version.name} v{version.version}",
            json.dumps([version.description, version.tags, version.source, version.run_link]),
        )

    daily = [r for r in runs if r.data.tags.get("role") == "daily"]
    assert len(daily) >= 2, "the run with the credentials from the environment and the run through the inline URI"
    assert any("mlflow.note.content" in r.data.tags for r in daily), "a run description was scanned"
    assert scan.looked["artifact"] >= 5 and logged and versions, scan.looked
    print(f"scanned MLflow: {len(runs)} runs, {len(logged)} logged models, {len(versions)} versions, {scan.looked}")
    scan.assert_clean()


def _all(server: HttpServer, path: str, body: dict, page: int = 200) -> list[dict]:
    found: list[dict] = []
    while True:
        batch = server.post(path, {**body, "limit": page, "offset": len(found)})
        found.extend(batch)
        if len(batch) < page:
            return found


def test_no_secret_in_anything_the_prefect_server_holds(stack):
    prefect = stack.prefect
    scan = Scan(stack.secrets)
    flow_runs = _all(prefect, "/flow_runs/filter", {})
    ids = [r["id"] for r in flow_runs]
    of_these_runs = {"flow_runs": {"id": {"any_": ids}}}
    for run in flow_runs:  # with its parameters, state message, tags
        scan.check("flow run", f"{run['name']} ({run['state']['type']})", json.dumps(run))
    task_runs = _all(prefect, "/task_runs/filter", of_these_runs)
    for task_run in task_runs:
        scan.check("task run", task_run["name"], json.dumps(task_run))
    logs = _all(prefect, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}})
    for record in logs:
        scan.check("log", f"{record['name']} {record['timestamp']}", record["message"])
    artifacts = _all(prefect, "/artifacts/filter", of_these_runs)
    for artifact in artifacts:
        scan.check("artifact", f"{artifact.get('key')} ({artifact['type']})", json.dumps(artifact))

    # Three runs of the daily pipeline reached the server: the one with environment credentials, the inline URI's and
    # the closed port's, which failed; the scan saw their logs and their summary and link artifacts.
    states = sorted(r["state"]["type"] for r in flow_runs if r["name"].startswith("daily "))
    assert states == ["COMPLETED", "COMPLETED", "FAILED"], states
    assert len(logs) >= 10 and any(a["type"] == "table" for a in artifacts), (len(logs), artifacts)
    # The inline run's link to its MLflow run names the server with the password masked.
    links = [a["data"] for a in artifacts if a["type"] == "markdown" and "MLflow run" in (a["data"] or "")]
    assert any(f"{MLFLOW_ADMIN}:***@127.0.0.1" in link for link in links), links
    failed = next(r for r in flow_runs if r["state"]["type"] == "FAILED")
    assert re.search(r"\*\*\*@127\.0\.0\.1", json.dumps(failed) + json.dumps(logs)), "the masked URI was reported"
    print(f"scanned Prefect: {scan.looked}")
    scan.assert_clean()


def test_no_secret_in_the_servers_own_logs(stack):
    """Not the pipeline's output, but a leak all the same: neither server prints the credentials it was given."""
    scan = Scan(stack.secrets)
    for log in sorted((stack.root / "logs").glob("*.log")):
        scan.check("server log", log.name, log.read_bytes())
    assert scan.looked["server log"] == 2
    scan.assert_clean()


def test_the_scan_finds_a_planted_secret(stack, tmp_path):
    """The scanner itself: a password written anywhere it looks would be found, as it is, in a basic-auth header, in
    base64 at any alignment, or inside a zip archive."""
    scan = Scan(stack.secrets)
    scan.check("file", "planted", b"...url=http://admin:" + stack.mlflow_password.encode() + b"@host...")
    scan.check("log", "planted", b"Authorization: Basic " + base64.b64encode(f"u:{stack.prefect_password}".encode()))
    for shift in range(3):
        blob = base64.b64encode(b"p" * shift + b"pickled " + stack.mlflow_password.encode() + b" end")
        scan.check("file", f"planted base64 at {shift}", b"gAWV" + blob)
    archive = tmp_path / "model.keras"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("config.json", json.dumps({"uri": f"http://a:{stack.mlflow_password}@h"}) * 20)
    scan.check_file("file", "planted zip", archive)
    assert len(scan.leaks) == 6, scan.leaks
    clean = Scan(stack.secrets)
    clean.check("file", "unrelated", secrets.token_hex(2000).encode() + base64.b64encode(secrets.token_bytes(3000)))
    assert clean.leaks == []
