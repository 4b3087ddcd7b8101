"""Disk space under the state home: a pre-flight before a ticker-day writes, and a disk that fills mid-run told apart.

The pre-flight (`check_free_space`) refuses a ticker-day before its first write when the home's filesystem has less
free than `STOCKPIPE_MIN_FREE_MB`, so that a nearly full disk costs one clear line and no half-written run. A disk
that fills anyway, mid-run (another process, a larger model than measured), surfaces from deep inside MLflow,
SQLAlchemy, pyarrow or Keras in many shapes; `disk_full_cause` recognises them all (ENOSPC or EDQUOT from the OS,
SQLite's "database or disk is full") and `as_disk_full` turns them into one `DiskFull` naming the folder.
`DiskFullTracebacks` keeps the tracebacks libraries log on the way out of the run log: the ticker's failure line says
it all. Nothing here touches the disk but `shutil.disk_usage`.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 2**20
SETTING = "STOCKPIPE_MIN_FREE_MB"
# What the OS says when a write finds no room: the disk is full, or the user's quota is.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
_NO_ROOM_TEXT = tuple(os.strerror(code) for code in _NO_ROOM)
# SQLite's SQLITE_FULL, as the sqlite3 module words it.
_SQLITE_FULL = "database or disk is full"


class DiskSpaceLow(RuntimeError):
    """Less free space under the home than a ticker-day needs: refused before anything was written."""


class DiskFull(RuntimeError):
    """The disk filled while the ticker-day wrote (its state, its MLflow rows or files)."""

    def __init__(self, folder: Path | None, cause: str, doing: str | None = None):
        self.folder = folder
        self.cause = cause
        self.doing = doing
        where = f" under {folder}" if folder is not None else ""
        super().__init__(f"disk full{where}: {cause}{f' while {doing}' if doing else ''}")


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KB' (binary units, as the rest of the product counts them)."""
    if size < 1024:
        return f"{int(size)} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        size /= 1024
        if size < 1024 or unit == "TB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def _measured(folder: Path) -> Path:
    """`folder`, or its nearest existing parent (a fresh home's folders come later; they share its filesystem)."""
    current = Path(folder)
    while not current.exists() and current.parent != current:
        current = current.parent
    return current


def check_free_space(folder: Path, min_free_mb: float, usage: Callable[[Path], Any] = shutil.disk_usage) -> int:
    """The free bytes under `folder`; DiskSpaceLow, naming the folder, what is free and what is needed, below
    `min_free_mb` (0 turns the check off)."""
    need = int(min_free_mb * MB)
    free = int(usage(_measured(folder)).free)
    if free < need:
        raise DiskSpaceLow(
            f"low disk space under {folder}: {human_bytes(free)} free, a ticker-day needs {human_bytes(need)} "
            f"({SETTING}={min_free_mb:g}); nothing was written: free some space there, or lower {SETTING}"
        )
    return free


def _links(exc: BaseException) -> list[BaseException]:
    """`exc` and everything in its chain: causes, contexts, and the DB-API error SQLAlchemy keeps as `orig`."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        for nested in (current.__cause__, current.__context__, getattr(current, "orig", None)):
            if isinstance(nested, BaseException):
                pending.append(nested)
    return seen


def disk_full_cause(exc: BaseException) -> str | None:
    """What said the disk is full when `exc` or anything in its chain did (e.g. "[Errno 28] No space left on
    device", "database or disk is full"); None for any other error."""
    for link in _links(exc):
        if isinstance(link, DiskFull):
            return link.cause
        if isinstance(link, OSError) and (link.errno in _NO_ROOM or any(t in str(link) for t in _NO_ROOM_TEXT)):
            return str(link)
        if isinstance(link, sqlite3.Error) and (
            getattr(link, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or _SQLITE_FULL in str(link)
        ):
            return _SQLITE_FULL
    return None


def as_disk_full(exc: BaseException, folder: Path | None, doing: str | None = None) -> DiskFull | None:
    """`exc` as one DiskFull naming `folder` when it says the disk is full; None otherwise. A DiskFull that already
    names its folder is kept as it is."""
    if isinstance(exc, DiskFull) and exc.folder is not None:
        return exc
    cause = disk_full_cause(exc)
    if cause is None:
        return None
    if isinstance(exc, DiskFull) and exc.doing:
        doing = exc.doing
    return DiskFull(folder, cause, doing)


class DiskFullTracebacks(logging.Filter):
    """Drops a library's log record of an error that is a full disk (MLflow logs each failed SQL session with its
    traceback before raising it): the ticker's failure says it in one line. Every other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or disk_full_cause(error) is None
