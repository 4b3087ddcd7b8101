"""What a run prepares while its own Prefect API starts: only until the API answers, and never at the cost of an
error (the flow meets it, and reports it, itself)."""

from __future__ import annotations

from pathlib import Path

from flows import environment
from pipeline.common.settings import Settings


def settings_in(home: Path) -> Settings:
    return Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def test_an_api_already_answering_leaves_everything_to_the_flow(tmp_path):
    environment.while_the_api_starts(settings_in(tmp_path), api_ready=lambda: True)
    assert not (tmp_path / "mlflow.db").exists()


def test_while_the_api_is_not_up_the_mlflow_store_is_made(tmp_path):
    answers = iter([False, True])  # up once the store is made: GX and TensorFlow are left to the flow
    environment.while_the_api_starts(settings_in(tmp_path), api_ready=lambda: next(answers))
    assert (tmp_path / "mlflow.db").stat().st_size > 0


def test_a_store_that_cannot_be_made_is_left_for_the_flow_to_report(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    settings = Settings(home=tmp_path, mlflow_tracking_uri=f"sqlite:///{blocked / 'mlflow.db'}")
    answers = iter([False, True])
    environment.while_the_api_starts(settings, api_ready=lambda: next(answers))  # no exception
    assert not (tmp_path / "mlflow.db").exists()


def test_a_tracking_server_is_left_to_the_flow(tmp_path):
    """Nothing to create for a server, and its retries belong to the flow's task: a closed port costs nothing here."""
    from tests.servers import free_port

    settings = Settings(home=tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    answers = iter([False, True])
    environment.while_the_api_starts(settings, api_ready=lambda: next(answers))
    assert not (tmp_path / "mlflow.db").exists()
