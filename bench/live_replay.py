"""The served forecasts' live record from a real replay: `stockpipe replay` over the last sessions of a bundled
ticker, default settings, a fresh STOCKPIPE_HOME, exactly as the weekday schedule would have run them (a challenger
trained every session, promoted only on evidence, the degradation rule applied before each day's decision).

What it reports comes from what the replay left behind, read two ways that must agree: the `live_*` metrics each
daily run logged to MLflow, and the record recomputed from `forecasts/<TICKER>.parquet` and the price store with
`pipeline.evaluation.live_record`. The chart is of what served each session, whichever version it was: live 80% and
95% coverage and U2 against "tomorrow = today" over the last 60 scored forecasts (fewer at the start).

Run: .venv/bin/python bench/live_replay.py [--ticker GSPC --sessions 130] [--keep DIR]
     (about 50 minutes at the defaults on 2 cores; writes bench/live_replay.json and docs/live_record.png)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.common.settings import BUNDLED_SNAPSHOTS, Settings  # noqa: E402
from pipeline.common.trading_calendar import sessions_between  # noqa: E402
from pipeline.data.forecast_log import ForecastLog  # noqa: E402
from pipeline.data.store import PriceStore  # noqa: E402
from pipeline.evaluation.live_record import record_on, score_matured  # noqa: E402
from pipeline.registry.tracking import Tracker  # noqa: E402

OUT = PROJECT_ROOT / "bench" / "live_replay.json"
CHART = PROJECT_ROOT / "docs" / "live_record.png"
FIGURES = ("live_sessions", "live_u2_60", "live_coverage_80_60", "live_coverage_95_60", "live_kupiec_p_80")
FOREIGN = ("STOCKPIPE_", "MLFLOW_", "PREFECT_")


def replay(ticker: str, sessions: int, home: Path) -> tuple[str, str, float]:
    history = pd.read_csv(BUNDLED_SNAPSHOTS / f"{ticker}.csv", usecols=["Date"])
    last = pd.Timestamp(history["Date"].iloc[-1]).date()
    days = sessions_between(pd.Timestamp(history["Date"].iloc[-sessions - 40]).date(), last)[-sessions:]
    start, end = days[0].date().isoformat(), days[-1].date().isoformat()
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update(STOCKPIPE_HOME=str(home), PYTHONPATH=str(PROJECT_ROOT))
    begun = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "replay", "--start", start, "--end", end, "--tickers", ticker],
        env=env,
        cwd=home.parent,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"replay failed:\n{(done.stdout + done.stderr)[-4000:]}")
    return start, end, time.monotonic() - begun


def logged_records(tracker: Tracker, ticker: str) -> pd.DataFrame:
    """Per daily run, oldest first: the day, the champion it opened with, its live figures, its fallback."""
    rows = []
    for run in tracker.runs(ticker, max_results=5000):
        metrics, tags = run.data.metrics, run.data.tags
        rows.append(
            {
                "day": tags["day"],
                "champion_before": tags.get("champion_before"),
                "decision": tags.get("decision"),
                "fallback": tags.get("fallback"),
                **{figure: metrics.get(figure) for figure in FIGURES},
            }
        )
    return pd.DataFrame(rows).sort_values("day").reset_index(drop=True)


def what_served(forecasts: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Each target session's forecast as it was served (the one recorded last), scored, with rolling figures."""
    served = forecasts.sort_values("recorded_at").drop_duplicates("target", keep="last")
    scored = score_matured(served, prices)

    def last_60(values: pd.Series) -> pd.Series:
        return values.astype("float64").rolling(60, min_periods=1).mean()

    return scored.assign(
        coverage_80=last_60(scored["inside_80"]),
        coverage_95=last_60(scored["inside_95"]),
        u2=np.sqrt(last_60(scored["error"] ** 2) / last_60(scored["naive_error"] ** 2)),
    )


def chart(ticker: str, served: pd.DataFrame, versions: pd.Series) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    dates = pd.to_datetime(served["target"])
    top.plot(dates, served["coverage_80"], label="80% intervals", linewidth=1.2)
    top.plot(dates, served["coverage_95"], label="95% intervals", linewidth=1.2)
    for nominal in (0.80, 0.95):
        top.axhline(nominal, color="black", linewidth=0.7, linestyle="--")
    top.axhline(0.65, color="red", linewidth=0.7, linestyle=":", label="80%: the rule's floor (Kupiec at 1%)")
    top.axvspan(dates.iloc[0], dates.iloc[min(59, len(dates) - 1)], color="grey", alpha=0.1, label="fewer than 60")
    top.set_ylabel("live coverage, last 60")
    top.set_ylim(0.5, 1.02)
    top.legend(loc="lower left", fontsize=8)
    top.set_title(f"{ticker}: what the replay served, scored as each session came (version changes dotted)")
    bottom.plot(dates, served["u2"], color="tab:purple", linewidth=1.2)
    bottom.axhline(1.0, color="black", linewidth=0.7, linestyle="--")
    bottom.set_ylabel("live U2 vs naive, last 60")
    for when in dates[versions.ne(versions.shift()).to_numpy()][1:]:
        for axis in (top, bottom):
            axis.axvline(when, color="grey", linewidth=0.8, linestyle=":")
    figure.tight_layout()
    CHART.parent.mkdir(exist_ok=True)
    figure.savefig(CHART, dpi=110)


