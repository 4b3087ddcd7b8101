"""Log a naive and a tiny LSTM champion with today's code (main at 2553a4c) and keep their MLflow model folders,
recorded digests and one forecast as test fixtures."""
import json, shutil, sys, tempfile
from pathlib import Path
sys.path.insert(0, "/work/main")
import mlflow.artifacts, mlflow.pyfunc
from tests.support import bundled, tiny_config, migrated_tracking_store, plant_lstm_champion
from pipeline.registry.tracking import Tracker
from pipeline.registry.baseline import ensure_baseline
from pipeline.models.forecasters import to_model_input

out = Path("/work/main/tests/data/logged_models")
shutil.rmtree(out, ignore_errors=True); out.mkdir(parents=True)
tmp = Path(tempfile.mkdtemp())
uri = migrated_tracking_store(tmp / "mlflow.db")
tracker = Tracker.connect(uri, "stockpipe", artifact_root=tmp / "artifacts")
history = bundled("MSFT")
config = tiny_config()
for ticker, make in (("NAIVEFIX", lambda t: ensure_baseline(tracker, t, history, {})),
                     ("LSTMFIX", lambda t: plant_lstm_champion(tracker, t, history, config, 0.01))):
    make(ticker)
    champion = tracker.champion(ticker)
    kind = champion.kind
    dest = out / kind
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=champion.model_uri, dst_path=str(tmp / kind), tracking_uri=uri))
    shutil.copytree(local, dest)
    model = mlflow.pyfunc.load_model(str(dest))
    example = to_model_input(history.tail(300))
    forecast = model.predict(example)
    (dest.parent / f"{kind}.expected.json").write_text(json.dumps({
        "manifest": champion.manifest,
        "input_tail_sessions": 300,
        "input_last_date": str(history["Date"].iloc[-1].date()),
        "forecast": json.loads(forecast.tail(5).to_json(orient="records", date_format="iso", double_precision=15)),
    }, indent=2, sort_keys=True) + "\n")
    print(kind, dest, sorted(p.name for p in dest.rglob("*")))
