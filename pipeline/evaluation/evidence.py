"""Evidence that a challenger forecasts better than the champion, and the rule that weighs it.

All three models (challenger, champion, naive persistence) are scored on the same consecutive test
sessions: overall RMSE, RMSE per consecutive block (one row per block, a column per model, like the
cross-validation tables of Nixtla's statsforecast and sktime), and a one-sided Diebold-Mariano test
on the squared-error loss differential with the Harvey-Leybourne-Newbold small-sample correction.

For h = 1 the HLN statistic is mean(d) / sqrt(gamma_0 / n) * sqrt((n - 1) / n), gamma_0 the variance of the loss
differential d, with a Student t(n - 1) p-value (scipy); tests/unit/test_evidence.py checks it against a hand
computation.
  - Diebold & Mariano (1995), "Comparing predictive accuracy", JBES 13(3).
  - Harvey, Leybourne & Newbold (1997), "Testing the equality of prediction mean squared errors", IJF 13(2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import pandas as pd
from pydantic import PlainSerializer
from scipy import stats
from sklearn.metrics import root_mean_squared_error

from pipeline.common.codec import Figure

CHALLENGER = "challenger"
CHAMPION = "champion"
NAIVE = "naive"
BLOCK_COLUMNS = ("block", "first", "last", "n")

# Names of the checks, in the order `judge` applies them.
GAIN = "relative_gain"
DM = "dm_pvalue"
BLOCKS = "blocks_won"
U2 = "u2"


def _rmse_or_nan(actual: np.ndarray, forecast: np.ndarray) -> float:
    # scikit-learn refuses non-finite input; here it is evidence that cannot be judged, carried as NaN.
    if not (np.isfinite(actual).all() and np.isfinite(forecast).all()):
        return float("nan")
    return float(root_mean_squared_error(actual, forecast))


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def block_rmse(
    actual: np.ndarray,
    forecasts: Mapping[str, np.ndarray],
    blocks: int,
    dates: Sequence | pd.Index | None = None,
) -> pd.DataFrame:
    """RMSE of each model on consecutive, nearly equal blocks of sessions (np.array_split order).

    One row per block: `block` (1-based), `first` and `last` (dates if given, else positions), `n`,
    then one RMSE column per model, in the order given.
    """
    actual = _vector(actual, "actual")
    n = actual.size
    if not 1 <= blocks <= n:
        raise ValueError(f"cannot split {n} sessions into {blocks} blocks")
    clashes = set(forecasts) & set(BLOCK_COLUMNS)
    if clashes:
        raise ValueError(f"model names {sorted(clashes)} clash with the table's own columns")
    models = {name: _vector(values, name) for name, values in forecasts.items()}
    for name, values in models.items():
        if values.shape != actual.shape:
            raise ValueError(f"{name} has {values.size} forecasts for {n} sessions")
    labels = pd.Index(np.arange(n)) if dates is None else pd.Index(dates)
    if len(labels) != n:
        raise ValueError(f"{len(labels)} dates for {n} sessions")

    rows = []
    for number, positions in enumerate(np.array_split(np.arange(n), blocks), start=1):
        row = {"block": number, "first": labels[positions[0]], "last": labels[positions[-1]], "n": positions.size}
        row.update({name: _rmse_or_nan(actual[positions], values[positions]) for name, values in models.items()})
        rows.append(row)
    return pd.DataFrame(rows, columns=[*BLOCK_COLUMNS, *models])


def dm_one_sided(actual: np.ndarray, challenger: np.ndarray, champion: np.ndarray) -> tuple[float, float]:
    """One-sided DM test with the HLN correction on squared errors, horizon 1.

    H0: the challenger is no more accurate than the champion. A negative statistic and a small
    p-value mean the challenger's squared errors are lower. No evidence, (0.0, 1.0), when the loss
    differential has zero variance (e.g. identical forecasts) or there are fewer than 3 sessions;
    (nan, nan) when any input is not finite.
    """
    actual, challenger, champion = (
        _vector(v, name) for v, name in ((actual, "actual"), (challenger, "challenger"), (champion, "champion"))
    )
    if not actual.shape == challenger.shape == champion.shape:
        raise ValueError("actual, challenger and champion must have the same length")
    if not (np.all(np.isfinite(actual)) and np.all(np.isfinite(challenger)) and np.all(np.isfinite(champion))):
        return float("nan"), float("nan")
    n = actual.size
    if n < 3:
        return 0.0, 1.0
    d = (actual - challenger) ** 2 - (actual - champion) ** 2
    mean = float(np.mean(d))
    # For h = 1 the long-run variance of d is its variance alone (no autocovariances).
    gamma_0 = float(np.mean((d - mean) ** 2))
    if gamma_0 <= 0:
        return 0.0, 1.0
    statistic = mean / math.sqrt(gamma_0 / n) * math.sqrt((n - 1) / n)
    return statistic, float(stats.t.cdf(statistic, df=n - 1))


def _session(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat() if value == value.normalize() else value.isoformat()
    return value


# A cell of a block table: a session stored as an ISO date (a date-time only when not at midnight), others as they are.
BlockCell = Annotated[Any, PlainSerializer(_session)]


@dataclass(frozen=True)
class Evidence:
    """Challenger vs champion vs naive on the same test sessions; `per_block` rows as in `block_rmse`.

    In decision.json through `pipeline.common.codec`: a figure that is not finite is null there.
    """

    challenger_rmse: Figure
    champion_rmse: Figure
    naive_rmse: Figure
    relative_gain: Figure
    u2: Figure
    dm_stat: Figure
    dm_pvalue: Figure
    blocks_won: int
    blocks: int
    sessions: int
    per_block: tuple[dict[Any, BlockCell], ...] = ()

    def block_table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.per_block), columns=[*BLOCK_COLUMNS, CHALLENGER, CHAMPION, NAIVE])


def _ratio(numerator: float, denominator: float) -> float:
    if denominator == 0 or not (math.isfinite(numerator) and math.isfinite(denominator)):
        return float("nan")
    return numerator / denominator


def gather_evidence(
    actual: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    naive: np.ndarray,
    blocks: int,
    dates: Sequence | pd.Index | None = None,
) -> Evidence:
    """Score the three forecasts of the same sessions overall and per block, and run the DM test."""
    actual = _vector(actual, "actual")
    models = {
        CHALLENGER: _vector(challenger, CHALLENGER),
        CHAMPION: _vector(champion, CHAMPION),
        NAIVE: _vector(naive, NAIVE),
    }
    table = block_rmse(actual, models, blocks, dates)
    rmse = {name: _rmse_or_nan(actual, values) for name, values in models.items()}
    dm_stat, dm_pvalue = dm_one_sided(actual, models[CHALLENGER], models[CHAMPION])
    # A tied block is not a win: the challenger has to be strictly better there.
    won = int((table[CHALLENGER] < table[CHAMPION]).sum())
    return Evidence(
        challenger_rmse=rmse[CHALLENGER],
        champion_rmse=rmse[CHAMPION],
        naive_rmse=rmse[NAIVE],
        relative_gain=1 - _ratio(rmse[CHALLENGER], rmse[CHAMPION]),
        u2=_ratio(rmse[CHALLENGER], rmse[NAIVE]),
        dm_stat=dm_stat,
        dm_pvalue=dm_pvalue,
        blocks_won=won,
        blocks=int(blocks),
        sessions=int(actual.size),
        per_block=tuple(table.to_dict("records")),
    )


@dataclass(frozen=True)
class PromotionPolicy:
    min_relative_gain: float
    promotion_alpha: float = 0.10

    def __post_init__(self) -> None:
        if not 0 <= self.min_relative_gain < 1:
            raise ValueError(f"min_relative_gain must lie in [0, 1), got {self.min_relative_gain}")
        if not 0 < self.promotion_alpha <= 1:
            raise ValueError(f"promotion_alpha must lie in (0, 1], got {self.promotion_alpha}")


@dataclass(frozen=True)
class Check:
    """One condition of the promotion rule: the measured figure against its threshold."""

    name: str
    passed: bool
    figure: Figure
    threshold: Figure
    text: str


def _p(value: float) -> str:
    """A p-value or alpha for a sentence: 0.41, 0.10, 0.025, 3.2e-05."""
    if value != 0 and abs(value) < 0.001:
        return f"{value:.1e}"
    text = f"{value:.3f}"
    return text[:-1] if text.endswith("0") else text


def _checks(evidence: Evidence, policy: PromotionPolicy) -> list[Check]:
    gain, need = evidence.relative_gain, policy.min_relative_gain
    # A tie (or worse) never promotes, even with a zero minimum gain.
    gain_ok = gain > 0 and gain >= need
    if gain_ok:
        gain_text = f"gain over champion {gain:.2%} >= required {need:.2%}"
    elif math.isfinite(gain) and gain >= need:
        gain_text = f"gain over champion {gain:.2%} is not positive (a tie never promotes)"
    else:
        gain_text = f"gain over champion {gain:.2%} < required {need:.2%}"

    p, alpha = evidence.dm_pvalue, policy.promotion_alpha
    dm_ok = p < alpha
    dm_text = f"DM p-value {_p(p)} {'<' if dm_ok else '>='} {_p(alpha)}"

    won, blocks = evidence.blocks_won, evidence.blocks
    blocks_ok = 2 * won > blocks
    blocks_text = f"won {won} of {blocks} blocks" + ("" if blocks_ok else " (needs a majority)")

    u2 = evidence.u2
    u2_ok = u2 < 1
    u2_text = f"U2 {u2:.3f} {'<' if u2_ok else '>='} 1"

    return [
        Check(GAIN, bool(gain_ok), float(gain), float(need), gain_text),
        Check(DM, bool(dm_ok), float(p), float(alpha), dm_text),
        Check(BLOCKS, bool(blocks_ok), float(won), blocks / 2, blocks_text),
        Check(U2, bool(u2_ok), float(u2), 1.0, u2_text),
    ]


def judge(evidence: Evidence, policy: PromotionPolicy) -> tuple[bool, str, list[Check]]:
    """Promote only if the challenger beats the champion by enough, significantly, in most blocks, and beats naive.

    Returns (promote, reason, checks). The reason names the first failed check with its figure, or
    on promotion every figure; non-finite evidence never promotes.
    """
    checks = _checks(evidence, policy)
    figures = {
        "challenger_rmse": evidence.challenger_rmse,
        "champion_rmse": evidence.champion_rmse,
        "naive_rmse": evidence.naive_rmse,
        "relative_gain": evidence.relative_gain,
        "u2": evidence.u2,
        "dm_stat": evidence.dm_stat,
        "dm_pvalue": evidence.dm_pvalue,
    }
    not_finite = [f"{name}={value}" for name, value in figures.items() if not math.isfinite(value)]
    if not_finite:
        return False, f"cannot judge non-finite evidence ({', '.join(not_finite)})", checks
    failed = [check for check in checks if not check.passed]
    if failed:
        return False, failed[0].text, checks
    return True, ", ".join(check.text for check in checks), checks
