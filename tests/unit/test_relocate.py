"""pipeline.registry.relocate on a real MLflow SQLite store: a moved home's artifact locations follow it in every
column MLflow keeps one, exact prefixes only, once; a move that left the artifacts behind is refused, unchanged."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.common.settings import Settings
from pipeline.registry.relocate import HomeMoved, Repointed, repoint_artifacts
from tests.support import migrated_tracking_store

EXPERIMENT = "stockpipe"


def make_home(home: Path, *, uri_spelling: bool = True) -> dict[str, str]:
    """A home as stockpipe leaves one: the experiment's artifacts under home/artifacts, a run with a file, a logged
    model, a registered version of it, and a param that merely mentions the home (history, never rewritten)."""
    uri = migrated_tracking_store(home / "mlflow.db")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    root = home / "artifacts"
    experiment = client.create_experiment(EXPERIMENT, artifact_location=root.as_uri() if uri_spelling else str(root))
    run = client.create_run(experiment).info.run_id
    client.log_text(run, "kept with the home", "note.txt")
    client.log_param(run, "csv_dir", str(root))
    model = client.create_logged_model(experiment, name="model", source_run_id=run)
    client.create_registered_model("stockpipe-MSFT")
    client.create_model_version("stockpipe-MSFT", source=model.artifact_location, run_id=run, model_id=model.model_id)
    return {"run": run, "model": model.model_id}


def text_values(database: Path) -> list[str]:
    """Every text value in the store, to search for a path left behind."""
    with sqlite3.connect(database) as connection:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values = []
        for table in tables:
            for column in [r[1] for r in connection.execute(f"PRAGMA table_info({table})")]:
                rows = connection.execute(f"SELECT {column} FROM {table} WHERE typeof({column}) = 'text'")
                values += [r[0] for r in rows]
    return values


def moved(tmp_path: Path, **kwargs) -> tuple[Path, Path, dict[str, str]]:
    old, new = tmp_path / "old home", tmp_path / "new_home"  # a space and a LIKE wildcard in the paths
    ids = make_home(old, **kwargs)
    shutil.move(old, new)
    return old, new, ids


@pytest.mark.parametrize("uri_spelling", [True, False], ids=["file-uri", "plain-path"])
def test_a_moved_home_is_repointed_in_every_location_and_its_files_are_found(tmp_path, uri_spelling):
    old, new, ids = moved(tmp_path, uri_spelling=uri_spelling)
    result = repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT)

    # The experiment, the run, the logged model, the version's source and its storage location.
    assert result == Repointed(old / "artifacts", new / "artifacts", 5)
    assert result.message == f"home moved from {old} to {new}: 5 artifact location(s) re-pointed"
    left = [v for v in text_values(new / "mlflow.db") if str(old) in v or old.as_uri() in v]
    assert left == [str(old / "artifacts")], "only the param that mentions the old home keeps it"

    uri = f"sqlite:///{new / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    new_root = (new / "artifacts").as_uri() if uri_spelling else str(new / "artifacts")
    assert experiment.artifact_location == new_root
    assert client.get_run(ids["run"]).info.artifact_uri.startswith(new_root + "/")
    note = client.download_artifacts(ids["run"], "note.txt", str(tmp_path))
    assert Path(note).read_text() == "kept with the home"
    version = client.get_model_version("stockpipe-MSFT", "1")
    assert version.source == client.get_logged_model(ids["model"]).artifact_location
    assert version.source.startswith(new_root + "/models/")
    assert client.get_experiment("0").artifact_location == migrated_default_location(new), "other rows untouched"


def migrated_default_location(home: Path) -> str:
    with sqlite3.connect(home / "mlflow.db") as connection:
        return connection.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()[0]


def test_repointing_is_idempotent_and_costs_nothing_when_nothing_moved(tmp_path):
    _, new, _ = moved(tmp_path)
    assert repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT) is not None
    before = text_values(new / "mlflow.db")
    assert repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT) is None
    assert text_values(new / "mlflow.db") == before


def test_only_exact_prefixes_of_the_old_root_are_rewritten(tmp_path):
    old, new, _ = moved(tmp_path)
    lookalikes = [
        (old / "artifacts-elsewhere" / "m").as_uri(),  # same characters, another folder
        str(old / "artifactsX" / "m"),
        "s3://bucket" + str(old / "artifacts"),
    ]
    with sqlite3.connect(new / "mlflow.db") as connection:
        for n, location in enumerate(lookalikes):
            connection.execute(
                "INSERT INTO logged_models (model_id, experiment_id, name, artifact_location, creation_timestamp_ms, "
                "last_updated_timestamp_ms, status, lifecycle_stage) VALUES (?, 1, 'x', ?, 0, 0, 1, 'active')",
                (f"m-lookalike-{n}", location),
            )
    assert repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT).locations == 5
    with sqlite3.connect(new / "mlflow.db") as connection:
        kept = connection.execute(
            "SELECT artifact_location FROM logged_models WHERE model_id LIKE 'm-lookalike-%' ORDER BY model_id"
        ).fetchall()
    assert [k[0] for k in kept] == lookalikes


def test_a_move_that_left_the_artifacts_behind_is_refused_and_changes_nothing(tmp_path):
    old = tmp_path / "old"
    make_home(old)
    new = tmp_path / "new"
    new.mkdir()
    shutil.copy(old / "mlflow.db", new / "mlflow.db")  # the store alone: its files are still at the old place
    before = text_values(new / "mlflow.db")
    with pytest.raises(HomeMoved) as refused:
        repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT)
    message = str(refused.value)
    assert f"home moved from {old} to {new}" in message and "\n" not in message
    assert message.endswith(f"mv {old / 'artifacts'} {new / 'artifacts'}")
    assert text_values(new / "mlflow.db") == before, "nothing rewritten"

    (new / "artifacts").mkdir()  # an empty folder in the way is named in the command
    with pytest.raises(HomeMoved, match=r"rmdir .*/new/artifacts && mv "):
        repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT)

    shutil.rmtree(new / "artifacts")
    shutil.copytree(old / "artifacts", new / "artifacts")  # a copied home: both hold the files, the copy is its own
    assert repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT).locations == 5


def test_nothing_to_do_without_a_store_an_experiment_or_a_local_root(tmp_path):
    missing = tmp_path / "fresh" / "mlflow.db"
    assert repoint_artifacts(missing, tmp_path / "fresh" / "artifacts", EXPERIMENT) is None
    assert not missing.exists(), "a fresh home gets no store from a check"

    migrated_tracking_store(tmp_path / "empty" / "mlflow.db")
    assert repoint_artifacts(tmp_path / "empty" / "mlflow.db", tmp_path / "empty" / "artifacts", EXPERIMENT) is None

    _, new, _ = moved(tmp_path)
    with sqlite3.connect(new / "mlflow.db") as connection:
        connection.execute(
            "UPDATE experiments SET artifact_location = 's3://bucket/artifacts' WHERE name = ?", (EXPERIMENT,)
        )
    assert repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT) is None


def test_two_processes_starting_at_once_repoint_once(tmp_path):
    _, new, _ = moved(tmp_path)
    start = threading.Barrier(4)
    results: list[Repointed | None] = []

    def starting() -> None:
        start.wait()
        results.append(repoint_artifacts(new / "mlflow.db", new / "artifacts", EXPERIMENT))

    threads = [threading.Thread(target=starting) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4
    assert [r.locations for r in results if r is not None] == [5], "one re-points, the others find it done"


def test_the_edge_repoints_only_the_homes_own_store(tmp_path, monkeypatch):
    from flows.environment import home_in_place

    monkeypatch.chdir(tmp_path)  # no .env of the caller's
    for key in [k for k in os.environ if k.startswith("STOCKPIPE_")]:
        monkeypatch.delenv(key)
    old, new, _ = moved(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # a server: it owns where its files are
    home_in_place(Settings(home=new))
    assert any(v.startswith((old / "artifacts").as_uri()) for v in text_values(new / "mlflow.db"))

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    home_in_place(Settings(home=new))
    assert not any(v.startswith((old / "artifacts").as_uri()) for v in text_values(new / "mlflow.db"))
