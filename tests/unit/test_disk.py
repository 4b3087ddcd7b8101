"""pipeline.common.disk: the pre-flight's free-space check and its message, a full disk recognised however a library
reports it, and MLflow's traceback of it kept out of the run log (and nothing else)."""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections import namedtuple
from pathlib import Path

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from pipeline.common.disk import (
    MB,
    DiskFull,
    DiskFullTracebacks,
    DiskSpaceLow,
    as_disk_full,
    check_free_space,
    disk_full_cause,
    human_bytes,
)
from pipeline.common.settings import DEFAULT_MIN_FREE_MB, Settings
from pipeline.failures import failure_family, failure_reason
from pipeline.registry.connection import TrackingUnavailable, tracking_errors
from tests.support import migrated_tracking_store

Usage = namedtuple("Usage", "total used free")


def free(size: int):
    return lambda folder: Usage(10 * size, 9 * size, size)


# -- the pre-flight ---------------------------------------------------------------------------------


def test_enough_free_space_passes_and_says_how_much():
    assert check_free_space(Path("/srv/home"), 50, usage=free(51 * MB)) == 51 * MB
    assert check_free_space(Path("/srv/home"), 50, usage=free(50 * MB)) == 50 * MB


def test_too_little_names_the_folder_what_is_free_what_is_needed_and_the_setting():
    with pytest.raises(DiskSpaceLow) as raised:
        check_free_space(Path("/srv/stockpipe"), 50, usage=free(12 * MB + 300 * 1024))
    message = str(raised.value)
    assert message == (
        "low disk space under /srv/stockpipe: 12.3 MB free, a ticker-day needs 50.0 MB (STOCKPIPE_MIN_FREE_MB=50); "
        "nothing was written: free some space there, or lower STOCKPIPE_MIN_FREE_MB"
    )
    assert "\n" not in message
    assert failure_family(raised.value) == "DiskSpaceLow"
    assert failure_reason(raised.value, run_open=False).startswith("DiskSpaceLow: low disk space under /srv/stockpipe")


def test_zero_turns_the_check_off():
    assert check_free_space(Path("/srv/home"), 0, usage=free(0)) == 0


def test_a_home_not_created_yet_is_measured_where_it_will_be(tmp_path):
    """A fresh home's folders come later: its nearest existing parent is on the same filesystem."""
    assert check_free_space(tmp_path / "not" / "yet", 0) > 0
    with pytest.raises(DiskSpaceLow, match=str(tmp_path / "not" / "yet")):
        check_free_space(tmp_path / "not" / "yet", 2**40)


def test_sizes_read_in_binary_units():
    assert [human_bytes(n) for n in (0, 1023, 1536, 50 * MB, 3 * 2**30, 5 * 2**50)] == [
        "0 bytes",
        "1023 bytes",
        "1.5 KB",
        "50.0 MB",
        "3.0 GB",
        "5120.0 TB",
    ]


def test_the_need_is_one_setting_read_at_the_edge(monkeypatch):
    from flows.daily import daily_context

    assert Settings(_env_file=None).min_free_mb == DEFAULT_MIN_FREE_MB == 50
    monkeypatch.setenv("STOCKPIPE_MIN_FREE_MB", "5")
    settings = Settings(_env_file=None)
    assert settings.min_free_mb == 5
    assert daily_context(settings).min_free_mb == 5
    assert daily_context(settings).home == settings.home
    monkeypatch.setenv("STOCKPIPE_MIN_FREE_MB", "-1")
    with pytest.raises(ValueError, match="min_free_mb"):
        Settings(_env_file=None)


# -- a disk that fills mid-run ----------------------------------------------------------------------


def sqlite_full() -> Exception:
    """What MLflow raises on SQLite's SQLITE_FULL: SQLAlchemy's error (the sqlite3 one as its cause and `orig`)
    inside an MlflowException that says "temporarily unavailable"."""
    orig = sqlite3.OperationalError("database or disk is full")
    wrapped = sqlalchemy.exc.OperationalError("INSERT INTO tags ...", {}, orig)
    wrapped.__cause__ = orig
    error = MlflowException(message=str(wrapped), error_code=TEMPORARILY_UNAVAILABLE)
    error.__cause__ = wrapped
    return error


@pytest.mark.parametrize(
    "error, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "[Errno 28] No space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "[Errno 122] Disk quota exceeded"),
        # pyarrow's OSError carries no errno, only the text.
        (OSError("Error writing bytes to file. Detail: [errno 28] No space left on device"), None),
        (sqlite3.OperationalError("database or disk is full"), "database or disk is full"),
        (sqlite_full(), "database or disk is full"),
    ],
)
def test_a_full_disk_is_recognised_however_it_is_reported(error, cause):
    found = disk_full_cause(error)
    assert found == (cause or str(error))
    outer = RuntimeError("recording failed")
    outer.__context__ = error
    assert disk_full_cause(outer) == found


@pytest.mark.parametrize(
    "error",
    [
        sqlite3.OperationalError("database is locked"),
        PermissionError(errno.EACCES, "Permission denied"),
        OSError(errno.EIO, "Input/output error"),
        ValueError("disk is full of cats"),
        # A tracking server's own answer is not this machine's disk: only typed errors count.
        MlflowException("INTERNAL_ERROR: database or disk is full"),
    ],
)
def test_other_errors_are_not_a_full_disk(error):
    assert disk_full_cause(error) is None
    assert as_disk_full(error, Path("/srv/home")) is None


