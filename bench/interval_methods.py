"""Interval methods around the naive forecast (tomorrow's close = today's), compared on VALIDATION sessions.

Evidence for issue 22's choice of interval method. For each bundled ticker, the 250 sessions just before its test
span are the validation window; the 250 before those calibrate the conformal methods, and the HAR model is fitted
on the 2,500 sessions before that. The methods:

- empirical: quantiles of the last 250 log returns (what the naive champion serves today);
- ewma-gauss: RiskMetrics EWMA (lambda 0.94) sigma, Gaussian quantiles;
- garch-t: GARCH(1,1)-t (`arch`, refit every 20 sessions on 1,000 returns), standardised-t quantiles;
- *-conformal: the EWMA, GARCH or HAR (of a range-based variance) sigma times the split-conformal quantile, with
  the (n + 1) correction, of |log(actual / forecast)| / sigma on the calibration window.

Scores (price units): coverage and Winkler (1972) at 80% and 95%, mean pinball over the four served quantiles,
Kupiec (1995) and Christoffersen (1998) p-values. The choice per ticker is made from the validation table alone
and written to bench/interval_methods.json before the test sessions are even scored; the test table that follows
is a report, never an input to the choice.

Run: .venv/bin/python bench/interval_methods.py
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from pipeline.evaluation.interval_scores import winkler_scores  # noqa: E402
from pipeline.evaluation.interval_tests import (  # noqa: E402
    christoffersen_independence,
    exceedances,
    kupiec_pof,
    mean_pinball,
)
from pipeline.models.conformal import TRACKING_STEP, conformal_quantile  # noqa: E402
from pipeline.models.intervals import interval_columns  # noqa: E402
from pipeline.models.naive_intervals import naive_intervals  # noqa: E402
from pipeline.models.volatility import ewma_volatility  # noqa: E402
from pipeline.models.volatility_estimators import (  # noqa: E402
    fit_har,
    garch_t_sigma,
    garman_klass,
    har_sigma,
    parkinson,
    rogers_satchell,
    standardized_t_quantile,
)

TEST_START = {"MSFT": "2016-11-15", "GSPC": "2018-01-03"}  # first target date of bench/results.json's test span
SESSIONS = 250
HAR_TRAINING = 2500
LEVELS = (0.80, 0.95)
OUT = PROJECT_ROOT / "bench" / "interval_methods.json"
RANGE_ESTIMATORS: dict[str, Callable[..., np.ndarray]] = {
    "parkinson": parkinson,
    "garman-klass": garman_klass,
    "rogers-satchell": rogers_satchell,
}

Bounds = dict[float, tuple[np.ndarray, np.ndarray]]


def symmetric(closes: np.ndarray, as_of: np.ndarray, sigma: np.ndarray, multiple: Callable[[float], object]) -> Bounds:
    """close * exp(± multiple(level) * sigma) per level; `multiple` may be a number or one per session."""
    out = {}
    for level in LEVELS:
        half = np.asarray(multiple(level), dtype="float64") * sigma
        out[level] = (closes[as_of] * np.exp(-half), closes[as_of] * np.exp(half))
    return out


def conformal(
    closes: np.ndarray, cal: np.ndarray, ev: np.ndarray, sigma_at: Callable[[np.ndarray], np.ndarray]
) -> tuple[Bounds, Bounds, dict[float, float]]:
    """Split conformal on the calibration as-of sessions, applied to the evaluated ones: as calibrated, and with
    the served conformal's quantile tracking (q <- max(0, q + step * q0 * (miss - alpha)) after each outcome)."""
    scores = np.abs(np.log(closes[cal + 1] / closes[cal])) / sigma_at(cal)
    quantiles = {level: conformal_quantile(scores, level) for level in LEVELS}
    sigma, actual = sigma_at(ev), closes[ev + 1]
    plain = symmetric(closes, ev, sigma, quantiles.__getitem__)
    used = {}
    for level, q0 in quantiles.items():
        q, used[level] = q0, np.empty(ev.size)
        for k in range(ev.size):
            used[level][k] = q
            half = q * sigma[k]
            missed = not closes[ev[k]] * np.exp(-half) <= actual[k] <= closes[ev[k]] * np.exp(half)
            q = max(0.0, q + TRACKING_STEP * q0 * (missed - (1 - level)))
    return plain, symmetric(closes, ev, sigma, used.__getitem__), quantiles


