"""`make bench`: what a daily run costs, how it scales, and how good the forecasts are, on the bundled data.

Writes bench/results.json and bench/results.md (the README shows the table). `--quick` (CI) runs one ticker,
one epoch and a small scaling set so the benchmark cannot rot; its numbers are not the README's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from bench.seed_baseline import seed_forecasts  # noqa: E402
from pipeline.evaluation import forecast_metrics  # noqa: E402
from pipeline.features import FEATURE_NAMES  # noqa: E402
from pipeline.settings import BUNDLED_SNAPSHOTS, TrainingConfig  # noqa: E402
from pipeline.sources import CsvSource  # noqa: E402
from pipeline.steps import train_challenger  # noqa: E402

STOCKPIPE = str(Path(sys.executable).with_name("stockpipe"))
TARGETS = {
    "overhead_share_max": 0.15,
    "rerun_seconds_max": 15.0,
    "warm_time_ratio_max": 0.35,
    "warm_u2_slack": 0.01,
    "scaling_8_min": 1.7,
    "peak_rss_gib_max": 2.0,
}


@contextmanager
def prefect_server(root: Path):
    """A real Prefect server, as in production: runs then pay for their own start-up, not the server's."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = (root / "prefect-server.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Prefect server did not start: see {root / 'prefect-server.log'}") from None
                time.sleep(0.5)
        yield api
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(args: list[str], home: Path, extra_env: dict[str, str] | None = None, api: str | None = None) -> dict:
    """`stockpipe ...` from process start, with wall time and the peak resident memory of its process tree."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "MLFLOW_", "PREFECT_"))}
    env.update({"STOCKPIPE_HOME": str(home), **(extra_env or {})})
    if api:
        env["PREFECT_API_URL"] = api
    started = time.perf_counter()
    child = subprocess.Popen(
        [STOCKPIPE, *args], env=env, cwd=home.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = [0]

    def sample():
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"stockpipe {' '.join(args)} exited {child.returncode}:\n{output[-4000:]}")
    return {"wall": wall, "peak_rss": peak[0], "output": output}


def journal(home: Path, ticker: str) -> dict:
    return json.loads((home / "reports" / ticker / "last_run.json").read_text())


def matmul_gflops() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    a @ a  # warm up
    best = min(_timed(lambda: a @ a) for _ in range(5))
    return 2 * 2048**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def lstm_gflop_per_epoch(windows: int, config: TrainingConfig) -> float:
    """Forward multiply-adds of two LSTM layers (4 gates, input and recurrent weights) x 2 FLOP, x 3 for backward."""
    features, units, steps = len(FEATURE_NAMES), config.units, config.window
    forward = steps * 2 * 4 * units * ((features + units) + (units + units))
    return 3 * forward * windows / 1e9


def quality(tickers: list[str], config: TrainingConfig) -> list[dict]:
    rows = []
    for ticker in tickers:
        prices = CsvSource(BUNDLED_SNAPSHOTS).fetch(ticker, None, pd.Timestamp.max.date())
        challenger = train_challenger(prices, config, ticker)
        test, metrics = challenger.dataset.test, challenger.metrics
        seed = seed_forecasts(challenger.dataset.history, challenger.dataset.val.target_date[0], test.as_of)
        seed_metrics = forecast_metrics(test.next_close, seed, test.last_close)
        rows.append(
            {
                "ticker": ticker,
                "test_days": f"{test.target_date[0].date()}..{test.target_date[-1].date()} ({len(test.y)})",
                "rmse": metrics["rmse"],
                "naive_rmse": metrics["naive_rmse"],
                "u2": metrics["u2"],
                "directional_accuracy": metrics["directional_accuracy"],
                "dm_pvalue": metrics["dm_pvalue"],
                "seed_rmse": seed_metrics["rmse"],
                "seed_u2": seed_metrics["u2"],
                "epochs_run": challenger.epochs_run,
                "train_seconds": challenger.train_seconds,
                "train_windows": len(challenger.dataset.train.y),
            }
        )
    return rows


def scaling_folder(root: Path, count: int) -> tuple[Path, list[str]]:
    """Copies of the bundled files under other symbols, so N tickers cost N real trainings."""
    folder = root / f"csv-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        source = ("MSFT", "GSPC")[i % 2]
        name = source + "ABCDEFGH"[i // 2] if i >= 2 else source
        shutil.copy(BUNDLED_SNAPSHOTS / f"{source}.csv", folder / f"{name}.csv")
        names.append(name)
    return folder, names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one ticker, one epoch (CI)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench")
    args = parser.parse_args()
    config = TrainingConfig(epochs=1) if args.quick else TrainingConfig()
    tickers = ["MSFT"] if args.quick else ["MSFT", "GSPC"]
    scaling_counts = [2] if args.quick else [1, 2, 4, 8]
    scaling_epochs = 1 if args.quick else 3
    epochs_env = {"STOCKPIPE_TRAINING__EPOCHS": str(config.epochs)}
    started = time.perf_counter()
    results: dict = {
        "mode": "quick" if args.quick else "full",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "matmul_gflops": matmul_gflops()},
    }

    print("1/5 forecast quality at default settings, and the seeds' approach on the same days", flush=True)
    results["quality"] = quality(tickers, config)

    with tempfile.TemporaryDirectory(prefix="stockpipe-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        print(
            "2/5 a daily run from process start: once as `make run` does (temporary Prefect server), "
            "then against a running Prefect server",
            flush=True,
        )
        standalone = run_cli(["run", "--tickers", *tickers], root / "standalone", epochs_env)
        results["standalone_run"] = {"wall": standalone["wall"], "peak_rss_gib": standalone["peak_rss"] / 2**30}
        api = stack.enter_context(prefect_server(root))
        home = root / "daily"
        daily = run_cli(["run", "--tickers", *tickers], home, epochs_env, api)
        steps = {}
        for ticker in tickers:
            for step, seconds in journal(home, ticker)["timings"].items():
                steps[step] = max(steps.get(step, 0.0), seconds)  # tickers run in parallel: the longest one counts
        ticker_work = sum(
            steps.get(s, 0.0) for s in ("fetch", "validate", "window_train_evaluate", "track_and_promote")
        )
        results["daily_run"] = {
            "wall": daily["wall"],
            "peak_rss_gib": daily["peak_rss"] / 2**30,
            "startup_imports_prefect_server": daily["wall"] - ticker_work,
            "fetch": steps.get("fetch"),
            "validation": steps.get("validate"),
            "windowing": steps.get("window"),
            "training": steps.get("train"),
            "evaluation": steps.get("evaluate"),
            "tracking_and_promotion": steps.get("track_and_promote"),
        }
        results["daily_run"]["overhead_share"] = 1 - results["daily_run"]["training"] / daily["wall"]

        print("3/5 a re-run with no new data", flush=True)
        results["rerun"] = {"wall": run_cli(["run", "--tickers", *tickers], home, epochs_env, api)["wall"]}

        print("4/5 full retrain vs warm start (MSFT)", flush=True)
        full = run_cli(["run", "--tickers", "MSFT", "--force"], home, epochs_env, api)
        full_journal = journal(home, "MSFT")
        warm = run_cli(["run", "--tickers", "MSFT", "--force", "--warm-start"], home, epochs_env, api)
        warm_journal = journal(home, "MSFT")
        results["warm_start"] = {
            "champion_kind": full_journal.get("champion_kind"),
            "full": {"wall": full["wall"], "train": full_journal["timings"]["train"], "u2": full_journal["u2"]},
            "warm": {"wall": warm["wall"], "train": warm_journal["timings"]["train"], "u2": warm_journal["u2"]},
        }

        print(f"5/5 scaling over tickers ({scaling_epochs} epochs each)", flush=True)
        scaling = []
        runs = [(n, 2) for n in scaling_counts] + [(scaling_counts[-1], 1)]
        for count, workers in runs:
            folder, names = scaling_folder(root, count)
            outcome = run_cli(
                ["run", "--source", "csv", "--csv-dir", str(folder), "--tickers", *names],
                root / f"scale-{count}-{workers}",
                {"STOCKPIPE_TRAINING__EPOCHS": str(scaling_epochs), "STOCKPIPE_MAX_WORKERS": str(workers)},
                api,
            )
            scaling.append(
                {
                    "tickers": count,
                    "workers": workers,
                    "wall": outcome["wall"],
                    "tickers_per_minute": 60 * count / outcome["wall"],
                }
            )
        results["scaling"] = scaling

    training = results["quality"][-1]  # the last ticker's training, after TensorFlow has warmed up
    seconds_per_epoch = training["train_seconds"] / training["epochs_run"]
    gflop = lstm_gflop_per_epoch(training["train_windows"], config)
    results["training_speed"] = {
        "seconds_per_epoch": seconds_per_epoch,
        "gflop_per_epoch": gflop,
        "achieved_gflops": gflop / seconds_per_epoch,
        "matmul_gflops": results["machine"]["matmul_gflops"],
    }
    results["targets"] = evaluate_targets(results)
    results["bench_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / f"results{suffix}.md").write_text(markdown(results))
    print(markdown(results))


def evaluate_targets(r: dict) -> dict:
    one = next(s for s in r["scaling"] if s["workers"] == 1)
    most = max((s for s in r["scaling"] if s["workers"] > 1), key=lambda s: s["tickers"])
    warm, full = r["warm_start"]["warm"], r["warm_start"]["full"]
    checks = {
        "overhead share of a daily run <= 15%": (
            r["daily_run"]["overhead_share"],
            r["daily_run"]["overhead_share"] <= TARGETS["overhead_share_max"],
        ),
        "no-new-data re-run <= 15 s": (r["rerun"]["wall"], r["rerun"]["wall"] <= TARGETS["rerun_seconds_max"]),
        "warm start <= 35% of a full retrain (training time)": (
            warm["train"] / full["train"],
            warm["train"] / full["train"] <= TARGETS["warm_time_ratio_max"],
        ),
        "warm start U2 <= full U2 + 0.01": (
            warm["u2"] - full["u2"],
            warm["u2"] <= full["u2"] + TARGETS["warm_u2_slack"],
        ),
        f"{most['tickers']} tickers >= 1.7x the throughput of one worker": (
            most["tickers_per_minute"] / one["tickers_per_minute"],
            most["tickers_per_minute"] / one["tickers_per_minute"] >= TARGETS["scaling_8_min"],
        ),
        "peak memory <= 2 GiB": (
            r["daily_run"]["peak_rss_gib"],
            r["daily_run"]["peak_rss_gib"] <= TARGETS["peak_rss_gib_max"],
        ),
    }
    return {name: {"value": value, "met": bool(met)} for name, (value, met) in checks.items()}


def markdown(r: dict) -> str:
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [
        f"Benchmark ({r['mode']} mode, {r['machine']['cpus']} cores, Python {r['machine']['python']}, "
        f"{r['bench_seconds'] / 60:.1f} min)",
        "",
        "| ticker | test days | RMSE | naive RMSE | U2 | dir. acc. | DM p | seeds' RMSE | seeds' U2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q in r["quality"]:
        lines.append(
            f"| {q['ticker']} | {q['test_days']} | {f(q['rmse'], 4)} | {f(q['naive_rmse'], 4)} | {f(q['u2'])} | "
            f"{f(q['directional_accuracy'])} | {f(q['dm_pvalue'])} | {f(q['seed_rmse'], 4)} | {f(q['seed_u2'])} |"
        )
    d = r["daily_run"]
    lines += [
        "",
        "| daily run (all tickers, from process start, Prefect server running) | seconds |",
        "|---|---|",
        *[
            f"| {k.replace('_', ' ')} | {f(d[k], 2)} |"
            for k in (
                "wall",
                "startup_imports_prefect_server",
                "fetch",
                "validation",
                "windowing",
                "training",
                "evaluation",
                "tracking_and_promotion",
            )
        ],
        f"| overhead share (all but training) | {d['overhead_share']:.0%} |",
        f"| re-run with no new data | {f(r['rerun']['wall'], 2)} |",
        f"| the same first run as `make run` does it | {f(r['standalone_run']['wall'], 2)} |",
        f"| peak resident memory (process tree) | {d['peak_rss_gib']:.2f} GiB |",
    ]
    w = r["warm_start"]
    lines += [
        "",
        "| MSFT retrain | wall s | training s | U2 |",
        "|---|---|---|---|",
        f"| full | {f(w['full']['wall'], 1)} | {f(w['full']['train'], 1)} | {f(w['full']['u2'], 4)} |",
        f"| warm start | {f(w['warm']['wall'], 1)} | {f(w['warm']['train'], 1)} | {f(w['warm']['u2'], 4)} |",
    ]
    one = next(s for s in r["scaling"] if s["workers"] == 1)
    lines += ["", "| tickers | workers | wall s | tickers/min | vs one worker |", "|---|---|---|---|---|"]
    for s in r["scaling"]:
        lines.append(
            f"| {s['tickers']} | {s['workers']} | {f(s['wall'], 1)} | {f(s['tickers_per_minute'], 2)} | "
            f"{s['tickers_per_minute'] / one['tickers_per_minute']:.2f}x |"
        )
    t = r["training_speed"]
    lines += [
        "",
        f"Training: {t['seconds_per_epoch']:.2f} s/epoch, {t['gflop_per_epoch']:.1f} GFLOP/epoch "
        f"(2 LSTM layers, 4 gates, forward x3 for backward), {t['achieved_gflops']:.1f} GFLOP/s achieved vs "
        f"{t['matmul_gflops']:.0f} GFLOP/s float32 matmul on this machine.",
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {f(v['value'], 3)} | {'yes' if v['met'] else 'no'} |" for name, v in r["targets"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