def test_a_full_disk_becomes_one_line_naming_the_folder():
    full = as_disk_full(sqlite_full(), Path("/srv/home"), "tracking MSFT")
    assert str(full) == "disk full under /srv/home: database or disk is full while tracking MSFT"
    assert failure_family(full) == "DiskFull"
    # One that names its folder already stays as it is; one that could not name it gets the home.
    assert as_disk_full(full, Path("/elsewhere")) is full
    unnamed = DiskFull(None, "[Errno 28] No space left on device", "tracking MSFT")
    assert str(unnamed) == "disk full: [Errno 28] No space left on device while tracking MSFT"
    assert str(as_disk_full(unnamed, Path("/srv/home"))) == (
        "disk full under /srv/home: [Errno 28] No space left on device while tracking MSFT"
    )


def test_tracking_errors_tell_a_full_disk_from_a_lost_server():
    """MLflow reports SQLITE_FULL as TEMPORARILY_UNAVAILABLE; retried as a lost server it would fail three times."""
    with pytest.raises(DiskFull) as raised, tracking_errors("sqlite:////srv/home/mlflow.db", "tracking MSFT"):
        raise sqlite_full()
    assert str(raised.value) == "disk full under /srv/home: database or disk is full while tracking MSFT"
    assert not isinstance(raised.value, TrackingUnavailable)
    with pytest.raises(DiskFull, match=r"^disk full: \[Errno 28\]"), tracking_errors("http://mlflow:5000", "x"):
        raise OSError(errno.ENOSPC, "No space left on device")
    # Nested: the inner translation stands.
    with (
        pytest.raises(DiskFull) as nested,
        tracking_errors("sqlite:////other/mlflow.db", "outer"),
        tracking_errors("sqlite:////srv/home/mlflow.db", "inner"),
    ):
        raise sqlite_full()
    assert str(nested.value) == "disk full under /srv/home: database or disk is full while inner"
    assert nested.value.__cause__ is not nested.value


class Recorded(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mlflow_sql_log():
    """MLflow's SQL-session logger with the run log's filters installed (flows.daily does it at the edge), and a
    handler on it to see what gets through (MLflow's loggers do not propagate to the root)."""
    from flows.daily import quiet_third_party_logs

    logger = logging.getLogger("mlflow.store.db.utils")
    before = list(logger.filters)
    quiet_third_party_logs()
    quiet_third_party_logs()  # idempotent: one filter, however often a task calls it
    assert sum(isinstance(f, DiskFullTracebacks) for f in logger.filters) == 1
    handler = Recorded()
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.filters[:] = before


def full_database(tmp_path: Path):
    """A real MLflow SQLite store that cannot grow by one page: SQLite answers SQLITE_FULL, as on a full disk."""
    from sqlalchemy import event

    from pipeline.registry.tracking import Tracker

    tracker = Tracker.connect(migrated_tracking_store(tmp_path / "mlflow.db"), "stockpipe-test", tmp_path / "art")
    run_id = tracker.start_run("MSFT full", {"ticker": "MSFT"})
    engine = tracker.client._tracking_client.store.engine
    pages = sqlite3.connect(tmp_path / "mlflow.db").execute("PRAGMA page_count").fetchone()[0]
    event.listen(engine, "connect", lambda connection, _: connection.execute(f"PRAGMA max_page_count = {pages}"))
    engine.dispose()
    return tracker, run_id


def test_mlflows_traceback_of_a_full_disk_stays_out_of_the_log(tmp_path, mlflow_sql_log):
    tracker, run_id = full_database(tmp_path)
    with pytest.raises(DiskFull) as raised, tracking_errors(tracker.tracking_uri, "tracking MSFT"):
        tracker.client.set_tag(run_id, "big", "x" * 20_000)
    assert str(raised.value) == f"disk full under {tmp_path}: database or disk is full while tracking MSFT"
    assert mlflow_sql_log.records == [], "MLflow's traceback of the full disk was logged"
    # Without the filter, MLflow logs it (this is the logger it uses): the filter is what keeps it out.
    logger = logging.getLogger("mlflow.store.db.utils")
    ours = [f for f in logger.filters if isinstance(f, DiskFullTracebacks)]
    for installed in ours:
        logger.removeFilter(installed)
    with pytest.raises(DiskFull), tracking_errors(tracker.tracking_uri, "tracking MSFT"):
        tracker.client.set_tag(run_id, "bigger", "x" * 20_000)
    assert [type(r.exc_info[1]) for r in mlflow_sql_log.records if r.exc_info] == [sqlalchemy.exc.OperationalError]


def test_other_errors_keep_their_tracebacks(mlflow_sql_log):
    logger = logging.getLogger("mlflow.store.db.utils")
    locked = sqlalchemy.exc.OperationalError("UPDATE runs ...", {}, sqlite3.OperationalError("database is locked"))
    for error in (locked, ValueError("a bug")):
        try:
            raise error
        except Exception:
            logger.exception("SQLAlchemy database error. The following exception is caught.")
    logger.error("no exception at all")
    assert [r.exc_info[1] if r.exc_info else None for r in mlflow_sql_log.records] == [locked, error, None]


def test_a_task_that_failed_on_a_full_disk_logs_one_line(mlflow_sql_log):
    """Prefect logs a failed task run with its traceback; for a full disk (translated or not) the line is enough."""
    from flows.daily import ExpectedFailureTracebacks

    def record_of(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, "failed", (), (type(error), error, None)
        )

    for error in (sqlite_full(), DiskFull(Path("/srv/home"), "database or disk is full"), DiskSpaceLow("low")):
        record = record_of(error)
        assert ExpectedFailureTracebacks().filter(record) and record.exc_info is None
    other = record_of(RuntimeError("a bug"))
    assert ExpectedFailureTracebacks().filter(other) and other.exc_info is not None
