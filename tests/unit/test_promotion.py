"""pipeline.evaluation.promotion: the typed verdict over the evidence rule (pipeline.evaluation.evidence.judge, whose
every branch tests/unit/test_evidence.py covers), and the run description that shows every figure the rule used."""

from __future__ import annotations

import numpy as np

from pipeline.common import codec
from pipeline.common.outcome import Decision
from pipeline.evaluation.evidence import PromotionPolicy, gather_evidence
from pipeline.evaluation.promotion import CHOSEN_INTERVALS, OWN_INTERVALS, decide, describe, interval_serving

POLICY = PromotionPolicy(min_relative_gain=0.002, promotion_alpha=0.10)


def evidence_for(challenger_noise: float, champion_noise: float, n: int = 250, seed: int = 3):
    rng = np.random.default_rng(seed)
    actual = 100 + np.cumsum(rng.normal(0, 1, n))
    naive = np.concatenate([[actual[0]], actual[:-1]])
    challenger = actual + rng.normal(0, challenger_noise, n)
    champion = actual + rng.normal(0, champion_noise, n)
    return gather_evidence(actual, challenger, champion, naive, blocks=5)


def test_a_clearly_better_challenger_is_promoted_with_every_figure_in_the_reason():
    verdict = decide(evidence_for(0.3, 1.0), POLICY)
    assert verdict.decision is Decision.promoted and verdict.promote
    assert all(check.passed for check in verdict.checks)
    for figure in ("gain over champion", "DM p-value", "won 5 of 5 blocks", "U2"):
        assert figure in verdict.reason


def test_a_worse_challenger_is_kept_naming_the_first_failed_test():
    verdict = decide(evidence_for(1.0, 0.3), POLICY)
    assert verdict.decision is Decision.kept and not verdict.promote
    assert verdict.reason.startswith("gain over champion -")


def test_an_identical_challenger_never_promotes():
    evidence = evidence_for(0.5, 0.5)
    same = gather_evidence(
        np.arange(250.0) + 100, np.arange(250.0) + 100.5, np.arange(250.0) + 100.5, np.arange(250.0) + 99, blocks=5
    )
    assert decide(same, PromotionPolicy(0.0)).decision is Decision.kept
    assert decide(evidence, POLICY).decision in (Decision.kept, Decision.promoted)


def test_the_verdict_and_the_description_carry_every_figure():
    evidence = evidence_for(0.3, 1.0)
    verdict = decide(evidence, POLICY)
    record = codec.dump(verdict)
    assert record["decision"] == "promoted" and record["min_relative_gain"] == 0.002
    assert [c["name"] for c in record["checks"]] == ["relative_gain", "dm_pvalue", "blocks_won", "u2"]
    text = describe("MSFT", verdict, evidence, "v1 (naive)")
    first = text.splitlines()[0]
    assert first.startswith("**Promoted**: the challenger replaces v1 (naive) as MSFT's champion: ")
    assert "| relative_gain |" in text and "| dm_pvalue |" in text and "| blocks_won |" in text and "| u2 |" in text
    assert f"{evidence.challenger_rmse:.4f}" in text and f"{evidence.naive_rmse:.4f}" in text
    assert "250 test sessions in 5 blocks" in text
    kept = describe("MSFT", decide(evidence_for(1.0, 0.3), POLICY), evidence, "v3 (lstm)")
    assert kept.startswith("**Kept** v3 (lstm) as MSFT's champion: gain over champion")


def test_a_promoted_challenger_whose_intervals_score_worse_serves_the_chosen_methods():
    chosen = {"winkler_80": 10.0, "winkler_95": 20.0}
    worse = interval_serving({"winkler_80": 10.5, "winkler_95": 20.6}, chosen, "HAR")
    assert worse.source == CHOSEN_INTERVALS and worse.reason.startswith("HAR: ") and "4.0% worse" in worse.reason
    better = interval_serving({"winkler_80": 9.0, "winkler_95": 21.0}, chosen, "HAR")  # (0.9 + 1.05) / 2 < 1
    assert better.source == OWN_INTERVALS and "2.5% better" in better.reason
    assert interval_serving(dict(chosen), chosen).source == OWN_INTERVALS, "a tie keeps the challenger's own"
    assert interval_serving({"winkler_80": 99.0, "winkler_95": 99.0}, None).source == OWN_INTERVALS
    assert interval_serving({"winkler_80": 99.0}, chosen).source == OWN_INTERVALS, "half the figures decide nothing"
    assert interval_serving({"winkler_80": float("nan"), "winkler_95": 1.0}, chosen).source == OWN_INTERVALS


def test_a_promotion_says_whose_intervals_serve_and_why_and_a_kept_run_does_not():
    promoted = decide(evidence_for(0.3, 1.0), POLICY)
    serving = interval_serving(
        {"winkler_80": 11.0, "winkler_95": 22.0}, {"winkler_80": 10.0, "winkler_95": 20.0}, "HAR"
    )
    text = describe("MSFT", promoted, evidence_for(0.3, 1.0), "v1", serving=serving)
    assert "Served intervals: HAR: the challenger's own intervals scored 10.0% worse" in text
    kept = decide(evidence_for(1.0, 0.3), POLICY)
    assert "Served intervals" not in describe("MSFT", kept, evidence_for(1.0, 0.3), "v1", serving=serving)
