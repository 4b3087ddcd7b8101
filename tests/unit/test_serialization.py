"""pipeline.common.codec on JSON the code before it wrote: every stored kind loads, and writes back unchanged (fields
added since then follow, as null).

tests/data/old_json holds files written before the codec replaced the hand-written to_dict/from_dict methods: the
last_run.json and decision.json of a real ticker-day (a promotion) and of a failure, a decision on non-finite evidence
(nulls), a cache carrying an undefined U2 (NaN), `predict --json` output with and without intervals, and an LSTM
spec.json with tracked intervals; tests/data/logged_models holds the specs of the fixture champions.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from pipeline.common import codec
from pipeline.common.outcome import Decision, TickerOutcome
from pipeline.evaluation.evidence import Evidence, judge
from pipeline.evaluation.promotion import Verdict, describe
from pipeline.models.forecasters import LSTM, LstmForecaster, NaiveForecaster
from pipeline.registry import journal
from pipeline.serving import Forecast

DATA = Path(__file__).resolve().parents[1] / "data"
OLD = DATA / "old_json"


@pytest.mark.parametrize("name", ["last_run.json", "last_run_failed.json", "last_run_nan.json"])
def test_an_old_last_run_json_loads_and_is_written_back_unchanged(tmp_path, name):
    (tmp_path / "old" / "MSFT").mkdir(parents=True)
    shutil.copyfile(OLD / name, tmp_path / "old" / "MSFT" / journal.FILENAME)
    outcome = journal.read(tmp_path / "old", "MSFT")
    assert isinstance(outcome, TickerOutcome) and isinstance(outcome.decision, Decision)
    journal.write(tmp_path / "new", outcome)
    assert_same_plus(journal.path(tmp_path / "new", "MSFT").read_text(), (OLD / name).read_text(), ADDED_TO_OUTCOME)


# Fields added since the old files were written: they read back as absent (None) and are written after.
ADDED_TO_OUTCOME = {
    "served_coverage_80": None,
    "served_coverage_95": None,
    "live_sessions": None,
    "live_u2_60": None,
    "live_coverage_80_60": None,
    "live_coverage_95_60": None,
    "live_kupiec_p_80": None,
    "failure": None,
    "degradation": None,
    "rolled_back": False,
    "alert_note": None,
}
ADDED_TO_FORECAST = {"interval_method": None}


def assert_same_plus(written: str, old: str, added: dict) -> None:
    """`written` holds every key of `old` with its value, in its order, plus exactly `added`."""
    new, before = json.loads(written), json.loads(old)
    assert {k: v for k, v in new.items() if k in before} == before
    assert [k for k in new if k in before] == list(before), "the old fields keep their order"
    assert {k: v for k, v in new.items() if k not in before} == added


def test_the_cache_keeps_an_undefined_figure_as_nan():
    outcome = codec.load(TickerOutcome, json.loads((OLD / "last_run_nan.json").read_text()))
    assert outcome.u2 is not None and math.isnan(outcome.u2) and outcome.model_version is None
    assert outcome.timings == {"fetch": 0.005, "validate": 1.971, "train": 2.494, "evaluate": 0.161, "track": 0.557,
                               "window": 0.012, "calibrate": 0.134, "epoch_steady": 2.287}  # fmt: skip


@pytest.mark.parametrize("name", ["decision.json", "decision_non_finite.json"])
def test_an_old_decision_json_loads_and_is_written_back_unchanged(name):
    text = (OLD / name).read_text()
    record = json.loads(text)
    verdict = codec.load(Verdict, record)
    evidence = codec.load(Evidence, record["evidence"])
    assert verdict.decision in (Decision.promoted, Decision.kept)
    assert (verdict.policy.min_relative_gain, verdict.policy.promotion_alpha) == (0.002, 0.1)
    assert evidence.sessions == record["test_sessions"] and len(evidence.per_block) == evidence.blocks
    written = {**codec.dump(verdict), "evidence": codec.dump(evidence)}
    assert list(written) == [key for key in record if key in written], "the fields keep their order"
    # As MlflowClient.log_dict writes it.
    assert json.dumps({**record, **written}, indent=2, default=str) == text
    assert describe(record["ticker"], verdict, evidence, record["champion_before"]).startswith("**")


def test_null_figures_of_an_old_decision_read_back_as_nan_and_judge_as_before():
    record = json.loads((OLD / "decision_non_finite.json").read_text())
    evidence = codec.load(Evidence, record["evidence"])
    verdict = codec.load(Verdict, record)
    assert math.isnan(evidence.challenger_rmse) and math.isnan(evidence.u2) and math.isnan(evidence.dm_pvalue)
    assert math.isnan(verdict.checks[0].figure) and evidence.per_block[0]["challenger"] is None
    promote, reason, checks = judge(evidence, verdict.policy)
    assert not promote and reason == record["reason"]
    assert [codec.dump(check) for check in checks] == record["checks"]


@pytest.mark.parametrize("name", ["forecast.json", "forecast_short_history.json"])
def test_old_predict_json_loads_and_prints_the_same(name):
    text = (OLD / name).read_text()
    forecast = codec.load(Forecast, json.loads(text))
    # As `stockpipe predict --json` echoes it.
    assert_same_plus(json.dumps(codec.dump(forecast), indent=2) + "\n", text, ADDED_TO_FORECAST)


@pytest.mark.parametrize(
    "spec_file",
    [OLD / "lstm_spec.json", DATA / "logged_models" / "lstm" / "artifacts" / "spec.json"],
    ids=["tracked-intervals", "logged-lstm"],
)
def test_old_lstm_specs_load_and_are_written_back_unchanged(spec_file):
    text = spec_file.read_text()
    spec = json.loads(text)
    assert spec["kind"] == LSTM
    forecaster = LstmForecaster.from_spec(spec, keras_model=None)  # the weights are Keras's own file
    # As pipeline.models.model_files.save writes it.
    assert json.dumps(forecaster.spec(), indent=2, sort_keys=True) == text


def test_the_logged_naive_spec_loads_and_is_written_back_unchanged():
    text = (DATA / "logged_models" / "naive" / "artifacts" / "spec.json").read_text()
    assert json.dumps(NaiveForecaster.from_spec(json.loads(text)).spec(), indent=2, sort_keys=True) == text


def test_a_calibration_stored_without_starting_quantiles_starts_from_its_current_ones():
    spec = json.loads((OLD / "lstm_spec.json").read_text())
    stored = {key: value for key, value in spec["intervals"].items() if key != "calibrated_quantiles"}
    calibration = LstmForecaster.from_spec({**spec, "intervals": stored}, keras_model=None).calibration
    assert calibration is not None
    assert calibration.calibrated_quantiles == calibration.quantiles == tuple(stored["quantiles"])


def test_a_stored_record_that_is_not_one_is_refused_as_a_value_error():
    record = json.loads((OLD / "last_run.json").read_text())
    with pytest.raises(ValueError):
        codec.load(TickerOutcome, {**record, "decision": "maybe"})
    with pytest.raises(ValueError):
        codec.load(Verdict, {**json.loads((OLD / "decision.json").read_text()), "checks": "none"})
