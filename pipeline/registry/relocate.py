"""A state home that was moved or renamed: its MLflow SQLite store re-pointed at the artifacts where the home is now.

MLflow keeps absolute artifact locations in its rows (the experiment's root, each run's and logged model's folder,
each model version's source), so a home moved with `mv` would find its store naming files at the old place. At
start, when the store is the home's own SQLite file, the old root is swapped for the new one in every such column,
in one transaction; nothing else in the home holds an absolute path (Prefect's database, reports, forecasts and the
price store are found through STOCKPIPE_HOME at run time).

Only the stdlib: this runs before MLflow, Prefect or TensorFlow are imported, and costs one read when nothing moved.
"""

from __future__ import annotations

import logging
import shlex
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

# Every column MLflow 3.17 fills with an artifact location (found by searching a real home's store for its path).
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)
# A concurrent start, or a run writing, holds the store's write lock for well under this.
BUSY_SECONDS = 60


class HomeMoved(RuntimeError):
    """The store names artifacts at an old home that still holds them, and the new home has none: re-pointing
    would leave every location naming a folder that is not there."""


@dataclass(frozen=True)
class Repointed:
    old_root: Path
    new_root: Path
    locations: int

    @property
    def message(self) -> str:
        return (
            f"home moved from {self.old_root.parent} to {self.new_root.parent}: "
            f"{self.locations} artifact location(s) re-pointed"
        )


def repoint_artifacts(database: Path, artifact_root: Path, experiment_name: str) -> Repointed | None:
    """Re-point the store at `database` to `artifact_root` when its experiment `experiment_name` keeps its artifacts
    under another folder of the same name (the same home, moved); None when there is nothing to do (no store yet, no
    experiment yet, already there, or a location that is not a local folder). Idempotent, and safe for two processes
    at once: the second waits for the first's transaction, then finds nothing left to do.

    Raises HomeMoved, changing nothing, when the old folder still holds artifacts and the new one does not."""
    database, new_root = Path(database), Path(artifact_root)
    if not database.is_file():
        return None  # a fresh home: opening a missing file would create it
    connection = sqlite3.connect(f"{database.as_uri()}?mode=rw", uri=True, timeout=BUSY_SECONDS, isolation_level=None)
    try:
        if _followable(_stored_root(connection, experiment_name), new_root) is None:
            return None  # the one read every start pays
        connection.execute("BEGIN IMMEDIATE")  # the write lock first, then read again: a concurrent start did it
        try:
            stored = _stored_root(connection, experiment_name)
            old_root = _followable(stored, new_root)
            if stored is None or old_root is None:
                connection.execute("ROLLBACK")
                return None
            _refuse_a_missing_folder(old_root, new_root)
            locations = _rewrite(connection, _spellings(stored, old_root, new_root))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()
    moved = Repointed(old_root, new_root, locations)
    log.info("%s", moved.message)
    return moved


def _stored_root(connection: sqlite3.Connection, experiment_name: str) -> str | None:
    try:
        row = connection.execute(
            "SELECT artifact_location FROM experiments WHERE name = ?", (experiment_name,)
        ).fetchone()
    except sqlite3.OperationalError:  # a store MLflow has not created its schema in yet
        return None
    return row[0] if row and row[0] else None


def _followable(stored: str | None, new_root: Path) -> Path | None:
    """The old root `stored` names when it is another local folder of the new root's name; None otherwise (the same
    folder, a server's or a cloud location, a relative path, a folder that was never a home's artifact root)."""
    if stored is None:
        return None
    if stored.startswith("file:"):
        parsed = urlparse(stored)
        if parsed.netloc not in ("", "localhost"):
            return None
        path = unquote(parsed.path)
    elif "://" in stored:
        return None
    else:
        path = stored
    old_root = Path(path.rstrip("/") or "/")
    if not old_root.is_absolute() or old_root == new_root or old_root.name != new_root.name:
        return None
    return old_root


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _refuse_a_missing_folder(old_root: Path, new_root: Path) -> None:
    if _holds_files(old_root) and not _holds_files(new_root):
        old, new = shlex.quote(str(old_root)), shlex.quote(str(new_root))
        # An empty folder in the way would take the old one inside it.
        command = f"rmdir {new} && mv {old} {new}" if new_root.is_dir() else f"mv {old} {new}"
        raise HomeMoved(
            f"home moved from {old_root.parent} to {new_root.parent}, but its artifacts are still in {old_root} and "
            f"{new_root} has none; nothing was changed. Move them with: {command}"
        )


def _spellings(stored: str, old_root: Path, new_root: Path) -> dict[str, str]:
    """Old prefix -> new prefix, in each spelling MLflow may have kept: the experiment's own, the file URI and the
    plain path (a URI location stays a URI, a path stays a path)."""
    new_uri = new_root.as_uri()
    stored = stored.rstrip("/")
    pairs = {
        stored: new_uri if stored.startswith("file:") else str(new_root),
        old_root.as_uri(): new_uri,
        str(old_root): str(new_root),
    }
    return {old: new for old, new in pairs.items() if old != new}


def _rewrite(connection: sqlite3.Connection, spellings: dict[str, str]) -> int:
    """Each location that is an old prefix, or starts with one and a slash, with the new prefix instead; the count
    of values changed. Compared as text with substr, never LIKE (whose `_` and `%` are wildcards, its case folded)."""
    changed = 0
    for table, column in LOCATION_COLUMNS:
        if not _has_column(connection, table, column):
            continue
        for old, new in spellings.items():
            cursor = connection.execute(
                # Table and column names from LOCATION_COLUMNS only; every value is a parameter.
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (new, len(old) + 1, old, len(old) + 1, old + "/"),
            )
            changed += cursor.rowcount
    return changed


def _has_column(connection: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in connection.execute(f"PRAGMA table_info({table})"))
