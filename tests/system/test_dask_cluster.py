"""An existing Dask cluster, started the way a user starts one (`dask scheduler`, then two `dask worker` processes
preloading flows.dask_worker, all on 127.0.0.1), runs the daily flow with `--dask-address`: every ticker decided and
recorded once, the work spread over both workers, each worker importing the flow's libraries once, at its start."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.common.symbols import registered_model_name
from tests.servers import free_port, log_tail
from tests.support import MSFT_LAST_SESSION, PROJECT_ROOT, SNAPSHOTS, TINY_TRAINING, clean_env, stockpipe

pytestmark = pytest.mark.system

DASK = str(Path(sys.executable).with_name("dask"))
TICKERS = ["MSFT", "GSPC", "MSFTB", "GSPCB"]


@pytest.fixture
def exports(tmp_path: Path) -> Path:
    """Four tickers from the two bundled histories (the last six years), as a folder of CSV exports."""
    folder = tmp_path / "exports"
    folder.mkdir()
    for ticker in TICKERS:
        frame = pd.read_csv(SNAPSHOTS / f"{ticker[:4]}.csv")
        frame = frame[(frame["Date"] >= "2011-11-01") & (frame["Date"] <= MSFT_LAST_SESSION.isoformat())]
        frame.to_csv(folder / f"{ticker}.csv", index=False)
    return folder


@pytest.fixture
def cluster(tmp_path: Path):
    """A scheduler and two single-threaded workers, each its own process group, logs in tmp_path."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = clean_env(PYTHONPATH=str(PROJECT_ROOT))
    processes: list[tuple[subprocess.Popen, Path]] = []

    def start(name: str, command: list[str]) -> None:
        log = tmp_path / f"{name}.log"
        process = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )
        processes.append((process, log))

    start("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
    for i in range(2):
        start(
            f"worker-{i}",
            [DASK, "worker", address, "--nthreads", "1", "--no-dashboard", "--preload", "flows.dask_worker"],
        )
    try:
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=180)
        yield address, tmp_path
    finally:
        for process, _ in reversed(processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def test_the_daily_flow_runs_on_an_existing_cluster_every_ticker_once(cluster, exports, tmp_path):
    address, logs_dir = cluster
    home = tmp_path / "state"
    result = stockpipe(
        *("run", "--source", "csv", "--csv-dir", str(exports), "--as-of", MSFT_LAST_SESSION.isoformat()),
        *("--tickers", *TICKERS, "--task-runner", "dask", "--dask-address", address),
        cwd=tmp_path,
        timeout=900,
        STOCKPIPE_HOME=str(home),
        **TINY_TRAINING,
    )
    worker_logs = {i: log_tail(logs_dir / f"worker-{i}.log", 200_000) for i in range(2)}
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + str(worker_logs)

    rows = json.loads(stockpipe("status", "--json", cwd=tmp_path, STOCKPIPE_HOME=str(home)).stdout)
    assert sorted(row["ticker"] for row in rows) == sorted(TICKERS)
    assert all(row["last_decision"] in ("promoted", "kept") for row in rows), rows

    # Recorded once: per ticker one baseline run and one daily run (its first attempt), and at most one version
    # beyond the baseline's.
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, max_results=1000)
    by_role = Counter((r.data.tags.get("ticker"), r.data.tags.get("role")) for r in runs)
    assert by_role == Counter({(t, role): 1 for t in TICKERS for role in ("baseline", "daily")}), by_role
    assert all(r.info.run_name.endswith("#1") for r in runs if r.data.tags.get("role") == "daily")
    for ticker in TICKERS:
        versions = client.search_model_versions(f"name = '{registered_model_name(ticker)}'")
        assert 1 <= len(versions) <= 2, (ticker, len(versions))

    # The existing workers did the work (both of them), and each paid its imports once, at its start.
    ran_on = {i for i, log in worker_logs.items() if re.search(r"Task run '(MSFT|GSPC)", log)}
    assert ran_on == {0, 1}, {i: log[-1500:] for i, log in worker_logs.items()}
    for log in worker_logs.values():
        assert log.count("preloaded the flow's libraries") == 1, log[-1500:]
    assert "Traceback" not in result.stdout + result.stderr
