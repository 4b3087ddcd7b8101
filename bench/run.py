"""`make bench`: what a daily run costs, how it scales, how good the forecasts and their intervals are, on the bundled
data. Writes bench/results.json (every figure with the method beside it), bench/results.md (the README's tables) and
bench/cost.png (cost against history length and ticker count). `--quick` (CI) runs a reduced set so the benchmark
cannot rot; its numbers are not the README's.

Every daily run is a `stockpipe` process measured from its start, with the peak resident memory of its whole process
tree. Runs "against a server" use a real `prefect server start`, as in production.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
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

from bench import scale  # noqa: E402
from bench.seed_baseline import seed_forecasts  # noqa: E402
from bench.state_size import GOAL_BYTES  # noqa: E402
from bench.state_size import measure as measure_state_size  # noqa: E402
from flows.local_server import free_port  # noqa: E402
from pipeline.common.settings import BUNDLED_SNAPSHOTS, TrainingConfig  # noqa: E402
from pipeline.data.sources import CsvSource  # noqa: E402
from pipeline.models.features import FEATURE_NAMES  # noqa: E402

STOCKPIPE = str(Path(sys.executable).with_name("stockpipe"))
PREFECT = str(Path(sys.executable).with_name("prefect"))
TARGETS = {
    "overhead_share_max": 0.10,
    "make_run_seconds_max": 45.0,
    "floor_multiple_max": 2.0,
    "parallel_efficiency_min": 0.85,
    "warm_time_ratio_max": 0.25,
    "warm_u2_slack": 0.01,
    "peak_rss_gib_max": 1.5,
    "state_bytes_per_ticker_day_max": GOAL_BYTES,
}
# The steps of a ticker's day, as the outcome's timings name them.
# The interval table's rows: the challenger, v1 (what a fresh clone serves), and the textbook references.
INTERVAL_LABELS = {
    "served": "served (v1 naive, method chosen on validation)",
    "model": "challenger (conformal)",
    "naive": "empirical quantiles (v1 before issue 22)",
    "ewma": "EWMA Gaussian",
    "garch_t": "GARCH(1,1)-t",
}
STEPS = ("fetch", "validate", "train", "evaluate", "track")


# -- processes ------------------------------------------------------------------------------------------------


@contextmanager
def prefect_server(root: Path, pids: list[int] | None = None):
    """A real Prefect server, as in production: runs then pay for their own start-up, not the server's. Its process
    id goes into `pids`, to measure its CPU."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-server"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = (root / "prefect-server.log").open("w")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{port}/api"
    if pids is not None:
        pids.append(server.pid)
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


def run_cli(
    args: list[str],
    home: Path,
    extra_env: dict[str, str] | None = None,
    api: str | None = None,
    prefix: list[str] | None = None,
) -> dict:
    """`stockpipe ...` from process start: wall time, peak resident memory of its process tree, output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "MLFLOW_", "PREFECT_"))}
    env.update({"STOCKPIPE_HOME": str(home), "STOCKPIPE_MAX_STALENESS_SESSIONS": "100000", **(extra_env or {})})
    if api:
        env["PREFECT_API_URL"] = api
    home.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    child = subprocess.Popen(
        [*(prefix or []), STOCKPIPE, *args],
        env=env,
        cwd=home.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = [0]

    def sample() -> None:
        root = psutil.Process(child.pid)
        while child.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate()
    wall = time.perf_counter() - started
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"stockpipe {' '.join(args)} exited {child.returncode}:\n{output[-4000:]}")
    return {"wall": wall, "peak_rss_gib": peak[0] / 2**30, "output": output}


def cache(home: Path, ticker: str) -> dict:
    return json.loads((home / "reports" / ticker / "last_run.json").read_text())


def longest_steps(home: Path, tickers: list[str]) -> dict[str, float]:
    """Per step, the longest of the tickers' times (they run in parallel: the longest one is on the critical path)."""
    steps: dict[str, float] = {}
    for ticker in tickers:
        for step, seconds in cache(home, ticker)["timings"].items():
            steps[step] = max(steps.get(step, 0.0), seconds)
    return steps


# -- the machine and the model's floor -------------------------------------------------------------------------


