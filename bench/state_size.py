"""What each further ticker-day adds to STOCKPIPE_HOME, before and after retention (issue 24): the daily pipeline
replayed over the last sessions of bundled MSFT in a fresh home, once with retention off (every lost run keeps its
files, GX's Data Docs site untrimmed: the state before issue 24) and once with the defaults (STOCKPIPE_KEEP_LOST_RUNS
5, STOCKPIPE_RETENTION_DAYS 30, the slim site). After each session the home is measured by kind of file
(pipeline.state_size; Prefect's database aside); bytes per ticker-day is the least-squares slope over the last
sessions, per kind and in all, once the first days' one-off files (the baseline, the site, the history) are in.

Each replay is `pipeline.daily.run_ticker` per session with the context `flows.daily.daily_context` builds from the
settings, in its own process (the two run side by side): the same sequence the `daily-pipeline` flow runs, without
the Prefect task wrappers, whose database is not counted anyway.

Run: .venv/bin/python bench/state_size.py [--sessions 20 --slope-over 10 --epochs N]   (writes bench/results.json's
     `state_size`; `make bench` runs it as its last step, `make bench-quick` in a short form)
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

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

TICKER = "MSFT"
GOAL_BYTES = 150_000
FOREIGN = ("STOCKPIPE_", "MLFLOW_", "PREFECT_")
# Retention off: more lost runs than any replay has, for longer than any replay lasts.
OFF = {"keep_lost_runs": 10**6, "retention_days": 10**6, "slim_docs": False}
ON = {"keep_lost_runs": None, "retention_days": None, "slim_docs": True}  # None: the settings' defaults


def sessions(count: int) -> list[str]:
    import pandas as pd

    from pipeline.common.settings import BUNDLED_SNAPSHOTS
    from pipeline.common.trading_calendar import sessions_between

    dates = pd.read_csv(BUNDLED_SNAPSHOTS / f"{TICKER}.csv", usecols=["Date"])["Date"]
    last = pd.Timestamp(dates.iloc[-1]).date()
    days = sessions_between(pd.Timestamp(dates.iloc[-count - 40]).date(), last)[-count:]
    return [day.date().isoformat() for day in days]


# -- one replay, in its own process ---------------------------------------------------------------------------


def replay(home: Path, days: list[str], slim_docs: bool) -> dict:
    """The pipeline's day for each session, the home measured after each; the settings come from the environment
    the parent set (STOCKPIPE_HOME, the retention, the epochs)."""
    import dataclasses
    import datetime as dt

    from flows import environment
    from pipeline.common.settings import Settings

    settings = Settings()
    environment.before_imports(settings)
    environment.in_flow_process(settings)

    from flows.daily import daily_context
    from pipeline.contract import data_docs
    from pipeline.daily import run_ticker
    from pipeline.registry.retention import RunRetention
    from pipeline.state_size import home_bytes

    if not slim_docs:  # the site as GX writes it, as every run wrote it before issue 24
        data_docs.slim_site = lambda *args, **kwargs: 0
    ctx = dataclasses.replace(daily_context(settings), lost_runs=RunRetention.from_settings(settings))
    measured, decisions, seconds = [], [], []
    for day in days:
        begun = time.perf_counter()
        outcome = run_ticker(TICKER, ctx, as_of=dt.date.fromisoformat(day))
        seconds.append(time.perf_counter() - begun)
        if not outcome.succeeded:
            raise SystemExit(f"{day}: {outcome.reason}")
        decisions.append(outcome.decision.value)
        measured.append(home_bytes(settings))
    return {
        **comparable_runs(ctx.connect()),
        "keep_lost_runs": settings.keep_lost_runs,
        "retention_days": settings.retention_days,
        "slim_docs": slim_docs,
        "epochs": settings.training.epochs,
        "decisions": decisions,
        "seconds_per_session": float(np.median(seconds)),
        "measured": measured,
    }


def comparable_runs(tracker) -> dict[str, int]:
    """What the MLflow UI compares must outlive the files: every daily run still has its params, metrics and
    description, pruned or not."""
    from pipeline.registry.retention import FILES_PRUNED_TAG
    from pipeline.registry.tracking import DESCRIPTION_TAG

    runs = tracker.runs(TICKER, max_results=1000)
    whole = [
        r for r in runs if r.data.params and "challenger_rmse" in r.data.metrics and DESCRIPTION_TAG in r.data.tags
    ]
    return {
        "daily_runs": len(runs),
        "runs_with_params_metrics_and_description": len(whole),
        "runs_whose_files_were_pruned": sum(FILES_PRUNED_TAG in r.data.tags for r in runs),
    }


def child_env(home: Path, mode: dict, epochs: int | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env.update(
        STOCKPIPE_HOME=str(home),
        STOCKPIPE_TICKERS=json.dumps([TICKER]),
        STOCKPIPE_MAX_STALENESS_SESSIONS="100000",
        PYTHONPATH=str(PROJECT_ROOT),
        TF_CPP_MIN_LOG_LEVEL="2",
        # Two replays side by side on a small machine: each TensorFlow gets its share of the cores.
        TF_NUM_INTRAOP_THREADS=str(max(1, (os.cpu_count() or 2) // 2)),
    )
    for key in ("keep_lost_runs", "retention_days"):
        if mode[key] is not None:
            env[f"STOCKPIPE_{key.upper()}"] = str(mode[key])
    if epochs is not None:
        env["STOCKPIPE_TRAINING__EPOCHS"] = str(epochs)
    return env


# -- the comparison -------------------------------------------------------------------------------------------


def slopes(measured: list[dict], last: int) -> dict[str, float]:
    """Bytes added per session over the last `last` sessions (least squares), per kind and in all."""
    from pipeline.state_size import KINDS, total

    window = measured[-last:]
    x = np.arange(len(window))
    per_kind = {kind: float(np.polyfit(x, [m.get(kind) or 0 for m in window], 1)[0]) for kind in KINDS}
    per_kind["total"] = float(np.polyfit(x, [total(m) for m in window], 1)[0])
    return {kind: round(value) for kind, value in per_kind.items()}


def summary(run: dict, last: int) -> dict:
    from pipeline.state_size import total

    final = run["measured"][-1]
    return {
        **{k: v for k, v in run.items() if k != "measured"},
        "bytes_per_ticker_day": slopes(run["measured"], last),
        "home_bytes_at_end": {**final, "total_without_prefect": total(final)},
        "home_total_by_session": [total(m) for m in run["measured"]],
    }


def measure(count: int = 20, last: int = 10, epochs: int | None = None, quick: bool = False) -> dict:
    """Both replays side by side, each in a fresh home; returns the bench's `state_size` entry."""
    days = sessions(count)
    modes = {"before": OFF, "after": {**ON, "keep_lost_runs": 1} if quick else ON}
    with tempfile.TemporaryDirectory(prefix="stockpipe-state-size-") as tmp:
        children = {}
        for name, mode in modes.items():
            home, out = Path(tmp) / name / ".stockpipe", Path(tmp) / f"{name}.json"
            home.parent.mkdir(parents=True)
            args = [sys.executable, __file__, "--child", str(out), "--days", ",".join(days)]
            args += [] if mode["slim_docs"] else ["--untrimmed-docs"]
            log = (Path(tmp) / f"{name}.log").open("w")
            children[name] = (
                subprocess.Popen(args, env=child_env(home, mode, epochs), cwd=home.parent, stdout=log, stderr=log),
                out,
                log,
            )
        runs = {}
        for name, (child, out, log) in children.items():
            child.wait()
            log.close()
            if child.returncode != 0:
                raise SystemExit(f"{name} replay failed:\n{Path(log.name).read_text()[-4000:]}")
            runs[name] = json.loads(out.read_text())
    before, after = summary(runs["before"], last), summary(runs["after"], last)
    return {
        "ticker": TICKER,
        "sessions": f"{days[0]}..{days[-1]} ({len(days)})",
        "slope_over_last_sessions": last,
        "before": before,
        "after": after,
        "goal_bytes_per_ticker_day": GOAL_BYTES,
        "goal_met": after["bytes_per_ticker_day"]["total"] <= GOAL_BYTES,
        "method": (
            f"The daily pipeline (pipeline.daily.run_ticker with flows.daily.daily_context's context, plain stages) "
            f"for each of the last {len(days)} sessions of bundled {TICKER}, fresh STOCKPIPE_HOME, "
            f"{'default training' if epochs is None else f'{epochs} epochs at most'}; `before` keeps every lost run's "
            "files and GX's whole Data Docs site (the state before issue 24), `after` runs retention "
            f"(keep {after['keep_lost_runs']} lost runs / {after['retention_days']:g} days) and the slim site. The "
            "home is measured after each session by kind (pipeline.state_size.home_bytes; Prefect's database "
            f"aside); bytes per ticker-day is the least-squares slope over the last {last} sessions."
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--slope-over", type=int, default=10)
    parser.add_argument("--epochs", type=int, help="at most this many epochs (default: the settings')")
    parser.add_argument("--quick", action="store_true", help="a short form (CI): retention keeps 1 lost run")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--days", help=argparse.SUPPRESS)
    parser.add_argument("--untrimmed-docs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        home = Path(os.environ["STOCKPIPE_HOME"])
        result = replay(home, args.days.split(","), slim_docs=not args.untrimmed_docs)
        args.child.write_text(json.dumps(result))
        return
    result = measure(args.sessions, args.slope_over, args.epochs, args.quick)
    existing = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**existing, "state_size": result}, indent=2, default=float) + "\n")
    print(json.dumps({k: result[k] for k in ("sessions", "goal_met")}, indent=1))
    for name in ("before", "after"):
        print(name, json.dumps(result[name]["bytes_per_ticker_day"]))


if __name__ == "__main__":
    main()
