"""The degradation rule's false alarms and its response to a regime shift, on the bundled histories.

What serves nearly every day is v1, the naive forecaster, with the interval method its validation sessions favour,
chosen afresh each day (`pipeline.serving`). Its live record is computed here exactly as the daily run would build
it: each session's served forecast from `choose_intervals` and `served_bounds` on the prices known that day, scored
by `pipeline.evaluation.live_record` when the next close comes, and the rule (`degradation`) applied every session
to the record so far. It is not a full replay (no LSTM is trained: the rule judges what is served, and v1 is what
is served), which is what lets it cover years instead of weeks.

- Without a shift: the last 1,500 sessions before the bench's test sessions of each ticker; the false-alarm rate is
  the number of sessions the rule fires per 250 (a champion replaced every time it fires would be replaced that often).
- With a shift: from the 250th of those sessions on, every daily log move (close to close, and each bar's range
  around its close) is three times larger; reported: live 80% coverage over the 60 sessions after the shift, and the
  first session the rule fires, if it does within 60.

Run: .venv/bin/python bench/degradation.py   (about 5 minutes; writes bench/degradation.json and docs/degradation.png)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.evaluation.live_record import degradation, live_record, score_matured  # noqa: E402
from pipeline.evaluation.served_intervals import choose_intervals, served_bounds  # noqa: E402

SNAPSHOTS = PROJECT_ROOT / "data" / "snapshots"
OUT = PROJECT_ROOT / "bench" / "degradation.json"
CHART = PROJECT_ROOT / "docs" / "degradation.png"
SPAN, TEST_SESSIONS, SHIFT_AT, SHIFT = 1500, 250, 250, 3.0


def served_forecasts(history: pd.DataFrame, positions: range) -> pd.DataFrame:
    """The forecast v1 serves at the close of each position, as `predict` would make it that day."""
    rows = []
    for t in positions:
        known = history.iloc[: t + 1]
        choice = choose_intervals(known, t)
        bounds = served_bounds(known, choice, np.array([t]))
        close = float(history["Close"].iloc[t])
        rows.append(
            {
                "as_of": history["Date"].iloc[t],
                "target": history["Date"].iloc[t + 1],
                "model_version": "1",
                "last_close": close,
                "point": close,
                **{column: float(values[0]) for column, values in bounds.items()},
            }
        )
    return pd.DataFrame(rows)


def shifted(history: pd.DataFrame, start: int, factor: float) -> pd.DataFrame:
    """From `start` on, every close-to-close log move and every bar's log distance from its close `factor` times."""
    out = history.copy()
    log_close = np.log(history["Close"].to_numpy("float64"))
    moves = np.diff(log_close)
    moves[start - 1 :] *= factor
    new_close = np.exp(np.concatenate([[log_close[0]], log_close[0] + np.cumsum(moves)]))
    for column in ("Open", "High", "Low"):
        distance = np.log(history[column].to_numpy("float64")) - log_close
        distance[start:] *= factor
        out[column] = new_close * np.exp(distance)
    out["Close"] = new_close
    return out


def judged(forecasts: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Each session's live record and the rule's verdict on it, as the next day's run would see them."""
    scored = score_matured(forecasts, history)
    rows = []
    for k in range(1, len(scored) + 1):
        record = live_record(scored.head(k), "1")
        rows.append(
            {
                "date": scored["target"].iloc[k - 1],
                "coverage_80_60": record.coverage_80_60,
                "u2_60": record.u2_60,
                "kupiec_p_80": record.kupiec_p_80,
                "fires": degradation(record).degraded,
            }
        )
    return pd.DataFrame(rows)


def study(ticker: str) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    history = pd.read_csv(SNAPSHOTS / f"{ticker}.csv", parse_dates=["Date"])
    end = len(history) - 1 - TEST_SESSIONS  # the first test as-of session: nothing from here on is used
    positions = range(end - SPAN, end)
    calm = judged(served_forecasts(history, positions), history)
    start = end - SPAN + SHIFT_AT
    moved = shifted(history, start, SHIFT)
    shock = judged(served_forecasts(moved, range(start - 60, start + 60)), moved)
    after = shock.loc[shock["date"] > moved["Date"].iloc[start]].head(60)
    first = after.loc[after["fires"], "date"]
    result = {
        "ticker": ticker,
        "sessions": f"{calm['date'].iloc[0]:%Y-%m-%d}..{calm['date'].iloc[-1]:%Y-%m-%d} ({len(calm)})",
        "false_alarms_per_250": float(calm["fires"].sum() / len(calm) * 250),
        "sessions_firing": int(calm["fires"].sum()),
        # A fallback ends an episode (the next champion starts a new record): count the first session of each run.
        "episodes": int((calm["fires"] & ~calm["fires"].shift(1, fill_value=False)).sum()),
        "episodes_per_250": float((calm["fires"] & ~calm["fires"].shift(1, fill_value=False)).sum() / len(calm) * 250),
        "fired_on": sorted({f"{d:%Y-%m-%d}" for d in calm.loc[calm["fires"], "date"]}),
        "shift_kind": None
        if first.empty
        else ("under-coverage" if after.loc[after["fires"], "coverage_80_60"].iloc[0] < 0.8 else "over-coverage"),
        "live_coverage_80_min": float(calm["coverage_80_60"].iloc[60:].min()),
        "live_coverage_80_max": float(calm["coverage_80_60"].iloc[60:].max()),
        "shift": f"moves x{SHIFT:g} from {moved['Date'].iloc[start]:%Y-%m-%d}",
        "shift_coverage_80_after_60": float(after["coverage_80_60"].iloc[-1]),
        "shift_fires_within_60": bool(len(first)),
        "shift_first_fire": None if first.empty else f"{first.iloc[0]:%Y-%m-%d}",
    }
    return result, calm, shock


def chart(calm: dict[str, pd.DataFrame]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=False)
    for ticker, frame in calm.items():
        full = frame.iloc[59:]  # from the first full window of 60 scored sessions
        axes[0].plot(full["date"], full["coverage_80_60"], label=ticker, linewidth=1)
        axes[1].plot(full["date"], full["kupiec_p_80"], label=ticker, linewidth=1)
        fired = full.loc[full["fires"]]
        axes[0].scatter(fired["date"], fired["coverage_80_60"], color="red", s=12, zorder=3)
    axes[0].axhline(0.8, color="black", linewidth=0.8, linestyle="--")
    axes[0].axhspan(0.65, 0.933, color="green", alpha=0.08, label="Kupiec at 1% accepts")
    axes[0].set_ylabel("live coverage 80%, last 60")
    axes[0].legend(loc="lower left", fontsize=8)
    axes[0].set_title("What v1 served, scored as each session came (red: the rule fires)")
    axes[1].set_yscale("log")
    axes[1].axhline(0.01, color="red", linewidth=0.8, linestyle="--")
    axes[1].set_ylabel("Kupiec p, 80%, last 60")
    figure.tight_layout()
    CHART.parent.mkdir(exist_ok=True)
    figure.savefig(CHART, dpi=110)


def main() -> None:
    results, calm = [], {}
    for ticker in ("MSFT", "GSPC"):
        result, calm[ticker], _ = study(ticker)
        results.append(result)
        print(json.dumps(result))
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    chart(calm)
    print(f"wrote {OUT.relative_to(PROJECT_ROOT)} and {CHART.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