def matmul_gflops(threads: int | None = None) -> float:
    """float32 2048x2048 matmul rate: the machine's achievable dense rate for this process."""
    script = (
        "import numpy as np, time; a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)"
        "; a @ a; t = []\nfor _ in range(7):\n s = time.perf_counter(); a @ a; t.append(time.perf_counter() - s)"
        "\nprint(2 * 2048**3 / min(t) / 1e9)"
    )
    env = {**os.environ}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return float(
        subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    )


def lstm_gflop_per_epoch(windows: int, config: TrainingConfig) -> float:
    """Forward multiply-adds of two LSTM layers (4 gates, input and recurrent weights) x 2 FLOP, x 3 for backward."""
    features, units, steps = len(FEATURE_NAMES), config.units, config.window
    forward = steps * 2 * 4 * units * ((features + units) + (units + units))
    return 3 * forward * windows / 1e9


def import_seconds() -> dict[str, float]:
    """Seconds to import each heavy library in a fresh process (median of 3): the floor of any run's start-up."""
    result = {}
    for module in ("tensorflow", "mlflow", "great_expectations", "prefect", "pandas"):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], check=True, capture_output=True)
            times.append(time.perf_counter() - started)
        result[module] = float(np.median(times))
    return result


# -- quality, intervals and training speed (in this process, the library only) ----------------------------------


def train_and_score(ticker: str, config: TrainingConfig, prices: pd.DataFrame | None = None) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pipeline.evaluation.evidence import CHALLENGER, CHAMPION, NAIVE
    from pipeline.evaluation.scoring import score
    from pipeline.models.forecasters import NaiveForecaster
    from pipeline.models.references import EWMA, GARCH_REFIT_EVERY, GARCH_T, GARCH_WINDOW, REFERENCES
    from pipeline.models.training import train_challenger

    prices = prices if prices is not None else CsvSource(BUNDLED_SNAPSHOTS).read(ticker)[0]
    challenger = train_challenger(prices, config, ticker)
    scores = score(challenger.dataset, challenger.forecaster, NaiveForecaster(), config.eval_blocks)
    test = challenger.dataset.test
    return {
        "ticker": ticker,
        "challenger": challenger,
        "scores": scores,
        "test": test,
        # The naive forecaster is what a fresh clone serves (v1); the references are scored on the same sessions.
        "intervals": {
            "served": scores.interval_metrics[CHAMPION],
            "model": scores.interval_metrics[CHALLENGER],
            "naive": scores.interval_metrics[NAIVE],
            **{name: scores.interval_metrics[name] for name in REFERENCES},
        },
        "interval_methods": {
            "served": scores.served_choice.description if scores.served_choice else NaiveForecaster.interval_method,
            "model": challenger.forecaster.interval_method,
            "naive": NaiveForecaster.interval_method,
            EWMA: "naive point forecast, RiskMetrics EWMA (lambda 0.94) Gaussian",
            GARCH_T: f"naive point forecast, GARCH(1,1)-t (arch), refit every {GARCH_REFIT_EVERY} sessions on "
            f"{GARCH_WINDOW} returns",
        },
        # What the served method was chosen on: every candidate on the 250 sessions before the test span.
        "served_validation": scores.served_choice.validation if scores.served_choice else None,
    }


def quality_row(result: dict, config: TrainingConfig) -> dict:
    from pipeline.evaluation.metrics import point_metrics

    challenger, scores, test = result["challenger"], result["scores"], result["test"]
    evidence = scores.evidence
    seed = seed_forecasts(challenger.dataset.history, challenger.dataset.val.target_date[0], test.as_of)
    seed_rmse = point_metrics(test.next_close, seed, test.last_close)["rmse"]
    return {
        "ticker": result["ticker"],
        "test_sessions": f"{test.target_date[0].date()}..{test.target_date[-1].date()} ({len(test.y)})",
        "rmse": evidence.challenger_rmse,
        "naive_rmse": evidence.naive_rmse,
        "u2": evidence.u2,
        "directional_accuracy": scores.metrics["challenger"]["directional_accuracy"],
        "dm_pvalue_vs_naive": evidence.dm_pvalue,
        "blocks_won_vs_naive": evidence.blocks_won,
        "seed_rmse": seed_rmse,
        "seed_u2": seed_rmse / evidence.naive_rmse,
        "epochs_run": challenger.epochs_run,
        "train_seconds": challenger.train_seconds,
        "epoch_steady_seconds": challenger.timings["epoch_steady"],
        "train_windows": len(challenger.dataset.train.y),
        "intervals": result["intervals"],
        "interval_methods": result["interval_methods"],
        "served_validation": result["served_validation"],
    }