def methods(prices: pd.DataFrame, cal: np.ndarray, ev: np.ndarray) -> tuple[dict[str, Bounds], dict, float]:
    """Every method's intervals at the as-of close indices `ev`; `cal` are the calibration as-of indices."""
    closes = prices["Close"].to_numpy(dtype="float64")
    returns = np.diff(np.log(closes))  # returns[t] is the log return into close t + 1
    # As-of close i knows returns[: i], so its forecast of the return into close i + 1 sits at position i - 1.
    ewma = ewma_volatility(closes)  # [i]: made at close i
    garch_sigma, garch_nu = np.full(closes.size, np.nan), np.full(closes.size, np.nan)
    started = time.perf_counter()
    garch_sigma[ev], garch_nu[ev] = garch_t_sigma(returns, ev - 1)
    garch_seconds = time.perf_counter() - started
    garch_sigma[cal], garch_nu[cal] = garch_t_sigma(returns, cal - 1)

    naive = naive_intervals(closes, ev, LEVELS, lookback=SESSIONS)
    out: dict[str, Bounds] = {
        "empirical": {
            level: (naive[interval_columns(level)[0]], naive[interval_columns(level)[1]]) for level in LEVELS
        },
        "ewma-gauss": symmetric(closes, ev, ewma[ev], lambda level: stats.norm.ppf(0.5 + level / 2)),
        "garch-t": symmetric(
            closes, ev, garch_sigma[ev], lambda level: standardized_t_quantile(0.5 + level / 2, garch_nu[ev])
        ),
    }
    har_fits: dict[str, dict] = {}
    scales: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "ewma": ewma.__getitem__,
        "garch": garch_sigma.__getitem__,
    }
    ohlc = [prices[c].to_numpy(dtype="float64") for c in ("Open", "High", "Low", "Close")]
    train_end = int(cal[0]) + 1  # sessions up to the first calibration as-of close: known before any is scored
    for name, estimator in RANGE_ESTIMATORS.items():
        variance = estimator(*ohlc)
        coefficients = fit_har(variance, train_end, train_start=max(0, train_end - HAR_TRAINING))
        scales[f"har-{name}"] = har_sigma(variance, coefficients).__getitem__  # [i]: made at close i
        har_fits[f"har-{name}"] = vars(coefficients)
    fitted, tracked = {}, {}
    for name, sigma_at in scales.items():
        out[f"{name}-conformal"], tracked[f"{name}-conformal+tracking"], quantiles = conformal(
            closes, cal, ev, sigma_at
        )
        fitted[f"{name}-conformal"] = {"quantiles": quantiles, "har": har_fits.get(name)}
    return {**out, **tracked}, fitted, garch_seconds


def score(actual: np.ndarray, bounds: Bounds) -> dict[str, float]:
    row: dict[str, float] = {}
    for level, (lower, upper) in bounds.items():
        name = f"{level * 100:g}"
        misses = exceedances(actual, lower, upper)
        row[f"coverage_{name}"] = float(1 - misses.mean())
        row[f"width_{name}"] = float(np.mean(upper - lower))
        row[f"winkler_{name}"] = float(np.mean(winkler_scores(actual, lower, upper, level)))
        row[f"kupiec_p_{name}"] = kupiec_pof(misses, level).p_value
        row[f"christoffersen_p_{name}"] = christoffersen_independence(misses).p_value
    row["mean_pinball"] = mean_pinball(actual, bounds)
    return row


def evaluate(ticker: str, window: str) -> dict:
    """window 'validation' (the 250 sessions before the test span) or 'test' (the test span itself)."""
    prices = pd.read_csv(PROJECT_ROOT / "data" / "snapshots" / f"{ticker}.csv", parse_dates=["Date"])
    first_test_target = int(np.flatnonzero(prices["Date"] >= pd.Timestamp(TEST_START[ticker]))[0])
    first_target = first_test_target - (SESSIONS if window == "validation" else 0)
    ev = np.arange(first_target - 1, first_target - 1 + SESSIONS)  # as-of close indices
    cal = ev - SESSIONS
    started = time.perf_counter()
    intervals, fitted, garch_seconds = methods(prices, cal, ev)
    actual = prices["Close"].to_numpy(dtype="float64")[ev + 1]
    rows = {name: score(actual, bounds) for name, bounds in intervals.items()}
    dates = prices["Date"].dt.date.astype(str).to_numpy()
    return {
        "targets": f"{dates[ev[0] + 1]}..{dates[ev[-1] + 1]} ({SESSIONS})",
        "calibration_targets": f"{dates[cal[0] + 1]}..{dates[cal[-1] + 1]} ({SESSIONS})",
        "seconds": round(time.perf_counter() - started, 3),
        "garch_seconds_per_250_positions": round(garch_seconds, 3),
        "methods": rows,
        "fitted": fitted,
    }


