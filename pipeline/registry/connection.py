"""Reaching the tracking store: opening a client on it, and telling what MLflow raised apart.

Only MLflow's not-found error means "absent", and only a lost connection (or a server that says it cannot serve right
now) means "unreachable": everything else is an answer, and propagates as one, so that a transient failure is retried
instead of being mistaken for "no champion" and a refusal is not retried as if waiting could help.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode

from pipeline.common.disk import as_disk_full
from pipeline.common.redact import masked_uri

# What a server says when it is there but cannot serve right now (a restart, maintenance, an overloaded proxy).
UNAVAILABLE_CODES = ("TEMPORARILY_UNAVAILABLE", "SERVICE_UNDER_MAINTENANCE")


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def is_already_there(exc: BaseException) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)


class TrackingUnavailable(RuntimeError):
    """The tracking server could not be reached (refused, reset, timed out, or 5xx after MLflow's own retries).

    Waiting may help, so the flow retries on this and on nothing else from tracking.
    """


def unreachable_reason(exc: BaseException) -> str | None:
    """A short reason when `exc`, or anything in its chain, says the server could not be reached; None otherwise.

    MLflow re-raises transport errors (refused, reset, timed out, retries exhausted on 5xx answers) as an
    MlflowException that keeps the original in its chain; a server that answered "unavailable" is reported with
    that error code.
    """
    import requests

    transport = (
        ConnectionError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.RetryError,
        requests.exceptions.ChunkedEncodingError,
    )
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, transport):
            return _transport_reason(link)
    for link in chain:
        if isinstance(link, MlflowException) and link.error_code in UNAVAILABLE_CODES:
            return link.error_code
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    links: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in links):
        links.append(current)
        current = current.__cause__ or current.__context__
    return links


def _transport_reason(exc: BaseException) -> str:
    """The innermost OS-level cause (e.g. 'Connection refused'), else the exception's type."""
    import requests

    if isinstance(exc, requests.exceptions.RetryError):
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        return f"retries exhausted ({type(reason).__name__ if reason else 'RetryError'})"
    seen: set[int] = set()
    current: Any = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        nested = current.args[0] if getattr(current, "args", None) else None
        current = getattr(nested, "reason", None) or current.__cause__ or current.__context__
    return type(exc).__name__


@contextmanager
def tracking_errors(tracking_uri: str, doing: str) -> Iterator[None]:
    """Turn a lost tracking server, however MLflow reports it, into one clear TrackingUnavailable, and a full disk
    (MLflow reports SQLite's as "temporarily unavailable") into one DiskFull, which waiting would not cure."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as exc:
        full = as_disk_full(exc, local_folder(tracking_uri), doing)
        if full is exc:
            raise
        if full is not None:
            raise full from exc
        reason = unreachable_reason(exc)
        if reason is None:
            raise
        raise TrackingUnavailable(
            f"MLflow tracking server {masked_uri(tracking_uri)} unreachable while {doing}: {reason}"
        ) from exc


def local_folder(tracking_uri: str) -> Path | None:
    """The folder a local SQLite store lives in (the home, by default); None for a tracking server."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).parent


def _sqlite_init_lock(tracking_uri: str) -> AbstractContextManager[Any]:
    """Two processes creating one fresh SQLite store race through MLflow's schema migrations; take turns.

    A tracking server serialises this itself, so only a local SQLite file needs the lock.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(database) + ".init.lock")


def open_client(tracking_uri: str) -> MlflowClient:
    with _sqlite_init_lock(tracking_uri):
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        # Opening the store is what migrates a fresh SQLite schema: do it while holding the lock.
        client.search_experiments(max_results=1)
    return client
