"""pipeline.promotion: the champion/challenger decision and its report."""

from __future__ import annotations

import math

import pytest

from pipeline import promotion
from pipeline.promotion import KEPT, PROMOTED, Decision, decide, decision_report, report_markdown


def test_constants():
    assert promotion.PROMOTED == "promoted"
    assert promotion.KEPT == "kept"
    assert promotion.FAILED == "failed"
    assert promotion.SKIPPED == "skipped"
    assert promotion.CHAMPION_ALIAS == "champion"
    assert promotion.PREVIOUS_ALIAS == "previous"
    assert promotion.COMPARED_METRIC == "test_rmse"


def test_lower_rmse_promotes():
    decision = decide(0.9, 1.0)
    assert decision.verdict == PROMOTED and decision.promote
    assert decision.challenger_rmse == 0.9 and decision.champion_rmse == 1.0 and decision.margin == 0.0
    assert "lower by 10.00%" in decision.reason


def test_slightly_lower_rmse_promotes_without_margin():
    assert decide(0.999999, 1.0).promote


def test_a_tie_never_promotes():
    decision = decide(1.2345, 1.2345)
    assert decision.verdict == KEPT and not decision.promote
    assert "not lower" in decision.reason


def test_tie_with_margin_never_promotes():
    assert decide(2.0, 2.0, margin=0.05).verdict == KEPT


def test_higher_rmse_keeps():
    decision = decide(1.1, 1.0)
    assert decision.verdict == KEPT
    assert "not lower" in decision.reason


@pytest.mark.parametrize(
    "challenger, verdict",
    [(0.97, KEPT), (0.951, KEPT), (0.94, PROMOTED), (0.5, PROMOTED), (1.01, KEPT)],
)
def test_margin_is_a_relative_improvement(challenger, verdict):
    decision = decide(challenger, 1.0, margin=0.05)
    assert decision.verdict == verdict
    assert decision.margin == 0.05
    if challenger < 1.0 and verdict == KEPT:
        assert "margin" in decision.reason


def test_margin_is_relative_to_the_champion_not_absolute():
    # 3% better at any scale keeps with a 5% margin; 6% better promotes.
    assert decide(97.0, 100.0, margin=0.05).verdict == KEPT
    assert decide(94.0, 100.0, margin=0.05).verdict == PROMOTED
    assert decide(0.0097, 0.01, margin=0.05).verdict == KEPT
    assert decide(0.0094, 0.01, margin=0.05).verdict == PROMOTED


def test_an_improvement_of_exactly_the_margin_promotes():
    # Exactly representable: (4 - 3) / 4 == 0.25.
    assert decide(3.0, 4.0, margin=0.25).verdict == PROMOTED
    assert decide(3.0000001, 4.0, margin=0.25).verdict == KEPT


@pytest.mark.parametrize(
    "challenger, champion",
    [(math.nan, 1.0), (1.0, math.nan), (math.inf, 1.0), (0.5, math.inf), (-math.inf, 1.0), (math.nan, math.nan)],
)
def test_non_finite_rmse_keeps(challenger, champion):
    decision = decide(challenger, champion)
    assert decision.verdict == KEPT
    assert "non-finite" in decision.reason


def test_decision_is_serializable():
    decision = decide(0.8, 1.0, margin=0.1)
    assert decision.to_dict() == {
        "verdict": PROMOTED,
        "reason": decision.reason,
        "challenger_rmse": 0.8,
        "champion_rmse": 1.0,
        "margin": 0.1,
    }
    assert Decision(**decision.to_dict()) == decision


def test_decision_report_and_markdown():
    decision = decide(0.8, 1.0)
    report = decision_report(
        decision,
        ticker="MSFT",
        challenger="v3",
        champion="v2",
        naive_rmse=0.9,
        test_days=["2017-01-03", "2017-01-04", "2017-01-05"],
        data_digest="abc",
        dm_stat=-2.5,
        dm_pvalue=0.01,
    )
    assert report["verdict"] == PROMOTED
    assert report["u2"] == pytest.approx(0.8 / 0.9)
    assert report["compared_metric"] == "test_rmse"
    assert (report["test_days"], report["test_start"], report["test_end"]) == (3, "2017-01-03", "2017-01-05")
    text = report_markdown(report)
    assert text.startswith("# MSFT: promoted")
    assert "| challenger (v3) | 0.8000 |" in text
    assert "statistic -2.500, p-value 0.010" in text

    empty = decision_report(
        decide(math.nan, 1.0), ticker="GSPC", challenger="v1", champion="v0", naive_rmse=0.0, test_days=[],
        data_digest="d",
    )
    assert empty["u2"] is None and empty["test_start"] is None
    assert "| challenger (v1) | n/a |" in report_markdown(empty)
