"""The served-interval rule on rolling blocks that end before the bench's test sessions: how it was chosen.

For each bundled ticker, every 125 sessions a 250-session block is served exactly as `make bench` serves its test
sessions: `choose_intervals` on the sessions before the block, then `served_bounds` tracked through it. Each block
is also scored for every candidate (forced) and for the GARCH(1,1)-t reference (`arch`, refit every 20 sessions
on 1,000 returns). Only blocks whose last session comes before the bench's test sessions (a snapshot's last 250)
are used, so nothing here has seen them.

Reported per ticker and overall: the geometric mean of the Winkler ratio to GARCH-t at 80% and 95%, the share of
blocks no worse than GARCH-t at each level and at both, and the share with coverage within 3 points of nominal.

Run: .venv/bin/python bench/interval_blocks.py   (about a minute; writes bench/interval_blocks.json)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.evaluation import served_intervals as si  # noqa: E402
from pipeline.models.references import GARCH_T, reference_intervals  # noqa: E402

SNAPSHOTS = PROJECT_ROOT / "data" / "snapshots"
OUT = PROJECT_ROOT / "bench" / "interval_blocks.json"
BLOCK, STEP, FIRST = 250, 125, 1300
TEST_SESSIONS = 250  # the bench's test sessions: each snapshot's last 250 targets


def _forced(history: pd.DataFrame, choice: si.IntervalChoice, method: str, block: np.ndarray) -> dict[str, float]:
    """A candidate's bounds over the block as if it had been chosen (same fits, recalibrated the same way)."""
    prices = si._prices(history)
    fits = si._fit(prices, int(choice.first_out_of_sample - choice.validation_sessions - si.WINDOW))
    sigma = si._sigma(prices, method, fits)
    if sigma is None or not np.all(np.isfinite(sigma[block[0] - si.WINDOW : block[-1] + 1])):
        return {}
    quantiles = si._calibrate(prices, sigma, np.arange(block[0] - si.WINDOW, block[0]))
    return si._summary(prices, si._tracked(prices, sigma, quantiles, block), block)


def blocks_of(ticker: str) -> list[dict]:
    history = pd.read_csv(SNAPSHOTS / f"{ticker}.csv")
    prices = si._prices(history)
    dates = history["Date"].astype(str).to_numpy()
    first_test_as_of = len(history) - 1 - TEST_SESSIONS
    rows = []
    for start in range(FIRST, first_test_as_of - BLOCK + 1, STEP):
        block = np.arange(start, start + BLOCK)
        choice = si.choose_intervals(history, start)
        row = {
            "ticker": ticker,
            "targets": f"{dates[start + 1]}..{dates[start + BLOCK]}",
            "chosen": choice.method,
            "served": si._summary(prices, si.served_bounds(history, choice, block), block),
            GARCH_T: si._summary(prices, reference_intervals(prices.closes, block)[GARCH_T], block),
        }
        for method in si.CANDIDATES[1:]:
            row[method] = _forced(history, choice, method, block)
        rows.append(row)
    return rows


def summary(rows: list[dict], name: str) -> dict[str, float]:
    scored = [r for r in rows if r.get(name)]
    ratio = {
        lv: np.array([r[name][f"winkler_{lv}"] / r[GARCH_T][f"winkler_{lv}"] for r in scored]) for lv in ("80", "95")
    }
    near = {
        lv: np.array([abs(r[name][f"coverage_{lv}"] - int(lv) / 100) <= 0.03 + 1e-12 for r in scored])
        for lv in ("80", "95")
    }
    return {
        "blocks": len(scored),
        **{f"winkler_ratio_gm_{lv}": float(np.exp(np.log(ratio[lv]).mean())) for lv in ratio},
        **{f"no_worse_{lv}": float(np.mean(ratio[lv] <= 1)) for lv in ratio},
        "no_worse_both": float(np.mean((ratio["80"] <= 1) & (ratio["95"] <= 1))),
        **{f"coverage_within_3_{lv}": float(near[lv].mean()) for lv in near},
    }


def main() -> None:
    rows = [row for ticker in ("MSFT", "GSPC") for row in blocks_of(ticker)]
    table = {}
    for scope, members in (("all", rows), *((t, [r for r in rows if r["ticker"] == t]) for t in ("MSFT", "GSPC"))):
        table[scope] = {name: summary(members, name) for name in ("served", *si.CANDIDATES[1:])}
    OUT.write_text(json.dumps({"summary": table, "blocks": rows}, indent=1) + "\n")
    print(f"{'scope':6} {'method':18} {'blocks':>6} {'W80/G':>7} {'W95/G':>7} {'<=G 80':>6} {'<=G 95':>6} {'both':>5}")
    for scope, methods in table.items():
        for name, s in methods.items():
            print(
                f"{scope:6} {name:18} {s['blocks']:6d} {s['winkler_ratio_gm_80']:7.4f} {s['winkler_ratio_gm_95']:7.4f}"
                f" {s['no_worse_80']:6.2f} {s['no_worse_95']:6.2f} {s['no_worse_both']:5.2f}"
            )
    print(f"wrote {OUT.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
