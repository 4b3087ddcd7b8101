"""Evidence that a challenger forecasts better than the champion, and the rule that weighs it.

All three models (challenger, champion, naive persistence) are scored on the same consecutive test
sessions: overall RMSE, RMSE per consecutive block (one row per block, a column per model, like the
cross-validation tables of Nixtla's statsforecast and sktime), and a one-sided Diebold-Mariano test
on the squared-error loss differential with the Harvey-Leybourne-Newbold small-sample correction.

The test comes from the `dieboldmariano` package (pure Python, no dependencies). Its HLN statistic
for h = 1 is mean(d) / sqrt(gamma_0 / n) * sqrt((n - 1) / n) with a Student t(n - 1) p-value, the
same as `pipeline.evaluation.diebold_mariano` (tests/unit/test_evidence.py checks both against a
hand computation).
  - Diebold & Mariano (1995), "Comparing predictive accuracy", JBES 13(3).
  - Harvey, Leybourne & Newbold (1997), "Testing the equality of prediction mean squared errors", IJF 13(2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from dieboldmariano import NegativeVarianceException, ZeroVarianceException, dm_test

CHALLENGER = "challenger"
CHAMPION = "champion"
NAIVE = "naive"
BLOCK_COLUMNS = ("block", "first", "last", "n")

# Names of the checks, in the order `judge` applies them.
GAIN = "relative_gain"
DM = "dm_pvalue"
BLOCKS = "blocks_won"
U2 = "u2"


def _rmse(actual: np.ndarray, forecast: np.ndarray) -> float:
    return float(np.sqrt(np.mean((actual - forecast) ** 2))) if actual.size else float("nan")


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
        row.update({name: _rmse(actual[positions], values[positions]) for name, values in models.items()})
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
    if actual.size < 3:
        return 0.0, 1.0
    try:
        statistic, p_value = dm_test(
            actual.tolist(), challenger.tolist(), champion.tolist(), h=1, one_sided=True, harvey_correction=True
        )
    except (ZeroVarianceException, NegativeVarianceException):
        return 0.0, 1.0
    return float(statistic), float(min(max(p_value, 0.0), 1.0))


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, pd.Timestamp):
        return value.date().isoformat() if value == value.normalize() else value.isoformat()
    if isinstance(value, np.generic):
        return _finite_or_none(value.item())
    return value


@dataclass(frozen=True)
class Evidence:
    """Challenger vs champion vs naive on the same test sessions; `per_block` rows as in `block_rmse`."""

    challenger_rmse: float
    champion_rmse: float
    naive_rmse: float
    relative_gain: float
    u2: float
    dm_stat: float
    dm_pvalue: float
    blocks_won: int
    blocks: int
    sessions: int
    per_block: tuple[dict, ...] = ()

    def block_table(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.per_block), columns=[*BLOCK_COLUMNS, CHALLENGER, CHAMPION, NAIVE])

    def to_dict(self) -> dict:
        """Plain JSON values: non-finite numbers become None, dates ISO strings."""
        values = asdict(self)
        values["per_block"] = [{key: _finite_or_none(v) for key, v in row.items()} for row in self.per_block]
        return {key: (v if key == "per_block" else _finite_or_none(v)) for key, v in values.items()}


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
    rmse = {name: _rmse(actual, values) for name, values in models.items()}
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
    figure: float
    threshold: float
    text: str

    def to_dict(self) -> dict:
        return {key: _finite_or_none(v) for key, v in asdict(self).items()}


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