def choose(rows: dict[str, dict[str, float]], tolerance: float = 0.03) -> dict:
    """Lowest Winkler relative to garch-t (80% and 95% summed) among methods whose coverages are within
    `tolerance` of nominal at both levels (all methods if none is)."""

    def relative(name: str) -> float:
        return sum(rows[name][f"winkler_{k}"] / rows["garch-t"][f"winkler_{k}"] for k in ("80", "95"))

    ok = [
        n
        for n, r in rows.items()
        if all(abs(r[f"coverage_{k}"] - lv) <= tolerance for k, lv in (("80", 0.8), ("95", 0.95)))
    ]
    pool = ok or list(rows)
    best = min(pool, key=relative)
    return {"method": best, "relative_winkler_sum": relative(best), "eligible": ok, "rule": choose.__doc__}


def choose_pooled(results: dict[str, dict], tolerance: float = 0.03) -> dict:
    """One method for every ticker: eligible (coverage rule of `choose`) on all of them, lowest mean over tickers
    of the Winkler sum relative to garch-t."""
    names = list(next(iter(results.values()))["methods"])
    per = {t: choose(r["methods"], tolerance) for t, r in results.items()}
    ok = [n for n in names if all(n in c["eligible"] for c in per.values())]

    def relative(name: str) -> float:
        rows = [r["methods"] for r in results.values()]
        return float(
            np.mean([sum(m[name][f"winkler_{k}"] / m["garch-t"][f"winkler_{k}"] for k in ("80", "95")) for m in rows])
        )

    best = min(ok or names, key=relative)
    return {
        "method": best,
        "mean_relative_winkler_sum": relative(best),
        "eligible_everywhere": ok,
        "rule": choose_pooled.__doc__,
    }


def table(title: str, results: dict[str, dict]) -> str:
    header = "| ticker | method | cov80 | cov95 | W80 | W95 | pinball | Kupiec p80 | Kupiec p95 | Chr p80 | Chr p95 |"
    lines = [f"### {title}", "", header, "|" + "---|" * 11]
    for ticker, result in results.items():
        for name, r in result["methods"].items():
            lines.append(
                f"| {ticker} | {name} | {r['coverage_80']:.3f} | {r['coverage_95']:.3f} | {r['winkler_80']:.3f} | "
                f"{r['winkler_95']:.3f} | {r['mean_pinball']:.4f} | {r['kupiec_p_80']:.3f} | {r['kupiec_p_95']:.3f} | "
                f"{r['christoffersen_p_80']:.3f} | {r['christoffersen_p_95']:.3f} |"
            )
        lines.append(
            f"| {ticker} | ({result['targets']}; {result['seconds']:.2f} s for all methods, GARCH "
            f"{result['garch_seconds_per_250_positions']:.2f} s per 250 positions) | | | | | | | | | |"
        )
    return "\n".join(lines)


def main() -> None:
    validation = {ticker: evaluate(ticker, "validation") for ticker in TEST_START}
    choices = {ticker: choose(result["methods"]) for ticker, result in validation.items()}
    pooled = choose_pooled(validation)
    report: dict = {
        "method": __doc__,
        "validation": validation,
        "choice_on_validation": choices,
        "pooled_choice_on_validation": pooled,
    }
    OUT.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(table("Validation sessions (used for choosing)", validation))
    for ticker, choice in choices.items():
        eligible = ", ".join(choice["eligible"]) or "none"
        print(f"\n{ticker}: chosen on validation: {choice['method']} (eligible: {eligible})")

    eligible = ", ".join(pooled["eligible_everywhere"]) or "none"
    print(f"\nOne method for both, chosen on validation: {pooled['method']} (eligible on both: {eligible})")
    test = {ticker: evaluate(ticker, "test") for ticker in TEST_START}
    report["test_report_only_not_used_for_choosing"] = test
    OUT.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print("\n" + table("Test sessions (report only, not used for choosing)", test))


if __name__ == "__main__":
    main()
