"""The live record through a real replay: `stockpipe replay` over 61 sessions of two copies of the bundled MSFT
history, one with every daily move three times larger from 2011-12-01. Both start with the same planted champion
v2 (the last close as its forecast, 80%/95% Gaussian intervals on a slow 250-session volatility that does not keep up
with a sudden change). On the shifted copy its live coverage falls, the degradation rule fires within 60 sessions of
the shift and `champion` falls back to v1, recorded; on the untouched copy nothing fires over the same span. A
rollback then undoes the fallback."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common.settings import Settings, TrainingConfig
from pipeline.common.symbols import registered_model_name
from pipeline.common.trading_calendar import sessions_between
from pipeline.models.conformal import IntervalCalibration
from pipeline.registry.live_runs import LIVE_RECORD_ROLE
from pipeline.registry.tracking import DEGRADED_TAG, Tracker
from tests.support import SNAPSHOTS, TINY_TRAINING, migrated_tracking_store, plant_lstm_champion, stockpipe

# 61 sessions of two tickers, each training a tiny challenger: about 10 minutes on 2 cores.
pytestmark = [pytest.mark.system, pytest.mark.timeout(2400)]

CALM, SHIFTED = "MSFT", "MSFT-X3"
SHIFT_FROM, START, END = dt.date(2011, 12, 1), dt.date(2011, 10, 26), dt.date(2012, 1, 24)
# No challenger can gain 99% over the champion: the champion under test serves throughout; and as none is promoted,
# a shorter test span scores them faster without changing what serves.
NO_PROMOTION = {
    "STOCKPIPE_MIN_RELATIVE_GAIN": "0.99",
    "STOCKPIPE_TRAINING__EVAL_SESSIONS": "60",
    "STOCKPIPE_TRAINING__EVAL_BLOCKS": "3",
}


def moves_times(history: pd.DataFrame, start: dt.date, factor: float) -> pd.DataFrame:
    """From `start` on, each close-to-close log move, and each bar's log distance from its close, times `factor`."""
    later = (pd.to_datetime(history["Date"]) >= pd.Timestamp(start)).to_numpy()
    log_close = np.log(history["Close"].to_numpy("float64"))
    moves = np.diff(log_close, prepend=log_close[0]) * np.where(later, factor, 1.0)
    close = np.exp(log_close[0] + np.cumsum(moves))
    out = history.copy()
    for column in ("Open", "High", "Low"):
        out[column] = close * np.exp(
            (np.log(history[column].to_numpy("float64")) - log_close) * np.where(later, factor, 1)
        )
    out["Close"] = close
    return out


def plant(tracker: Tracker, ticker: str, history: pd.DataFrame) -> None:
    gaussian = (1.2816, 1.96)
    slow = IntervalCalibration((0.8, 0.95), gaussian, gaussian, ewma_lambda=0.999, ewma_window=250, method="slow")
    config = TrainingConfig(window=20, units=8, epochs=1, history_years=3)
    plant_lstm_champion(tracker, ticker, history, config, return_bias=0.0, shrinkage=0.0, calibration=slow)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> tuple[Path, Tracker, dict[str, dict]]:
    root = tmp_path_factory.mktemp("live-fallback")
    exports, home = root / "exports", root / "state"
    exports.mkdir()
    history = pd.read_csv(SNAPSHOTS / "MSFT.csv", parse_dates=["Date"])
    history.to_csv(exports / f"{CALM}.csv", index=False)
    moves_times(history, SHIFT_FROM, 3.0).to_csv(exports / f"{SHIFTED}.csv", index=False)
    before = history[history["Date"] < pd.Timestamp(START)]
    migrated_tracking_store(home / "mlflow.db")
    tracker = Tracker.from_settings(Settings(home=home))
    for ticker in (CALM, SHIFTED):
        plant(tracker, ticker, before)
    env = {**TINY_TRAINING, **NO_PROMOTION, "STOCKPIPE_HOME": str(home), "STOCKPIPE_CSV_ROOT": str(root)}
    args = ["--start", str(START), "--end", str(END), "--tickers", CALM, SHIFTED, "--source", "csv"]
    result = stockpipe("replay", *args, "--csv-dir", str(exports), cwd=root, timeout=1800, **env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    status = json.loads(stockpipe("status", "--json", cwd=root, **env).stdout)
    return root, tracker, {row["ticker"]: row for row in status}


def live_history(tracker: Tracker, ticker: str, version: str, metric: str) -> dict[int, float]:
    (run,) = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.ticker = '{ticker}' and tags.role = '{LIVE_RECORD_ROLE}' and tags.model_version = '{version}'",
    )
    return {m.step: m.value for m in tracker.client.get_metric_history(run.info.run_id, metric)}


def test_the_shifted_history_drags_live_coverage_down_and_the_champion_falls_back_within_60_sessions(replayed):
    root, tracker, status = replayed
    coverage = live_history(tracker, SHIFTED, "2", "live_coverage_80_60")
    calm = live_history(tracker, CALM, "2", "live_coverage_80_60")
    # Scored before the first shifted close: the forecasts for the sessions after START and before SHIFT_FROM.
    before_shift = len(sessions_between(START, SHIFT_FROM)) - 2
    assert coverage[before_shift] == pytest.approx(calm[before_shift]), "the same record until the shift"
    assert max(coverage) == 60, "v2's record ends where the rule could first judge it, on a full window of 60"
    assert coverage[60] <= 0.65 < calm[60] and coverage[60] < coverage[before_shift] - 0.1, (coverage, calm)

    (fell,) = tracker.runs(SHIFTED, filters="tags.fallback LIKE '%fell back to v1%'")
    day = dt.date.fromisoformat(fell.data.tags["day"])
    assert len(sessions_between(SHIFT_FROM, day)) <= 60, f"fired on {day}"
    assert "live 80% coverage" in fell.data.tags["fallback"] and "Kupiec p" in fell.data.tags["fallback"]
    assert "fell back to v1" in fell.data.tags["mlflow.note.content"], "the run's description says what happened"
    model = tracker.client.get_registered_model(registered_model_name(SHIFTED))
    assert {k: str(v) for k, v in model.aliases.items()} == {"champion": "1", "previous": "2"}
    fallback = model.tags["last_fallback"]
    assert fallback.startswith("v2 -> v1") and f"(the daily run on data to {day})" in fallback, fallback
    assert "live 80% coverage" in tracker.versions(SHIFTED)[1].tags[DEGRADED_TAG]
    assert status[SHIFTED]["champion_version"] == "1", "the next day's challenger is judged against what serves now"

    undone = stockpipe("rollback", SHIFTED, "--reason", "checked by hand", cwd=root, STOCKPIPE_HOME=str(root / "state"))
    assert undone.returncode == 0, undone.stderr[-2000:]
    assert tracker.champion(SHIFTED).version == "2"


def test_the_same_span_without_the_shift_keeps_its_champion(replayed):
    _, tracker, status = replayed
    coverage = live_history(tracker, CALM, "2", "live_coverage_80_60")
    last = max(coverage)
    assert last == len(sessions_between(START, END)) - 1, "every session's forecast scored the next day"
    assert coverage[last] > 0.65, coverage
    assert not tracker.runs(CALM, filters="tags.fallback LIKE '%'")
    assert DEGRADED_TAG not in tracker.versions(CALM)[1].tags and tracker.champion(CALM).version == "2"
    assert status[CALM]["champion_version"] == "2" and status[CALM]["live_sessions"] == last
