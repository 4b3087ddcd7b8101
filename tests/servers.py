"""Real server processes for tests: PostgreSQL, an MLflow tracking server, a Prefect server.

The building blocks are generic: a free loopback port, a child process whose output goes to a log file, waiting
until it answers (an HTTP health URL or any check), and stopping it by process id, TERM (or the signal it prefers)
then KILL, whatever happened in between. Each child runs in its own session, so its process group id is its pid:
after the child is gone, anything it spawned and left behind (uvicorn workers, postgres backends) is stopped
through that same id. Nothing is ever stopped by name.

    port = free_port()
    with started([..., "--port", str(port)], log=tmp / "x.log", env=clean_env(...)) as child:   # any command
        wait_for_http(f"http://127.0.0.1:{port}/health", child, tmp / "x.log")

    with prefect_server(tmp / "home", tmp / "prefect.log") as prefect:       # on SQLite in tmp / "home"
        env = clean_env(PREFECT_API_URL=prefect.url)                           # http://127.0.0.1:<port>/api
        runs = prefect.post("/flow_runs/filter", {})                           # the REST API, with its credentials

    with prefect_server(..., auth_string="user:password") as prefect:         # every API request needs basic auth
        env = clean_env(PREFECT_API_URL=prefect.url, PREFECT_API_AUTH_STRING=prefect.auth)

    with postgres_server(tmp / "logs") as pg:       # initdb + postgres on a free port, as an unprivileged user if root
        pg.psql("CREATE DATABASE prefect")
        url = pg.url("prefect", driver="postgresql+asyncpg")
        with prefect_server(tmp / "home", tmp / "prefect.log", database_url=url) as prefect:
            ...
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.local_server import answers, free_port

PROJECT_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# Settings a test's own process may carry (a test harness, a developer's shell) that must not leak into servers.
FOREIGN_PREFIXES = ("PREFECT_", "MLFLOW_", "STOCKPIPE_")
# Health checks go straight to loopback, never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerFailed(RuntimeError):
    """A server exited or never became ready; the message ends with the tail of its log."""


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without Prefect/MLflow/stockpipe settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
    env.update(overrides)
    return env


def log_tail(log: Path, chars: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunAs:
    """An unprivileged account to run a child as (only possible, and only needed, when we are root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, *names: str) -> RunAs:
        for name in names:
            try:
                entry = pwd.getpwnam(name)
            except KeyError:
                continue
            return cls(name, entry.pw_uid, entry.pw_gid)
        raise LookupError(f"none of the users {names} exists")

    def popen_kwargs(self) -> dict:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies or someone else's processes left: nothing we can or should stop
        return False


def _group_alive(pgid: int) -> bool:
    return _signal_group(pgid, 0)


def stop(child: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Stop a child started by `started`: `sig` to its pid, KILL after `timeout`, then whatever is left of its group."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(sig)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait(10)
    # The child is gone; processes it spawned in its session may not be (e.g. uvicorn workers of a killed parent).
    pgid = child.pid
    if _signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)


@contextlib.contextmanager
def started(
    command: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path = PROJECT_ROOT,
    run_as: RunAs | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 20,
) -> Iterator[subprocess.Popen]:
    """Run `command` in its own session with stdout and stderr in `log`; stopped by pid on the way out, always."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        child = subprocess.Popen(
            list(command),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **(run_as.popen_kwargs() if run_as else {}),
        )
    try:
        yield child
    finally:
        stop(child, sig=stop_signal, timeout=stop_timeout)


def wait_until(
    check: Callable[[], bool], child: subprocess.Popen, log: Path, *, timeout: float = 120, what: str = "ready"
) -> float:
    """Poll `check` until it is true; fail at once if the child exits. Returns the seconds waited."""
    begun = time.monotonic()
    while True:
        if child.poll() is not None:
            raise ServerFailed(f"{child.args[0]} exited with {child.returncode} before {what}:\n{log_tail(log)}")
        if check():
            return time.monotonic() - begun
        if time.monotonic() - begun > timeout:
            raise ServerFailed(f"{child.args[0]} not {what} within {timeout:.0f}s:\n{log_tail(log)}")
        time.sleep(0.25)


def wait_for_http(url: str, child: subprocess.Popen, log: Path, *, timeout: float = 120) -> float:
    """Wait until `url` answers 2xx (a health endpoint); returns the seconds waited."""
    return wait_until(lambda: answers(url, timeout=3), child, log, timeout=timeout, what=f"answering {url}")


# -- PostgreSQL ---------------------------------------------------------------------------------

POSTGRES_PROGRAMS = ("initdb", "postgres", "pg_isready", "psql")


def _version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL server binaries: Debian's /usr/lib/postgresql/<ver>/bin, else `pg_ctl` on PATH."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    on_path = [Path(p).resolve().parent for p in [shutil.which("pg_ctl")] if p]
    for bindir in [*debian, *on_path]:
        if all((bindir / program).is_file() for program in POSTGRES_PROGRAMS):
            return bindir
    return None


def postgres_version(bindir: Path) -> str:
    """E.g. 'postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)'."""
    return subprocess.run([bindir / "postgres", "--version"], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int
    superuser: str
    password: str
    process: subprocess.Popen
    log: Path
    host: str = "127.0.0.1"

    def url(
        self, database: str, user: str | None = None, password: str | None = None, driver: str = "postgresql+psycopg"
    ) -> str:
        """A SQLAlchemy URL, e.g. driver 'postgresql+psycopg' (psycopg 3, MLflow) or 'postgresql+asyncpg' (Prefect)."""
        user = user or self.superuser
        password = self.password if password is None else password
        return f"{driver}://{user}:{password}@{self.host}:{self.port}/{database}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for libpq clients (psql, shell scripts) to reach this server as the superuser."""
        return {
            **os.environ,
            "PATH": f"{self.bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.superuser,
            "PGPASSWORD": self.password,
            "PGDATABASE": "postgres",
            **extra,
        }

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [self.bindir / "psql", "-v", "ON_ERROR_STOP=1", "-X", "-At", "-d", database, "-c", sql],
            env=self.client_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def ready(self) -> bool:
        return (
            subprocess.run(
                [self.bindir / "pg_isready", "-q", "-h", self.host, "-p", str(self.port)],
                capture_output=True,
                timeout=10,
            ).returncode
            == 0
        )


