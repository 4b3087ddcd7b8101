"""What users do with a state directory after a run: forecast with the champion (with intervals), roll a promotion
back, warm-start from the champion; and a champion whose files were replaced, refused everywhere before it can run."""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows.daily import daily_pipeline
from pipeline.common.outcome import Decision
from pipeline.common.symbols import registered_model_name
from pipeline.data.store import PriceStore
from pipeline.evaluation.promotion import CHAMPION_ALIAS, CHOSEN_INTERVALS, OWN_INTERVALS, PREVIOUS_ALIAS
from pipeline.models.conformal import METHOD
from pipeline.registry.tracking import SERVED_INTERVALS_TAG, Tracker
from tests.support import MSFT_LAST_SESSION, clean_env, plant_lstm_champion, stockpipe

pytestmark = pytest.mark.integration

AS_OF = MSFT_LAST_SESSION


def cli(settings, *args: str):
    """The CLI on the test's state directory (the same STOCKPIPE_* settings), as a separate process."""
    env = clean_env(**{k: v for k, v in os.environ.items() if k.startswith("STOCKPIPE_")})
    return stockpipe(*args, cwd=settings.home.parent, env=env)


def tracker_for(settings) -> Tracker:
    return Tracker.connect(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)


def test_predict_serves_intervals_and_rollback_swaps_back(settings, monkeypatch):
    daily_pipeline(tickers=["MSFT"], as_of=AS_OF, return_state=True)
    tracker = tracker_for(settings)
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
    weak = plant_lstm_champion(tracker, "MSFT", history, settings.training, return_bias=0.03)
    promoted = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, force=True, return_state=True).result()[0]
    assert promoted.decision is Decision.promoted, promoted.reason

    lstm = json.loads(cli(settings, "predict", "MSFT", "--json").stdout)
    assert lstm["model_version"] == promoted.model_version and lstm["model_kind"] == "lstm"
    assert lstm["as_of"] == "2017-11-10" and lstm["forecast_date"] == "2017-11-13"  # Friday -> Monday
    assert lstm["last_close"] == pytest.approx(83.87)
    assert lstm["lower_95"] < lstm["lower_80"] < lstm["forecast_close"] < lstm["upper_80"] < lstm["upper_95"]
    # The tiny challenger's own intervals may score worse than the validation-chosen method's: then it serves those.
    crowned = tracker.client.get_model_version(registered_model_name("MSFT"), promoted.model_version)
    if crowned.tags.get(SERVED_INTERVALS_TAG) == CHOSEN_INTERVALS:
        assert lstm["interval_method"].endswith("validation sessions"), "predict names how the bounds were made"
    else:
        assert lstm["interval_method"] == METHOD, "predict names how the bounds were made"
    assert crowned.tags.get(SERVED_INTERVALS_TAG) in (CHOSEN_INTERVALS, OWN_INTERVALS)

    # Loaded the README's way, by its models:/ URI, MLflow writes a bookkeeping file into the champion's folder in
    # the local artifact store; the champion's fingerprint must still hold for predict.
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri())
    mlflow.pyfunc.load_model(f"models:/{registered_model_name('MSFT')}@{CHAMPION_ALIAS}")
    assert list(settings.artifacts_dir.rglob("registered_model_meta")), "MLflow no longer writes it; drop the allowance"
    again = json.loads(cli(settings, "predict", "MSFT", "--json").stdout)
    assert again["forecast_close"] == lstm["forecast_close"]

    rolled = cli(settings, "rollback", "MSFT", "--reason", "forecasts drifted")
    assert rolled.returncode == 0, rolled.stderr
    client = MlflowClient(tracking_uri=settings.tracking_uri())
    name = registered_model_name("MSFT")
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == weak
    assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == promoted.model_version
    assert client.get_model_version(name, promoted.model_version).tags["rolled_back"] == "forecasts drifted"

    restored = json.loads(cli(settings, "predict", "MSFT", "--json").stdout)
    assert restored["model_version"] == weak
    assert restored["forecast_close"] == pytest.approx(history["Close"].iloc[-1] * 1.03, rel=1e-4)

    status = {row["ticker"]: row for row in json.loads(cli(settings, "status", "--json").stdout)}
    assert status["MSFT"]["champion_version"] == weak, "status reads the champion from the registry"


def test_rollback_without_a_previous_version_is_refused(settings):
    daily_pipeline(tickers=["GSPC"], as_of=dt.date(2018, 12, 31), return_state=True)
    tracker = tracker_for(settings)
    if tracker.champion("GSPC").version != "1":
        pytest.skip("the tiny challenger was promoted; the baseline-only case needs it kept")
    result = cli(settings, "rollback", "GSPC")
    assert result.returncode == 1 and "no `previous` version" in result.stderr


def test_warm_start_retrains_from_the_champion_and_records_it(settings):
    daily_pipeline(tickers=["MSFT"], as_of=dt.date(2017, 10, 31), return_state=True)
    tracker = tracker_for(settings)
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
    planted = plant_lstm_champion(tracker, "MSFT", history, settings.training, return_bias=0.0)
    warm = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, warm_start=True, return_state=True).result()[0]
    run = MlflowClient(tracking_uri=settings.tracking_uri()).get_run(warm.run_id)
    assert run.data.params["warm_start_from"] == f"v{planted}"
    assert run.data.metrics["epochs_run"] <= settings.training.warm_start_epochs
    assert warm.new_rows == 8


class Payload:
    """What an attacker who can write the artifact store would plant: unpickling it creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def replace_champion_files_with_a_pickle(settings, marker: Path) -> str:
    tracker = tracker_for(settings)
    champion = tracker.champion("MSFT")
    folder = Path(champion.model_uri.removeprefix("file://"))
    for path in folder.rglob("*"):
        if path.is_file():
            path.write_bytes(pickle.dumps(Payload(marker)))
    (folder / "python_model.pkl").write_bytes(pickle.dumps(Payload(marker)))
    mlmodel = folder / "MLmodel"
    mlmodel.write_text(
        "flavors:\n  python_function:\n    loader_module: mlflow.pyfunc.model\n    "
        "python_model: python_model.pkl\n    env: {}\n"
    )
    return champion.version


def test_a_champion_replaced_by_a_pickle_is_refused_by_run_warm_start_and_predict(settings, tmp_path):
    daily_pipeline(tickers=["MSFT"], as_of=dt.date(2017, 10, 31), return_state=True)
    marker = tmp_path / "pwned"
    version = replace_champion_files_with_a_pickle(settings, marker)
    name = f"{registered_model_name('MSFT')} v{version}"

    predicted = cli(settings, "predict", "MSFT")
    assert predicted.returncode == 1 and f"{name}: files differ from the SHA-256 digests" in predicted.stderr
    for warm in (False, True):
        outcome = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, force=True, warm_start=warm, return_state=True).result(
            raise_on_failure=False
        )[0]
        assert outcome.decision is Decision.failed and f"{name}: files differ" in outcome.reason, outcome.reason
    assert tracker_for(settings).champion("MSFT").version == version, "nothing promoted past a refused champion"
    assert not marker.exists(), "the pickle never ran"
