"""A state home moved or renamed as a folder (`mv .stockpipe elsewhere`): its champion still forecasts, the same
forecast, and the next run works there, with its files under the new place and nothing written at the old one."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from flows.daily import daily_pipeline
from pipeline.common import codec
from pipeline.common.outcome import Decision
from pipeline.data.store import PriceStore
from pipeline.registry.tracking import Tracker
from pipeline.serving import forecast_next
from tests.support import MSFT_LAST_SESSION, clean_env, stockpipe

pytestmark = pytest.mark.integration


def cli(home, *args: str):
    """The CLI on `home` with the test's other STOCKPIPE_* settings, as a separate process."""
    settings = {k: v for k, v in os.environ.items() if k.startswith("STOCKPIPE_")}
    return stockpipe(*args, cwd=home.parent, env=clean_env(**{**settings, "STOCKPIPE_HOME": str(home)}))


def served(settings) -> dict:
    """What `stockpipe predict MSFT --json` prints, computed the way it does, in this process."""
    tracker = Tracker.from_settings(settings)
    champion = tracker.champion("MSFT")
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
    model = tracker.load(champion, "MSFT")
    forecast = forecast_next(
        "MSFT", model, history, champion.version, champion.serves_chosen_intervals, settings.exchange("MSFT")
    )
    return json.loads(json.dumps(codec.dump(forecast)))


def test_a_moved_home_serves_its_champion_and_runs_on(settings, tmp_path):
    first = daily_pipeline(tickers=["MSFT"], as_of=MSFT_LAST_SESSION, return_state=True).result()[0]
    assert first.decision in (Decision.promoted, Decision.kept), first.reason
    before = served(settings)

    old, new = settings.home, tmp_path / "moved" / "home renamed"
    new.parent.mkdir()
    shutil.move(old, new)
    predicted = cli(new, "predict", "MSFT", "--json")
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert json.loads(predicted.stdout) == before, "the same champion serves the same forecast"
    assert f"home moved from {old} to {new}: " in predicted.stderr
    assert "artifact location(s) re-pointed" in predicted.stderr

    ran = cli(new, "run", "--tickers", "MSFT", "--as-of", str(MSFT_LAST_SESSION), "--force")
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "home moved" not in ran.stdout + ran.stderr, "re-pointed once"
    assert not old.exists(), "nothing is written where the home used to be"
    tracker = Tracker.connect(f"sqlite:///{new / 'mlflow.db'}", settings.experiment_name, new / "artifacts")
    (newest,) = tracker.runs("MSFT", max_results=1)
    assert newest.info.run_id != first.run_id
    assert newest.info.artifact_uri.startswith((new / "artifacts").as_uri() + "/")
    assert tracker.client.list_artifacts(newest.info.run_id), "the run's files are under the moved home"