@contextlib.contextmanager
def postgres_server(
    logs: Path, *, port: int | None = None, superuser: str = "stockpipe", bindir: Path | None = None
) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a free loopback port, removed afterwards; its log is copied into `logs`.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` account (or `nobody`), in a
    directory of its own under the system temp dir (pytest's tmp_path is private to root). Its unix socket is there
    too, never in /var/run/postgresql.
    """
    bindir = bindir or postgres_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries not found: run `make postgres`")
    run_as = RunAs.lookup("postgres", "nobody") if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="stockpipe-pg-"))
    logs.mkdir(parents=True, exist_ok=True)
    password = secrets.token_hex(16)
    try:
        pwfile = root / "superuser-password"
        pwfile.write_text(password + "\n")
        if run_as:
            os.chown(root, run_as.uid, run_as.gid)
            os.chown(pwfile, run_as.uid, run_as.gid)
        initdb = subprocess.run(
            [
                bindir / "initdb",
                "-D",
                root / "data",
                "-U",
                superuser,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            **(run_as.popen_kwargs() if run_as else {}),
        )
        pwfile.unlink()
        if initdb.returncode != 0:
            raise ServerFailed(f"initdb failed ({initdb.returncode}):\n{initdb.stdout}\n{initdb.stderr}")
        port = port or free_port()
        log = root / "postgres.log"
        command = [
            bindir / "postgres",
            "-D",
            root / "data",
            "-p",
            str(port),
            "-k",
            root,
            "-c",
            "listen_addresses=127.0.0.1",
            # A test cluster: durability across power loss is not what is being tested, speed is welcome.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        try:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for connected clients to leave.
            with started(
                [str(c) for c in command], log=log, cwd=root, run_as=run_as, stop_signal=signal.SIGINT, stop_timeout=30
            ) as child:
                server = Postgres(bindir, root, port, superuser, password, child, log)
                wait_until(server.ready, child, log, timeout=60, what="accepting connections")
                yield server
        finally:
            if log.exists():
                shutil.copy(log, logs / "postgres.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- HTTP with basic auth -----------------------------------------------------------------------


def basic_auth(credentials: str) -> dict[str, str]:
    """The Authorization header for `user:password`, as both servers' basic auth expects it."""
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _request(
    url: str, body: dict | None, auth: str | None, headers: Mapping[str, str] | None = None
) -> urllib.request.Request:
    all_headers = {**(headers or {}), **(basic_auth(auth) if auth else {})}
    if body is None:
        return urllib.request.Request(url, headers=all_headers)
    return urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json", **all_headers}
    )


def http_status(
    url: str,
    *,
    body: dict | None = None,
    auth: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> int:
    """The HTTP status a GET (or, with `body`, a JSON POST) gets, refusals included: 401 is an answer here."""
    request = _request(url, body, auth, headers)
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def http_json(url: str, body: dict | None = None, *, auth: str | None = None, timeout: float = 30) -> list | dict:
    """GET (or, with `body`, POST as JSON) and decode the JSON answer; an HTTP error raises."""
    with _DIRECT.open(_request(url, body, auth), timeout=timeout) as response:
        return json.loads(response.read())


# -- MLflow and Prefect servers -----------------------------------------------------------------


@dataclass
class HttpServer:
    """A started server: `url` is what clients use (for Prefect, the API URL ending in /api); `auth` is the
    `user:password` it requires as basic auth, or None when it lets anyone in."""

    url: str
    health_url: str
    process: subprocess.Popen
    log: Path
    timeout: float
    auth: str | None = None

    def wait_ready(self) -> float:
        """Block until the health URL answers; returns the seconds waited."""
        return wait_for_http(self.health_url, self.process, self.log, timeout=self.timeout)

    def get(self, path: str) -> list | dict:
        """GET a path under `url` with this server's credentials, decoded from JSON."""
        return http_json(f"{self.url}{path}", auth=self.auth)

    def post(self, path: str, body: dict) -> list | dict:
        """POST JSON to a path under `url` (e.g. /flow_runs/filter) with this server's credentials, decoded."""
        return http_json(f"{self.url}{path}", body, auth=self.auth)


@contextlib.contextmanager
def http_server(
    command: Sequence[str],
    env: dict[str, str],
    log: Path,
    url: str,
    health_url: str,
    *,
    wait: bool,
    timeout: float,
    auth: str | None = None,
) -> Iterator[HttpServer]:
    """`started` for a server that answers `health_url` once it is up; waits for that unless wait=False."""
    with started(command, log=log, env=env) as child:
        server = HttpServer(url, health_url, child, log, timeout, auth)
        if wait:
            server.wait_ready()
        yield server


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts: Path,
    log: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    extra_args: Sequence[str] = (),
    wait: bool = True,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
    entrypoint: Sequence[str] = (),
    auth: str | None = None,
) -> Iterator[HttpServer]:
    """`mlflow server` on 127.0.0.1 with served artifacts (`mlflow-artifacts:/`, stored under `artifacts`).

    `extra_args` come last, so they override the defaults (click keeps an option's last value). `env` adds to
    the server's environment and `entrypoint` runs first, with the server command as its arguments (as a
    container's entrypoint would); `auth` is the `user:password` the server will require, for `.get`/`.post`.
    With wait=False it yields as soon as the process is started: call `.wait_ready()` (e.g. after starting
    another server, so both start up at once).
    """
    port = port or free_port()
    # The store URI goes through the environment, as in docker/compose.yaml: its password stays out of `ps`.
    # No GenAI job runner (a pool of huey consumer processes): the pipeline never submits server-side jobs.
    server_env = clean_env(
        **{"MLFLOW_BACKEND_STORE_URI": backend_store_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    )
    command = [
        *entrypoint,
        str(VENV_BIN / "mlflow"),
        "server",
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        *extra_args,
    ]
    url = f"http://127.0.0.1:{port}"
    with http_server(command, server_env, log, url, f"{url}/health", wait=wait, timeout=timeout, auth=auth) as server:
        yield server


@contextlib.contextmanager
def prefect_server(
    home: Path,
    log: Path,
    *,
    database_url: str | None = None,
    port: int | None = None,
    ui: bool = False,
    wait: bool = True,
    timeout: float = 180,
    auth_string: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[HttpServer]:
    """`prefect server start` on 127.0.0.1 with PREFECT_HOME `home` (`env` added to its environment): on PostgreSQL
    when `database_url` is given
    (postgresql+asyncpg://...), else on a SQLite file in `home`. `.url` is the API URL (http://127.0.0.1:<port>/api).
    With `auth_string` (`user:password`) every API request but GET /health must carry it as basic auth; clients
    get it as PREFECT_API_AUTH_STRING, `.get`/`.post` send it.

    With wait=False it yields as soon as the process is started: call `.wait_ready()`.
    """
    port = port or free_port()
    server_env = clean_env(
        PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED=str(ui).lower()
    )
    if database_url:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if auth_string:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = auth_string
    server_env.update(env or {})
    command = [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    api = f"http://127.0.0.1:{port}/api"
    health = f"{api}/health"
    with http_server(command, server_env, log, api, health, wait=wait, timeout=timeout, auth=auth_string) as server:
        yield server


# -- the Prefect API ----------------------------------------------------------------------------

FINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def api_post(api: str, path: str, body: dict, *, auth: str | None = None) -> list | dict:
    """POST a JSON body to a Prefect API path (e.g. /flow_runs/filter) and return the decoded answer; `auth` is
    the server's `user:password` when it requires one (`HttpServer.post` passes its own)."""
    return http_json(f"{api}{path}", body, auth=auth)


def wait_for_flow_run(api: str, flow_run_id: str, timeout: float = 300, *, auth: str | None = None) -> dict:
    """The flow run once it reaches a final state."""
    deadline = time.monotonic() + timeout
    while True:
        run = http_json(f"{api}/flow_runs/{flow_run_id}", auth=auth, timeout=10)
        if run["state"]["type"] in FINAL_STATES:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {flow_run_id} still {run['state']['type']} after {timeout:.0f}s")
        time.sleep(1)