def training_speed(result: dict, config: TrainingConfig, matmul: float) -> dict:
    challenger = result["challenger"]
    gflop = lstm_gflop_per_epoch(len(challenger.dataset.train.y), config)
    steady = challenger.timings["epoch_steady"]
    floor = gflop / matmul
    return {
        "batch_size": config.batch_size,
        "seconds_per_epoch": steady,
        "gflop_per_epoch": gflop,
        "achieved_gflops": gflop / steady,
        "floor_seconds_per_epoch": floor,
        "floor_multiple": steady / floor,
        "epochs_run": challenger.epochs_run,
        "train_seconds": challenger.train_seconds,
        "u2": result["scores"].evidence.u2,
    }


def warm_start_measurement(config: TrainingConfig, gap: int) -> dict:
    """A champion trained at one as-of date; `gap` sessions later, a warm start and a full retrain on the new data,
    in the same process: time and U2 of each (the warm start really starts from that earlier champion)."""
    from pipeline.evaluation.scoring import score
    from pipeline.models.forecasters import NaiveForecaster
    from pipeline.models.training import WarmStart, train_challenger

    prices = CsvSource(BUNDLED_SNAPSHOTS).read("MSFT")[0]
    earlier = prices.iloc[:-gap].reset_index(drop=True)
    champion = train_challenger(earlier, config, "MSFT")
    out = {
        "champion_data_end": earlier["Date"].iloc[-1].date().isoformat(),
        "data_end": prices["Date"].iloc[-1].date().isoformat(),
        "gap_sessions": gap,
    }
    for name, start in (
        ("full", None),
        ("warm", WarmStart(champion.forecaster.keras_model.get_weights(), "earlier champion")),
    ):
        challenger = train_challenger(prices, config, "MSFT", start)
        evidence = score(challenger.dataset, challenger.forecaster, NaiveForecaster(), config.eval_blocks).evidence
        out[name] = {
            "train_seconds": challenger.train_seconds,
            "epochs_run": challenger.epochs_run,
            "best_epoch": challenger.best_epoch,
            "u2": evidence.u2,
        }
    out["time_ratio"] = out["warm"]["train_seconds"] / out["full"]["train_seconds"]
    out["u2_difference"] = out["warm"]["u2"] - out["full"]["u2"]
    return out


# -- scaling and cost curves (whole processes) ------------------------------------------------------------------


def ticker_folder(root: Path, count: int, years: float | None = None) -> tuple[Path, list[str]]:
    """Copies of the bundled files under other symbols (N tickers cost N real trainings), optionally cut to the
    last `years` of sessions."""
    folder = root / f"csv-{count}-{years or 'all'}"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        source = ("MSFT", "GSPC")[i % 2]
        name = source if i < 2 else f"{source}{'ABCDEFGHIJKLMNOP'[i // 2]}"
        frame = pd.read_csv(BUNDLED_SNAPSHOTS / f"{source}.csv")
        if years:
            end = pd.Timestamp(frame["Date"].iloc[-1])
            frame = frame[pd.to_datetime(frame["Date"]) > end - pd.DateOffset(days=int(years * 365.25))]
        frame.to_csv(folder / f"{name}.csv", index=False)
        names.append(name)
    return folder, names


