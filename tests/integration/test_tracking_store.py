"""Opening one fresh MLflow SQLite store from several processes at once: the schema migration they race on."""

from __future__ import annotations

import subprocess
import sys

from tests.support import PROJECT_ROOT


def test_processes_opening_one_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    """Opening the store migrates a fresh schema; without the init lock, a second process trips over the first's
    half-done migration (seen: "alembic_version ... 0 found")."""
    script = (
        "import sys, pathlib; from pipeline.registry.tracking import Tracker; "
        "Tracker.connect(f'sqlite:///{sys.argv[1]}', 'stockpipe', pathlib.Path(sys.argv[1]).parent / 'a')"
    )
    database = tmp_path / "mlflow.db"
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(database)],
            cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in openers]
    assert [p.returncode for p in openers] == [0, 0, 0], "\n".join(o[-2000:] for o in outputs)
