"""How the promotion rule behaves over a replay of consecutive sessions, and how its promotions paid off.

For each session of the replay a challenger is trained on the data up to that session, exactly as the daily run
would (same windows, same scoring span), and every rule under study decides against its own champion, which starts
as the naive forecaster. For every promotion, the new champion and the one it replaced then forecast the next
`horizon` sessions (never seen by either), and the realised relative RMSE gain is recorded. The old rule is
"lower test RMSE on one window" (margin 0); the new rule needs evidence (pipeline.evaluation.evidence).

    python bench/promotion_replay.py --sessions 60 --epochs 10 --out bench/promotion_replay.json

One process per ticker, one TensorFlow thread each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

OLD_RULE = "old: lower RMSE on one window"


HORIZON = 20


from pipeline.common.settings import TrainingConfig  # noqa: E402


def policies() -> dict[str, object]:
    from pipeline.evaluation.evidence import PromotionPolicy

    return {
        "new: gain >= 0, DM p < 0.10, majority of blocks, U2 < 1": PromotionPolicy(0.0, 0.10),
        "new: gain >= 0.1%, DM p < 0.10, majority, U2 < 1": PromotionPolicy(0.001, 0.10),
        "new: gain >= 0.2%, DM p < 0.10, majority, U2 < 1": PromotionPolicy(0.002, 0.10),
        "new: gain >= 0.5%, DM p < 0.10, majority, U2 < 1": PromotionPolicy(0.005, 0.10),
    }


def replay_ticker(ticker: str, sessions: int, epochs: int, horizon: int) -> dict:
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import pandas as pd

    from pipeline.common.settings import BUNDLED_SNAPSHOTS, TrainingConfig
    from pipeline.data.sources import CsvSource
    from pipeline.evaluation.promotion import decide
    from pipeline.evaluation.scoring import score
    from pipeline.models.forecasters import NaiveForecaster
    from pipeline.models.training import train_challenger

    config = TrainingConfig(epochs=epochs)
    prices = CsvSource(BUNDLED_SNAPSHOTS).read(ticker)[0]
    dates = pd.DatetimeIndex(prices["Date"])
    # The last `horizon` sessions are only ever used to judge the promotions made before them.
    days = dates[-(sessions + horizon) : -horizon]
    rules = [OLD_RULE, *policies()]
    champions = {rule: NaiveForecaster() for rule in rules}
    records: dict[str, list[dict]] = {rule: [] for rule in rules}
    started = time.perf_counter()
    for i, day in enumerate(days):
        history = prices.loc[prices["Date"] <= day].reset_index(drop=True)
        challenger = train_challenger(history, config, ticker)
        scored: dict[int, object] = {}  # rules that share a champion share its scores
        for rule in rules:
            champion = champions[rule]
            if id(champion) not in scored:
                scored[id(champion)] = score(challenger.dataset, challenger.forecaster, champion, config.eval_blocks)
            scores = scored[id(champion)]
            evidence = scores.evidence
            if rule == OLD_RULE:
                promote = evidence.challenger_rmse < evidence.champion_rmse
            else:
                promote = decide(evidence, policies()[rule]).promote
            record = {
                "day": day.date().isoformat(),
                "promoted": bool(promote),
                "gain": evidence.relative_gain,
                "dm_pvalue": evidence.dm_pvalue,
                "blocks_won": evidence.blocks_won,
                "u2": evidence.u2,
            }
            if promote:
                record["realised_gain"] = realised_gain(prices, day, horizon, challenger.forecaster, champion)
                champions[rule] = (
                    challenger.forecaster.with_calibration(scores.challenger_calibration)
                    if scores.challenger_calibration
                    else challenger.forecaster
                )
            records[rule].append(record)
        print(
            f"{ticker} {day.date()} ({i + 1}/{len(days)}, {time.perf_counter() - started:.0f}s): "
            + ", ".join(f"{'P' if records[r][-1]['promoted'] else '.'}" for r in rules),
            flush=True,
        )

    return {
        "ticker": ticker,
        "sessions": len(days),
        "first": days[0].date().isoformat(),
        "last": days[-1].date().isoformat(),
        "epochs": epochs,
        "horizon": horizon,
        "rules": records,
        "seconds": time.perf_counter() - started,
    }


def realised_gain(prices, day, horizon: int, new, old) -> float:
    """1 - RMSE(new) / RMSE(old) on the `horizon` sessions after `day`, each forecast from the data before it."""
    import numpy as np
    import pandas as pd

    from pipeline.models.forecasters import forecasts_on, to_model_input

    dates = pd.DatetimeIndex(prices["Date"])
    position = dates.get_loc(day)
    as_of = dates[position : position + horizon]
    actual = prices["Close"].to_numpy("float64")[position + 1 : position + 1 + horizon]
    upto = prices.iloc[: position + horizon + 1]
    errors = {}
    for name, model in (("new", new), ("old", old)):
        forecast = forecasts_on(model.predict(to_model_input(upto)), as_of)
        errors[name] = float(np.sqrt(np.mean((actual - forecast) ** 2)))
    return 1 - errors["new"] / errors["old"]


def summarise(results: list[dict]) -> dict:
    summary = {}
    for rule in [OLD_RULE, *policies()]:
        promotions = [r for result in results for r in result["rules"][rule] if r["promoted"]]
        sessions = sum(result["sessions"] for result in results)
        gains = [p["realised_gain"] for p in promotions]
        summary[rule] = {
            "promotions": len(promotions),
            "promotions_per_60_sessions": 60 * len(promotions) / sessions,
            "share_realised_gain_positive": (sum(g > 0 for g in gains) / len(gains)) if gains else None,
            "mean_realised_gain": (sum(gains) / len(gains)) if gains else None,
            "by_ticker": {result["ticker"]: sum(r["promoted"] for r in result["rules"][rule]) for result in results},
        }
    return summary


def markdown(report: dict) -> str:
    """The README's table: one row per rule."""

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    def gain(value: float | None) -> str:
        return "-" if value is None else f"{value:+.2%}"

    runs = report["runs"]
    tickers = [r["ticker"] for r in runs]
    lines = [
        f"| rule | promotions per 60 sessions | {' | '.join(tickers)} | realised gain > 0 | mean realised gain |",
        "|---|---|" + "---|" * len(tickers) + "---|---|",
    ]
    for rule, figures in report["summary"].items():
        lines.append(
            f"| {rule} | {figures['promotions_per_60_sessions']:.1f} | "
            + " | ".join(str(figures["by_ticker"][t]) for t in tickers)
            + f" | {share(figures['share_realised_gain_positive'])} | {gain(figures['mean_realised_gain'])} |"
        )
    spans = ", ".join(f"{r['ticker']} {r['first']}..{r['last']}" for r in runs)
    lines += ["", f"{runs[0]['sessions']} sessions per ticker ({spans}), {runs[0]['epochs']} epochs at most."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickers", nargs="+", default=["MSFT", "GSPC"])
    parser.add_argument("--sessions", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=TrainingConfig().epochs, help="the daily run's default")
    parser.add_argument("--horizon", type=int, default=HORIZON)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "promotion_replay.json")
    args = parser.parse_args()
    with ProcessPoolExecutor(max_workers=len(args.tickers)) as pool:
        results = list(
            pool.map(
                replay_ticker,
                args.tickers,
                [args.sessions] * len(args.tickers),
                [args.epochs] * len(args.tickers),
                [args.horizon] * len(args.tickers),
            )
        )
    report = {"date": dt.date.today().isoformat(), "summary": summarise(results), "runs": results}
    args.out.write_text(json.dumps(report, indent=2))
    args.out.with_suffix(".md").write_text(markdown(report))
    for rule, figures in report["summary"].items():
        share = figures["share_realised_gain_positive"]
        print(
            f"{rule}: {figures['promotions_per_60_sessions']:.1f} promotions per 60 sessions, "
            f"{'n/a' if share is None else f'{share:.0%}'} with a positive realised gain"
        )


if __name__ == "__main__":
    main()
