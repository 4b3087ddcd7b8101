"""The served forecasts' live record: the forecast log (one row per target session and version, replaced atomically)
and the pure scoring of matured forecasts, on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.data.forecast_log import ForecastLog, ForecastLogUnreadable, ServedForecast
from pipeline.evaluation.evidence import dm_one_sided
from pipeline.evaluation.live_record import LiveRecord, degradation, describe_live, live_record, score_matured

DAYS = pd.bdate_range("2017-01-02", periods=8)


def served(i: int, point: float, last: float, half: float, version: str = "1") -> ServedForecast:
    return ServedForecast(
        DAYS[i].date(),
        DAYS[i + 1].date(),
        version,
        last,
        point,
        point - half,
        point + half,
        point - 2 * half,
        point + 2 * half,
        "test",
    )


@pytest.fixture
def prices() -> pd.DataFrame:
    return pd.DataFrame({"Date": DAYS, "Close": [10.0, 11.0, 10.5, 12.0, 12.5, 12.0, 13.0, 14.0]})


def test_matured_forecasts_are_scored_against_the_stored_close_and_the_naive_forecast(prices):
    forecasts = pd.DataFrame(
        [vars(served(0, 10.2, 10.0, 0.5)), vars(served(1, 11.1, 11.0, 0.25)), vars(served(7 - 1, 13.5, 13.0, 1.0))]
    )
    scored = score_matured(forecasts, prices.head(3))  # day 7's close is not stored yet: not matured
    assert list(scored["target"].dt.date) == [DAYS[1].date(), DAYS[2].date()]
    np.testing.assert_allclose(scored["error"], [11.0 - 10.2, 10.5 - 11.1])
    np.testing.assert_allclose(scored["naive_error"], [11.0 - 10.0, 10.5 - 11.0])
    # 11.0 in [9.7, 10.7]? no; in [9.2, 11.2]? yes. 10.5 in [10.85, 11.35]? no; in [10.6, 11.6]? no.
    assert list(scored["inside_80"]) == [False, False] and list(scored["inside_95"]) == [True, False]


def test_the_record_is_per_version_over_its_last_sessions_with_kupiec_on_the_last_60(prices):
    rows = [served(i, prices["Close"][i], prices["Close"][i], 0.6) for i in range(7)]
    rows[3] = served(3, 12.0, 12.0, 0.6, version="2")  # another version's forecast for that session
    scored = score_matured(pd.DataFrame([vars(r) for r in rows]), prices)
    record = live_record(scored, "1")
    own = [i for i in range(7) if i != 3]
    errors = np.array([prices["Close"][i + 1] - prices["Close"][i] for i in own])
    assert record.sessions == 6 and record.rmse_20 == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert record.u2_20 == pytest.approx(1.0), "a naive point forecast ties the naive forecast"
    inside = np.abs(errors) <= 0.6
    assert record.coverage_80_60 == pytest.approx(inside.mean())
    # Kupiec's LR by hand: x misses in n sessions against p = 0.2.
    n, x = len(own), int((~inside).sum())
    p, q = 0.2, x / n
    lr = -2 * ((n - x) * math.log(1 - p) + x * math.log(p) - (n - x) * math.log(1 - q) - x * math.log(q))
    assert record.kupiec_p_80 == pytest.approx(stats.chi2.sf(lr, 1))
    assert live_record(scored, "2").sessions == 1
    empty = live_record(scored, "9")
    assert empty.sessions == 0 and empty.u2_60 is None and empty.metrics() == {"live_sessions": 0.0}


def test_recording_a_forecast_again_replaces_it_and_other_versions_are_kept(tmp_path):
    log = ForecastLog(tmp_path / "forecasts")
    assert log.read("MSFT").empty
    log.record("MSFT", served(0, 10.0, 10.0, 0.5), "t1")
    log.record("MSFT", served(1, 11.0, 11.0, 0.5), "t1")
    log.record("MSFT", served(0, 10.3, 10.0, 0.5), "t2")  # a re-run of the same day
    log.record("MSFT", served(0, 9.0, 10.0, 0.5, version="2"), "t2")
    frame = log.read("MSFT")
    assert len(frame) == 3
    first = frame.loc[(frame["target"] == DAYS[1]) & (frame["model_version"] == "1")]
    assert first["point"].tolist() == [10.3] and first["recorded_at"].tolist() == ["t2"]
    assert sorted(p.name for p in (tmp_path / "forecasts").iterdir()) == ["MSFT.parquet"], "no temporary file left"


def test_a_missing_bound_is_kept_as_a_miss(tmp_path, prices):
    log = ForecastLog(tmp_path)
    forecast = served(0, 10.0, 10.0, 2.0)
    log.record("MSFT", ServedForecast(**{**vars(forecast), "lower_95": None, "upper_95": None}), "t")
    scored = score_matured(log.read("MSFT"), prices)
    assert bool(scored["inside_80"][0]) and not bool(scored["inside_95"][0])


def test_a_torn_forecast_file_is_named_with_what_to_do(tmp_path):
    log = ForecastLog(tmp_path)
    log.path("MSFT").write_bytes(b"PAR1 torn")
    with pytest.raises(ForecastLogUnreadable, match="move it aside"):
        log.read("MSFT")


def record(sessions: int = 60, coverage: float = 0.8, kupiec: float = 0.5, u2: float = 1.0, dm: float = 0.5):
    return LiveRecord("2", sessions, 1.0, 1.0, u2, u2, coverage, coverage, 0.95, 0.95, kupiec, dm)


def test_degradation_needs_a_full_window_then_fires_on_coverage_or_on_harm():
    assert not degradation(record(sessions=59, kupiec=1e-9)).degraded, "59 sessions judge nothing"
    assert not degradation(record()).degraded
    coverage = degradation(record(coverage=0.6, kupiec=0.004))
    assert coverage.degraded and "live 80% coverage 60.0%" in coverage.reason and "Kupiec p 0.0040" in coverage.reason
    assert not degradation(record(coverage=0.7, kupiec=0.02)).degraded, "Kupiec at 1%, not 5%"
    assert not degradation(record(coverage=0.95, kupiec=0.002)).degraded, "intervals too wide are no fallback"
    harm = degradation(record(u2=1.08, dm=0.01))
    assert harm.degraded and "live U2 1.080" in harm.reason
    assert not degradation(record(u2=1.08, dm=0.2)).degraded, "worse by chance is not harm"
    assert not degradation(record(u2=0.97, dm=0.01)).degraded


def test_the_record_carries_the_diebold_mariano_p_value_of_naive_against_the_served_point(prices):
    rows = [served(i, prices["Close"][i] * 0.9, prices["Close"][i], 0.6) for i in range(7)]
    scored = score_matured(pd.DataFrame([vars(r) for r in rows]), prices)
    got = live_record(scored, "1")
    actual = scored["actual"].to_numpy()
    expected = dm_one_sided(actual, scored["last_close"].to_numpy(), scored["point"].to_numpy())[1]
    assert got.dm_p_naive_better_60 == pytest.approx(expected) and got.u2_60 > 1


def test_the_description_shows_both_windows_the_tests_and_the_rules_verdict():
    text = describe_live(LiveRecord("2", 45, 1.25, 1.5, 0.99, 1.01, 0.75, 0.8, 0.95, None, 0.31, 0.6))
    assert "(v2), on the 45 forecast(s)" in text
    assert "| last 20 | 20 | 1.2500 | 0.990 | 0.750 | 0.950 |" in text
    assert "| last 60 | 45 | 1.5000 | 1.010 | 0.800 | - |" in text, "a figure not known yet is a dash"
    assert "Kupiec p of the 80% coverage (last 60): 0.3100" in text
    assert "45 of 60 sessions scored: too few to judge" in text
    fell = describe_live(record(coverage=0.6, kupiec=0.004), "v2 degraded (low coverage); fell back to v1")
    assert "Degradation rule: **v2 degraded (low coverage); fell back to v1**." in fell
    assert "none yet" in describe_live(LiveRecord("1", 0, *[None] * 9))