def live_step_seconds(settings: Settings, ticker: str, repeats: int = 5) -> dict[str, float]:
    """What the live record adds to one ticker-day on this state, each step as the daily run does it (median of
    `repeats`): scoring the matured forecasts and judging them, logging the record (the day's run and the version's
    own run), and keeping the forecast served. Logged to a scratch run; the forecast file is restored after."""
    import shutil
    import statistics

    from pipeline.evaluation.live_record import degradation
    from pipeline.live import record_served
    from pipeline.registry.live_runs import log_live_record

    tracker = Tracker.from_settings(settings)
    log = ForecastLog(settings.forecasts_dir)
    prices = PriceStore(settings.store_dir, settings.locks_dir).read(ticker)
    champion = tracker.champion(ticker)
    model = tracker.load(champion, ticker)
    scratch = tracker.start_run(f"{ticker} live cost", {"ticker": ticker, "role": "bench"})
    kept = log.path(ticker).with_suffix(".bench-copy")
    shutil.copyfile(log.path(ticker), kept)
    steps: dict[str, list[float]] = {"score_and_judge": [], "log_to_mlflow": [], "record_served": []}
    try:
        for _ in range(repeats):
            begun = time.perf_counter()
            record = record_on(log.read(ticker), prices, champion.version)
            degradation(record)
            steps["score_and_judge"].append(time.perf_counter() - begun)
            begun = time.perf_counter()
            tracker.log_metrics(scratch, record.metrics())
            log_live_record(tracker, ticker, record)
            steps["log_to_mlflow"].append(time.perf_counter() - begun)
            begun = time.perf_counter()
            record_served(log, ticker, model, prices, champion.version, champion.serves_chosen_intervals)
            steps["record_served"].append(time.perf_counter() - begun)
    finally:
        shutil.move(kept, log.path(ticker))
        tracker.client.delete_run(scratch)
    medians = {step: round(statistics.median(values), 4) for step, values in steps.items()}
    return {**medians, "total": round(sum(medians.values()), 4), "forecasts_in_file": len(log.read(ticker))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticker", default="GSPC")
    parser.add_argument("--sessions", type=int, default=130)
    parser.add_argument("--keep", type=Path, metavar="DIR", help="leave the replay's home in DIR/.stockpipe")
    parser.add_argument("--cost-of", type=Path, metavar="HOME", help="only time the live steps on this home's state")
    args = parser.parse_args()
    if args.cost_of:
        cost = live_step_seconds(Settings(home=args.cost_of), args.ticker)
        print(json.dumps(cost, indent=1))
        if OUT.exists() and json.loads(OUT.read_text()).get("ticker") == args.ticker:
            OUT.write_text(json.dumps({**json.loads(OUT.read_text()), "live_step_seconds": cost}, indent=1) + "\n")
        return
    with tempfile.TemporaryDirectory(prefix="stockpipe-live-replay-") as folder:
        home = (args.keep.resolve() if args.keep else Path(folder)) / ".stockpipe"
        home.parent.mkdir(parents=True, exist_ok=True)
        start, end, seconds = replay(args.ticker, args.sessions, home)
        settings = Settings(home=home)
        tracker = Tracker.from_settings(settings)
        logged = logged_records(tracker, args.ticker)
        forecasts = ForecastLog(settings.forecasts_dir).read(args.ticker)
        prices = PriceStore(settings.store_dir, settings.locks_dir).read(args.ticker)
        cost = live_step_seconds(settings, args.ticker)
    # The last run's figures, recomputed from the files, must be what it logged (before its own forecast matured).
    last_version = logged["champion_before"].iloc[-1].split()[0].removeprefix("v")
    as_of_last_run = prices[pd.to_datetime(prices["Date"]) <= pd.Timestamp(logged["day"].iloc[-1])]
    recomputed = record_on(forecasts, as_of_last_run, last_version).metrics()
    for figure in FIGURES:
        logged_value, file_value = logged[figure].iloc[-1], recomputed.get(figure, np.nan)
        if not np.isclose(logged_value, file_value, equal_nan=True):
            raise SystemExit(f"{figure}: MLflow says {logged_value}, the files say {file_value}")
    served = what_served(forecasts, prices)
    chart(args.ticker, served, served["model_version"])
    result = {
        "ticker": args.ticker,
        "sessions": f"{start}..{end} ({len(logged)})",
        "settings": "defaults (30 epochs at most, early stopping), a fresh STOCKPIPE_HOME",
        "replay_seconds": round(seconds, 1),
        "seconds_per_session": round(seconds / len(logged), 2),
        "versions_served": sorted(set(served["model_version"]), key=int),
        "promotions": int((logged["decision"] == "promoted").sum()),
        "fallbacks": int(logged["fallback"].notna().sum()),
        "scored": len(served),
        "served_coverage_80_all": float(served["inside_80"].mean()),
        "served_coverage_95_all": float(served["inside_95"].mean()),
        "served_u2_all": float(np.sqrt((served["error"] ** 2).mean() / (served["naive_error"] ** 2).mean())),
        "served_coverage_80_60_min": float(served["coverage_80"].iloc[59:].min()) if len(served) >= 60 else None,
        "last_run": {figure: logged[figure].iloc[-1] for figure in FIGURES},
        "mlflow_equals_files": True,
        "live_step_seconds": cost,
    }
    OUT.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
