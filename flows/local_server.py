"""Prefect and MLflow for a machine without servers: what `stockpipe run` and `stockpipe ui` start themselves.

Without PREFECT_API_URL, a run starts Prefect's API itself, in a child process tied to it by the kernel (Prefect's own
temporary server is a child that a killed run leaves behind). The flow runs land in the SQLite database under
STOCKPIPE_HOME/prefect, where `stockpipe ui` shows them in Prefect's UI. Every child process started here, the UIs'
included, stops with its parent however the parent ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pipeline.common.redact import masked_uri
from pipeline.common.settings import Settings

log = logging.getLogger("pipeline.flow")

STARTUP_TIMEOUT_SECONDS = 180
# Loopback only: health checks must not go through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 2) -> bool:
    """Whether `url` answers with a 2xx status, straight to the host (no proxy)."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


class LocalPrefectApi:
    """Prefect's REST API (no UI, no background services) for one run, in a child process the kernel stops when
    this process dies, however it dies (parent-death signal): a killed run cannot leave it behind. Started early, it
    comes up on the other core while this process imports TensorFlow, MLflow and GX."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> LocalPrefectApi:
        # The command Prefect's own temporary server runs, plus the parent-death signal it lacks.
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        env.pop("PREFECT_API_URL", None)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        self.process = start_child(command, env)
        return self

    def ready(self) -> bool:
        return self.process is not None and answers(f"{self.api_url}/health", timeout=0.5)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"the local Prefect API exited with {self.process.returncode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect API did not answer within {timeout:.0f}s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_prefect_api() -> LocalPrefectApi | None:
    """A local API for a run without PREFECT_API_URL, starting now (call early, `prefect_api` waits for it)."""
    return None if os.environ.get("PREFECT_API_URL") else LocalPrefectApi().start()


@contextlib.contextmanager
def prefect_api(api: LocalPrefectApi | None, share_with_workers: bool = False) -> Iterator[None]:
    """Run with `api` (from start_prefect_api) as Prefect's API, or the configured server when it is None.
    `share_with_workers` also hands its URL to child processes (Dask workers) through the environment."""
    if api is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        waited = time.perf_counter()
        api.wait_ready()
        log.info(
            "local Prefect API on %s (flow runs kept in %s); waited %.1fs for it",
            api.api_url,
            os.environ.get("PREFECT_HOME", "~/.prefect"),
            time.perf_counter() - waited,
        )
        if share_with_workers:
            os.environ["PREFECT_API_URL"] = api.api_url
        with temporary_settings(updates={PREFECT_API_URL: api.api_url}):
            try:
                yield
            finally:
                from prefect.events.worker import EventsWorker
                from prefect.logging.handlers import APILogWorker

                # The last log records and events must reach the API before it stops, however the run ended:
                # otherwise Prefect's workers retry against the closed port at exit.
                APILogWorker.drain_all(timeout=5)
                EventsWorker.drain_all(timeout=5)
    finally:
        if share_with_workers:
            os.environ.pop("PREFECT_API_URL", None)
        api.stop()


# -- the UIs -----------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, preexec_fn=die_with_parent if sys.platform == "linux" else None)


def mlflow_ui_command(settings: Settings, port: int) -> list[str]:
    uri = settings.tracking_uri()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if uri.startswith("sqlite:"):
        command += ["--default-artifact-root", settings.artifacts_dir.as_uri()]
    return command


def prefect_ui_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def run_local_uis(settings: Settings, mlflow_port: int, prefect_port: int | None) -> int:
    """MLflow's UI over the tracking store and, when no Prefect server is configured, Prefect's UI over the flow runs
    that `stockpipe run` kept under STOCKPIPE_HOME/prefect. Runs until Ctrl-C; returns the first child's exit code."""
    children = [start_child(mlflow_ui_command(settings, mlflow_port))]
    print(f"MLflow UI for {masked_uri(settings.tracking_uri())}: http://127.0.0.1:{mlflow_port}", flush=True)
    if prefect_port is not None:
        if os.environ.get("PREFECT_API_URL"):
            print(f"Prefect UI: your server at {os.environ['PREFECT_API_URL'].removesuffix('/api')}", flush=True)
        else:
            env = {
                **os.environ,
                "PREFECT_SERVER_API_HOST": "127.0.0.1",
                "PREFECT_SERVER_API_PORT": str(prefect_port),
                "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api",
            }
            children.append(start_child(prefect_ui_command(prefect_port), env))
            print(
                f"Prefect UI over the local flow runs ({Path(os.environ['PREFECT_HOME'])}): "
                f"http://127.0.0.1:{prefect_port}",
                flush=True,
            )
    print("Ctrl-C stops them.", flush=True)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=15)
            if child.poll() is None:
                child.kill()
    return next((c.returncode for c in children if c.returncode not in (None, 0, -signal.SIGTERM)), 0)