def csv_run(
    root: Path,
    label: str,
    count: int,
    api: str,
    workers: int,
    runner: str = "thread",
    extra_env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
    years: float | None = None,
) -> dict:
    folder, names = ticker_folder(root, count, years)
    home = root / label / "state"
    args = [
        "run",
        "--source",
        "csv",
        "--csv-dir",
        str(folder),
        "--as-of",
        "2017-11-10",
        "--tickers",
        *names,
        "--task-runner",
        runner,
    ]
    outcome = run_cli(args, home, {"STOCKPIPE_MAX_WORKERS": str(workers), **(extra_env or {})}, api, prefix)
    return {
        "tickers": count,
        "workers": workers,
        "runner": runner,
        "wall": outcome["wall"],
        "peak_rss_gib": outcome["peak_rss_gib"],
        "steps": longest_steps(home, names),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a reduced set (CI)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench")
    parser.add_argument(
        "--only-scale",
        action="store_true",
        help="measure `make run` and the scale section only, into the existing results (the rest kept as measured)",
    )
    args = parser.parse_args()
    quick = args.quick
    if args.only_scale:
        refresh_scale(args.out, quick)
        return
    config = TrainingConfig(epochs=2) if quick else TrainingConfig()
    before = config.model_copy(update={"batch_size": 64})
    tickers = ["MSFT"] if quick else ["MSFT", "GSPC"]
    cores = os.cpu_count() or 1
    started = time.perf_counter()
    results: dict = {
        "mode": "quick" if quick else "full",
        "date": dt.date.today().isoformat(),
        "machine": {
            "cpus": cores,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "matmul_gflops_all_cores": matmul_gflops(),
            "matmul_gflops_one_thread": matmul_gflops(1),
        },
        "settings": config.model_dump(),
    }
    matmul = results["machine"]["matmul_gflops_all_cores"]

    print(
        "1/9 forecast quality and intervals at default settings (and the seeds' approach on the same days)", flush=True
    )
    trained = [train_and_score(t, config) for t in tickers]
    results["quality"] = [quality_row(r, config) for r in trained]
    results["quality_method"] = (
        "Default settings, bundled data, the last 250 sessions as the test span; U2 = RMSE / "
        "naive RMSE; intervals conformal on validation, tracked over the test span; the naive "
        "interval baseline is the last close times the quantiles of the last 250 returns."
    )

    print("2/9 training speed before (batch 64) and after (the default), against the machine's floor", flush=True)
    before_result = train_and_score("MSFT", before)
    results["training"] = {
        "before": training_speed(before_result, before, matmul),
        "after": training_speed(trained[0], config, matmul),
        "method": "Steady-state seconds per epoch (median from the 2nd epoch; the 1st traces the graph), MSFT at "
        "default settings, one process; the floor is the model's GFLOP per epoch (2 LSTM layers, 4 gates, "
        "input and recurrent weights, forward x 3 for backward) at the measured float32 matmul rate.",
    }

    print("3/9 warm start against a full retrain, 20 sessions after the champion was trained", flush=True)
    results["warm_start"] = warm_start_measurement(config, gap=20)
    results["warm_start"]["method"] = (
        "MSFT: a champion trained on data to 20 sessions before the end; then, on the "
        "data to the end, a full retrain and a warm start from that champion's weights "
        "(warm_start_epochs), both scored on the same test span."
    )

    with tempfile.TemporaryDirectory(prefix="stockpipe-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        env = {"STOCKPIPE_TRAINING__EPOCHS": str(config.epochs)}
        print(
            "4/9 `make run` (no server: the run starts its own Prefect API), then the daily run against a server",
            flush=True,
        )
        standalone = run_cli(["run", "--tickers", *tickers], root / "standalone" / ".stockpipe", env)
        results["make_run"] = {
            "wall": standalone["wall"],
            "peak_rss_gib": standalone["peak_rss_gib"],
            "method": "`stockpipe run` in a fresh directory with nothing set, default settings, "
            "bundled MSFT and GSPC: what `make run` runs once installed.",
        }
        server_pids: list[int] = []
        api = stack.enter_context(prefect_server(root, server_pids))
        home = root / "daily" / "state"
        daily = run_cli(["run", "--tickers", *tickers], home, env, api)
        steps = longest_steps(home, tickers)
        noop = run_cli(["run", "--tickers", *tickers, "--as-of", "2018-12-29"], home, env, api)  # a Saturday
        training = steps.get("train", 0.0)
        results["daily_run"] = {
            "wall": daily["wall"],
            "peak_rss_gib": daily["peak_rss_gib"],
            "steps": steps,
            "process_start_imports_and_flow": noop["wall"],
            "overhead_share": 1 - training / daily["wall"],
            "import_seconds": import_seconds(),
            "method": "From process start against a running Prefect server; steps are the longest ticker's (they run "
            "in parallel); the start-up is the wall of a run with nothing to do (a closed market); the "
            "overhead share is everything but training over the wall.",
        }

        print("5/9 a re-run with no new data", flush=True)
        results["rerun"] = {"wall": run_cli(["run", "--tickers", *tickers], home, env, api)["wall"]}

        counts = [1, 2] if quick else [1, 2, 4, 8]
        print(f"6/9 parallel efficiency and cost against ticker count {counts}", flush=True)
        one_core = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
        pinned = ["taskset", "-c", "0"]
        alone = csv_run(root, "alone", 1, api, 1, extra_env=one_core, prefix=pinned)
        # The fixed start-up under the same pinning as the baseline: one core imports more slowly than two, and
        # subtracting the two-core figure from the baseline would flatter the parallel runs.
        startup_one_core = run_cli(
            ["run", "--tickers", *tickers, "--as-of", "2018-12-29"], home, {**env, **one_core}, api, pinned
        )["wall"]
        by_count = [csv_run(root, f"count-{n}", n, api, cores) for n in counts]
        dask = csv_run(root, "dask", counts[-1], api, cores, runner="dask")

        def efficiency(run: dict) -> dict:
            # Throughput of N tickers on all cores over cores x the throughput of one ticker alone on one core,
            # both from process start ("whole process"), and both after removing each run's fixed start-up, measured
            # under the same conditions (a no-op run's wall). The whole-process ratio flatters N tickers: they pay
            # the start-up once, the baseline pays it for its one ticker.
            whole = (run["tickers"] / run["wall"]) / (cores * 1 / alone["wall"])
            startup = results["daily_run"]["process_start_imports_and_flow"]
            steady = (run["tickers"] / (run["wall"] - startup)) / (cores / (alone["wall"] - startup_one_core))
            return {"whole_process": whole, "excluding_start_up": steady}

        results["scaling"] = {
            "one_ticker_one_core": {**alone, "start_up": startup_one_core},
            "by_ticker_count": by_count,
            "thread": {**by_count[-1], "efficiency": efficiency(by_count[-1])},
            "dask": {**dask, "efficiency": efficiency(dask)},
            "method": "Throughput of N tickers on all cores divided by (cores x the throughput of one ticker alone, "
            "pinned to one core with one TensorFlow thread); copies of the bundled files under other "
            "symbols, default settings, against a running Prefect server.",
        }

        years = [1, 5] if quick else [1, 5, 10, 30]
        print(f"7/9 cost against history length {years} years", flush=True)
        curve = []
        for span in years:
            # A year of sessions leaves no room for the default 250-session test span: that point tests on 60.
            extra = {"STOCKPIPE_TRAINING__HISTORY_YEARS": str(span), **env}
            if span < 2:
                extra["STOCKPIPE_TRAINING__EVAL_SESSIONS"] = "60"
            run = csv_run(root, f"years-{span}", 1, api, 1, extra_env=extra, years=span + 1)
            curve.append({"years": span, **run})
        results["cost_by_history_years"] = curve

        print("8/9 scale: a synthetic universe of many tickers, thread runner and Dask", flush=True)
        results["scale"] = scale.measure(run_cli, root, api, server_pids[0], env, quick)

    print("9/9 what each further ticker-day adds to STOCKPIPE_HOME, retention off and on", flush=True)
    # Quick: three sessions, retention keeping one lost run, so that pruning happens at all; not the README's figures.
    quick_form = {"count": 3, "last": 2, "epochs": config.epochs, "quick": True}
    results["state_size"] = measure_state_size(**(quick_form if quick else {"count": 20, "last": 10}))

    results["targets"] = evaluate_targets(results)
    results["bench_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (args.out / f"results{suffix}.md").write_text(markdown(results))
    plot_costs(results, args.out / f"cost{suffix}.png")
    print(markdown(results))


def refresh_scale(out: Path, quick: bool) -> None:
    """`make run` and the scale section measured anew in one run; every other figure stays as last measured."""
    suffix = "-quick" if quick else ""
    path = out / f"results{suffix}.json"
    results = json.loads(path.read_text())
    started = time.perf_counter()
    env = {"STOCKPIPE_TRAINING__EPOCHS": "2"} if quick else {}
    with tempfile.TemporaryDirectory(prefix="stockpipe-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        print("`make run` (no server)", flush=True)
        standalone = run_cli(["run", "--tickers", "MSFT", "GSPC"], root / "standalone" / ".stockpipe", env)
        results["make_run"].update(wall=standalone["wall"], peak_rss_gib=standalone["peak_rss_gib"])
        server_pids: list[int] = []
        api = stack.enter_context(prefect_server(root, server_pids))
        results["scale"] = scale.measure(run_cli, root, api, server_pids[0], env, quick)
    results["scale"]["measured"] = dt.date.today().isoformat()
    results["scale"]["seconds"] = time.perf_counter() - started
    results["targets"] = evaluate_targets(results)
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / f"results{suffix}.md").write_text(markdown(results))
    print(markdown(results))


def evaluate_targets(r: dict) -> dict:
    warm = r["warm_start"]
    checks = {
        "overhead share of a daily run against a server <= 10%": (
            r["daily_run"]["overhead_share"],
            r["daily_run"]["overhead_share"] <= TARGETS["overhead_share_max"],
        ),
        "`make run` (two tickers, install excluded) <= 45 s": (
            r["make_run"]["wall"],
            r["make_run"]["wall"] <= TARGETS["make_run_seconds_max"],
        ),
        "training within 2x of the floor (s/epoch over floor)": (
            r["training"]["after"]["floor_multiple"],
            r["training"]["after"]["floor_multiple"] <= TARGETS["floor_multiple_max"],
        ),
        "parallel efficiency, thread runner >= 0.85 (start-up excluded)": (
            r["scaling"]["thread"]["efficiency"]["excluding_start_up"],
            r["scaling"]["thread"]["efficiency"]["excluding_start_up"] >= TARGETS["parallel_efficiency_min"],
        ),
        "parallel efficiency, Dask runner >= 0.85 (start-up excluded)": (
            r["scaling"]["dask"]["efficiency"]["excluding_start_up"],
            r["scaling"]["dask"]["efficiency"]["excluding_start_up"] >= TARGETS["parallel_efficiency_min"],
        ),
        "warm start <= 25% of a full retrain's training time": (
            warm["time_ratio"],
            warm["time_ratio"] <= TARGETS["warm_time_ratio_max"],
        ),
        "warm start U2 <= full U2 + 0.01": (warm["u2_difference"], warm["u2_difference"] <= TARGETS["warm_u2_slack"]),
        "peak memory of the daily run (two tickers) <= 1.5 GiB": (
            r["daily_run"]["peak_rss_gib"],
            r["daily_run"]["peak_rss_gib"] <= TARGETS["peak_rss_gib_max"],
        ),
        "bytes each further ticker-day adds to STOCKPIPE_HOME (retention on) <= 150 KB": (
            r["state_size"]["after"]["bytes_per_ticker_day"]["total"],
            r["state_size"]["after"]["bytes_per_ticker_day"]["total"] <= TARGETS["state_bytes_per_ticker_day_max"],
        ),
    }
    if "scale" in r:
        sc, goals = r["scale"], scale.GOALS
        largest = sc["by_ticker_count"][-1]["tickers"]
        dask_count = sc["dask"]["tickers"]
        checks.update(
            {
                f"core-s per further ticker-day (to {largest} tickers) <= {goals['per_ticker_core_seconds']:g}": (
                    sc["per_ticker_core_seconds"],
                    sc["per_ticker_core_seconds"] <= goals["per_ticker_core_seconds"],
                ),
                f"peak memory of a {largest}-ticker run <= {goals['peak_rss_gib_64']:g} GiB": (
                    sc[f"peak_rss_gib_{largest}"],
                    sc[f"peak_rss_gib_{largest}"] <= goals["peak_rss_gib_64"],
                ),
                f"500 tickers on this machine <= {goals['extrapolated_500_minutes']:g} min": (
                    sc["extrapolated_500_minutes"],
                    sc["extrapolated_500_minutes"] <= goals["extrapolated_500_minutes"],
                ),
                f"Dask efficiency at {dask_count} tickers >= {goals['dask_efficiency_32']:g}": (
                    sc[f"dask_efficiency_{dask_count}"],
                    sc[f"dask_efficiency_{dask_count}"] >= goals["dask_efficiency_32"],
                ),
                "`make run` <= 30 s (issue 26)": (r["make_run"]["wall"], r["make_run"]["wall"] <= 30.0),
            }
        )
    return {name: {"value": value, "met": bool(met)} for name, (value, met) in checks.items()}


def plot_costs(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), dpi=100)
    by_years, by_count = r["cost_by_history_years"], r["scaling"]["by_ticker_count"]
    for index, (points, key, label) in enumerate(
        ((by_years, "years", "years of history (one ticker)"), (by_count, "tickers", "tickers (all cores)"))
    ):
        axes = figure.add_subplot(1, 2, index + 1)
        xs = [p[key] for p in points]
        axes.plot(xs, [p["wall"] for p in points], marker="o", color="tab:blue", label="wall time (s)")
        axes.set_xlabel(label)
        axes.set_ylabel("daily-run wall time (s)", color="tab:blue")
        memory = axes.twinx()
        memory.plot(xs, [p["peak_rss_gib"] for p in points], marker="s", color="tab:orange", label="peak memory")
        memory.set_ylabel("peak memory (GiB)", color="tab:orange")
        axes.set_xticks(xs)
        axes.grid(alpha=0.3)
    figure.suptitle(f"stockpipe daily-run cost, {r['machine']['cpus']} cores, {r['date']}")
    figure.tight_layout()
    figure.savefig(path)


def scale_table(sc: dict) -> list[str]:
    rows = [*sc["by_ticker_count"], sc["one_core"], sc["dask"]]
    return [
        "",
        "| universe run (first night, from process start) | tickers | workers | wall s | core-s | core-s per ticker | "
        "Prefect API share of CPU | peak memory GiB |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {row['runner']}{' (one core)' if row is sc['one_core'] else ''} | {row['tickers']} | {row['workers']} "
            f"| {row['wall']:.0f} | {row['core_seconds']:.0f} | {row['core_seconds_per_ticker']:.1f} | "
            f"{row['api_cpu_share']:.1%} | {row['peak_rss_gib']:.2f} |"
            for row in rows
        ],
        "",
        f"Per further ticker-day: {sc['per_ticker_core_seconds']:.1f} core-seconds, "
        f"{sc['wall_seconds_per_ticker']:.1f} s of wall on this machine; 500 tickers: "
        f"{sc['extrapolated_500_minutes']:.0f} min, 5,000: {sc['extrapolated_5000_minutes'] / 60:.1f} h.",
    ]


def markdown(r: dict) -> str:
    def f(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"Benchmark ({r['mode']} mode, {r['date']}, {r['machine']['cpus']} cores, Python {r['machine']['python']}, "
        f"{r['bench_seconds'] / 60:.1f} min)",
        "",
        "| ticker | test sessions | RMSE | naive RMSE | U2 | dir. acc. | DM p vs naive | seeds' U2 |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {q['ticker']} | {q['test_sessions']} | {f(q['rmse'], 4)} | {f(q['naive_rmse'], 4)} | {f(q['u2'])} | "
            f"{f(q['directional_accuracy'])} | {f(q['dm_pvalue_vs_naive'])} | {f(q['seed_u2'])} |"
            for q in r["quality"]
        ],
        "",
        "| ticker | intervals | coverage 80% | coverage 95% | width 80% | Winkler 80% | Winkler 95% | pinball | "
        "Kupiec p 80% | Christoffersen p 80% |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in r["quality"]:
        for name in q["intervals"]:
            i = q["intervals"][name]
            lines.append(
                f"| {q['ticker']} | {INTERVAL_LABELS.get(name, name)} | {f(i['coverage_80'])} | "
                f"{f(i['coverage_95'])} | "
                f"{f(i['relative_width_80'] * 100, 2)}% | {f(i['winkler_80'], 3)} | {f(i['winkler_95'], 3)} | "
                f"{f(i.get('pinball'), 3)} | {f(i.get('kupiec_p_80'))} | {f(i.get('christoffersen_p_80'))} |"
            )
    d = r["daily_run"]
    lines += [
        "",
        "| daily run (two tickers, from process start, Prefect server running) | seconds |",
        "|---|---|",
        f"| wall | {f(d['wall'], 1)} |",
        f"| start-up (imports, settings, connecting; a run with nothing to do) | "
        f"{f(d['process_start_imports_and_flow'], 1)} |",
        *[f"| {step} (longest ticker) | {f(d['steps'].get(step), 1)} |" for step in STEPS],
        f"| overhead share (all but training) | {d['overhead_share']:.0%} |",
        f"| re-run with no new data | {f(r['rerun']['wall'], 1)} |",
        f"| `make run` (no server; install excluded) | {f(r['make_run']['wall'], 1)} |",
        f"| peak resident memory (process tree) | {d['peak_rss_gib']:.2f} GiB |",
        "",
        "| import (fresh process) | seconds |",
        "|---|---|",
        *[f"| {m} | {f(s, 2)} |" for m, s in d["import_seconds"].items()],
    ]
    t = r["training"]
    lines += [
        "",
        "| training (MSFT) | batch | s/epoch (steady) | GFLOP/s | x floor | epochs | training s | U2 |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {k} | {v['batch_size']} | {f(v['seconds_per_epoch'], 2)} | {f(v['achieved_gflops'], 1)} | "
            f"{f(v['floor_multiple'], 1)} | {v['epochs_run']} | {f(v['train_seconds'], 1)} | {f(v['u2'], 4)} |"
            for k, v in (("before", t["before"]), ("after", t["after"]))
        ],
    ]
    w = r["warm_start"]
    lines += [
        "",
        f"| MSFT, champion from {w['champion_data_end']}, data to {w['data_end']} | training s | epochs | U2 |",
        "|---|---|---|---|",
        f"| full retrain | {f(w['full']['train_seconds'], 1)} | {w['full']['epochs_run']} | {f(w['full']['u2'], 4)} |",
        f"| warm start | {f(w['warm']['train_seconds'], 1)} | {w['warm']['epochs_run']} | {f(w['warm']['u2'], 4)} |",
    ]
    s = r["scaling"]
    lines += [
        "",
        "| scaling | tickers | wall s | tickers/min | efficiency | excluding start-up |",
        "|---|---|---|---|---|---|",
        f"| one ticker, one core, one thread | 1 | {f(s['one_ticker_one_core']['wall'], 1)} | "
        f"{f(60 / s['one_ticker_one_core']['wall'], 2)} | (baseline) | |",
        *[
            f"| {name} runner, all cores | {v['tickers']} | {f(v['wall'], 1)} | "
            f"{f(60 * v['tickers'] / v['wall'], 2)} | {f(v['efficiency']['whole_process'], 2)} | "
            f"{f(v['efficiency']['excluding_start_up'], 2)} |"
            for name, v in (("thread", s["thread"]), ("Dask", s["dask"]))
        ],
    ]
    lines += [
        "",
        "| cost | wall s | peak GiB |",
        "|---|---|---|",
        *[
            f"| {p['tickers']} ticker(s), all cores | {f(p['wall'], 1)} | {f(p['peak_rss_gib'], 2)} |"
            for p in s["by_ticker_count"]
        ],
        *[
            f"| {p['years']} years of history, one ticker | {f(p['wall'], 1)} | {f(p['peak_rss_gib'], 2)} |"
            for p in r["cost_by_history_years"]
        ],
    ]
    z = r["state_size"]
    before, after = z["before"]["bytes_per_ticker_day"], z["after"]["bytes_per_ticker_day"]
    lines += [
        "",
        f"| bytes per further ticker-day ({z['ticker']}, slope over the last {z['slope_over_last_sessions']} of "
        f"{z['sessions']}) | retention off | retention on |",
        "|---|---|---|",
        *[f"| {kind} | {before[kind]:,} | {after[kind]:,} |" for kind in before],
    ]
    if "scale" in r:
        lines += scale_table(r["scale"])
    lines += [
        "",
        "| target | measured | met |",
        "|---|---|---|",
        *[f"| {name} | {f(v['value'], 3)} | {'yes' if v['met'] else 'no'} |" for name, v in r["targets"].items()],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
