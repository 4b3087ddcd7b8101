"""Every command finds the same state from any working directory, however STOCKPIPE_HOME is spelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def stockpipe(*args: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STOCKPIPE_", "MLFLOW_", "PREFECT_"))}
    env.update(env_vars, PYTHONPATH=str(PROJECT_ROOT), COLUMNS="300")
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "spelled, lands_in",
    [("state", "work/state"), ("./state", "work/state"), ("~/stockpipe", "user/stockpipe"), (None, "work/.stockpipe")],
)
def test_state_lands_where_home_says_outside_the_project(tmp_path, spelled, lands_in):
    work, user = tmp_path / "work", tmp_path / "user"
    work.mkdir()
    user.mkdir()
    settings = {"HOME": str(user), **({"STOCKPIPE_HOME": spelled} if spelled else {})}
    # `predict` opens the tracking store before it finds no champion: the store's place is what is checked.
    result = stockpipe("predict", "MSFT", cwd=work, **settings)
    assert result.returncode == 1 and "no champion yet" in result.stderr, result.stderr[-2000:]
    assert (tmp_path / lands_in / "mlflow.db").is_file()
    assert not (PROJECT_ROOT / "state").exists() and not (PROJECT_ROOT / "user").exists()
    assert not list(work.glob("mlflow.db")) and not (work / "mlruns").exists(), "nothing beside the state directory"
    status = stockpipe("status", "--json", cwd=work, **settings)
    assert status.returncode == 0 and json.loads(status.stdout) == [], status.stderr[-2000:]
