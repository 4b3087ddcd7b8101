"""`make bench`'s `scale` section (issue 26): what a night of a many-ticker universe costs on this machine, in
core-seconds, wall and memory, with the thread runner and with Dask, measured in one go on `bench/universe.py`'s
synthetic tickers (cost only: never a quality figure).

Method, for every run: a real `stockpipe run --source csv` process from its start, in a fresh home, on the universe's
last session (2017-11-10), against the benchmark's running Prefect server, default settings. That is each ticker's
first night (no champion yet: a full training with early stopping, the same condition as the issue's 23 core-seconds
a ticker-day). Core-seconds are the user+system CPU of the run's whole process tree (every waited-for descendant:
Dask's worker processes too) plus the Prefect server's CPU over the same interval; the server's part is also given on
its own, as its share of the run's CPU. Peak memory is the largest resident set of the run's process tree, sampled
every 0.1 s.

- per_ticker_core_seconds: the slope of core-seconds between the two largest thread-runner universes (16 and 64
  tickers): what one more ticker costs, start-up excluded by construction.
- extrapolated_500_minutes: the wall of 500 tickers at the measured wall slope from the largest universe's wall.
- dask_efficiency_32: the same 32 tickers run one after another on one core (one worker, one TensorFlow thread,
  pinned with taskset) against Dask's local cluster of `cores` single-threaded worker processes: the one-core wall
  over cores x the Dask wall, both from process start (each pays one start-up).
"""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path
from typing import Any

import psutil

from bench.universe import ticker_names, write_universe

UNIVERSE_END = "2017-11-10"
ONE_CORE = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
GOALS = {
    "per_ticker_core_seconds": 6.0,
    "peak_rss_gib_64": 2.0,
    "extrapolated_500_minutes": 30.0,
    "dask_efficiency_32": 0.85,
}


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int | None) -> float:
    """A running process's CPU so far, with its live children's (the Prefect server runs uvicorn under it)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        total = 0.0
        for process in (root, *root.children(recursive=True)):
            times = process.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def universe_run(
    run_cli: Any,
    root: Path,
    folder: Path,
    label: str,
    count: int,
    api: str,
    server_pid: int | None,
    workers: int,
    runner: str = "thread",
    extra_env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> dict:
    names = ticker_names(count)
    home = root / label / "state"
    shutil.rmtree(home.parent, ignore_errors=True)
    args = ["run", "--source", "csv", "--csv-dir", str(folder), "--as-of", UNIVERSE_END, "--tickers", *names]
    args += ["--task-runner", runner]
    tree_before, server_before = children_cpu_seconds(), process_cpu_seconds(server_pid)
    outcome = run_cli(args, home, {"STOCKPIPE_MAX_WORKERS": str(workers), **(extra_env or {})}, api, prefix)
    tree = children_cpu_seconds() - tree_before
    server = process_cpu_seconds(server_pid) - server_before
    decided = sum(1 for line in outcome["output"].splitlines() if line.split()[:1] and line.split()[0] in names)
    return {
        "tickers": count,
        "workers": workers,
        "runner": runner,
        "wall": outcome["wall"],
        "core_seconds": tree + server,
        "core_seconds_per_ticker": (tree + server) / count,
        "api_core_seconds": server,
        "api_cpu_share": server / max(tree + server, 1e-9),
        "peak_rss_gib": outcome["peak_rss_gib"],
        "tickers_in_summary": decided,
    }


def measure(
    run_cli: Any, root: Path, api: str, server_pid: int | None, env: dict[str, str], quick: bool = False
) -> dict:
    """The `scale` section. Quick (CI): 1 and 2 tickers and a 2-ticker Dask run, so that the code cannot rot."""
    cores = os.cpu_count() or 1
    counts = [1, 2] if quick else [16, 64]
    dask_count = 2 if quick else 32
    folder = root / "universe"
    write_universe(folder, max(*counts, dask_count))
    print(f"   scale: thread runner on {counts} tickers", flush=True)
    curve = [
        universe_run(run_cli, root, folder, f"scale-{n}", n, api, server_pid, cores, extra_env=env) for n in counts
    ]
    print(f"   scale: {dask_count} tickers on one core, then on Dask's local cluster", flush=True)
    one_core = universe_run(
        run_cli, root, folder, "scale-one-core", dask_count, api, server_pid, 1, extra_env={**env, **ONE_CORE},
        prefix=["taskset", "-c", "0"],
    )  # fmt: skip
    dask = universe_run(run_cli, root, folder, "scale-dask", dask_count, api, server_pid, cores, "dask", env)
    small, large = curve[0], curve[-1]
    span = large["tickers"] - small["tickers"]
    core_slope = (large["core_seconds"] - small["core_seconds"]) / span
    wall_slope = (large["wall"] - small["wall"]) / span
    extrapolated = (large["wall"] + (500 - large["tickers"]) * wall_slope) / 60
    dask_efficiency = one_core["wall"] / (cores * dask["wall"])
    section = {
        "per_ticker_core_seconds": core_slope,
        "wall_seconds_per_ticker": wall_slope,
        f"peak_rss_gib_{large['tickers']}": large["peak_rss_gib"],
        "extrapolated_500_minutes": extrapolated,
        "extrapolated_5000_minutes": (large["wall"] + (5000 - large["tickers"]) * wall_slope) / 60,
        f"dask_efficiency_{dask_count}": dask_efficiency,
        f"api_cpu_share_{large['tickers']}": large["api_cpu_share"],
        "by_ticker_count": curve,
        "one_core": one_core,
        "dask": dask,
        "goals": GOALS,
        "method": __doc__.split("\n\n", 1)[1].strip() if __doc__ else "",
    }
    if quick:
        section["note"] = "quick: 1 and 2 tickers, two epochs; not the README's figures"
    return section
