"""Retention of a ticker's lost runs: past the newest `keep_lost_runs`, or older than `retention_days`, a run whose
challenger lost gives up its files (plot, reports, examples) and its logged model's files (model.keras, examples).

Only files go. The run keeps its params, metrics, tags and description (what the MLflow UI compares across runs), and
its logged model stays an entity, tagged with why its files are gone, so the run's link to it still resolves and says
so. Never touched: a run or logged model any registered version points to (everything of every version that served),
the baseline and live-record runs (other roles), a run that is not FINISHED (a RUNNING one may still be recording; a
FAILED one is evidence of what went wrong).

MLflow's own garbage collection (`mlflow gc`) purges runs and logged models in the `deleted` lifecycle stage, with
their metadata: retention deletes no run, so gc has nothing of its to collect; it remains the tool for runs someone
deletes in the UI (`mlflow gc --backend-store-uri sqlite:///<home>/mlflow.db`). Files are deleted through MLflow's
artifact repository for their location (the local file store, or a server's proxied artifacts), and only once the
location is shown to lie inside the configured artifact root and to name its own run or model: a location edited to
point elsewhere is refused and logged, never followed.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow.entities import LoggedModel, Run

from pipeline.common.files import tree_size
from pipeline.common.outcome import Decision
from pipeline.common.settings import Settings
from pipeline.registry.recording import DAILY, DECISION, ROLE, TICKER
from pipeline.registry.tracking import Tracker

log = logging.getLogger(__name__)

# On a run and on its logged model once their files are gone: when, and why.
FILES_PRUNED_TAG = "stockpipe.files_pruned"
FINISHED = "FINISHED"
DEFAULT_KEEP_LOST_RUNS: int = Settings.model_fields["keep_lost_runs"].default
DEFAULT_RETENTION_DAYS: float = Settings.model_fields["retention_days"].default


class Refused(ValueError):
    """A selected run whose files must stay after all."""


class OutsideArtifactRoot(Refused):
    """A location that is not inside the configured artifact root, or does not name what it belongs to."""


class Registered(Refused):
    """A run or logged model a registered version points to."""


@dataclass(frozen=True)
class RunRetention:
    """How many lost runs of a ticker keep their files, and for how long at most."""

    keep_lost_runs: int = DEFAULT_KEEP_LOST_RUNS
    retention_days: float = DEFAULT_RETENTION_DAYS

    @classmethod
    def from_settings(cls, settings: Settings) -> RunRetention:
        return cls(settings.keep_lost_runs, settings.retention_days)

    @property
    def policy(self) -> str:
        return f"keep {self.keep_lost_runs} / {self.retention_days:g} days"


@dataclass(frozen=True)
class RunFacts:
    """What selection needs of a run: its id, status, tags and start."""

    run_id: str
    status: str
    tags: Mapping[str, str]
    start_time_ms: int

    @classmethod
    def of(cls, run: Run) -> RunFacts:
        return cls(run.info.run_id, run.info.status, dict(run.data.tags), int(run.info.start_time or 0))

    @property
    def lost(self) -> bool:
        """A finished daily run whose challenger was kept out (not promoted, so never registered)."""
        tags = self.tags
        return self.status == FINISHED and tags.get(ROLE) == DAILY and tags.get(DECISION) == Decision.kept.value

    def age_days(self, now: dt.datetime) -> float:
        return (now.timestamp() * 1000 - self.start_time_ms) / 86_400_000


@dataclass(frozen=True)
class Selected:
    run_id: str
    why: str


def select_for_pruning(
    runs: Iterable[RunFacts], registered: set[str], retention: RunRetention, now: dt.datetime
) -> list[Selected]:
    """The lost runs whose files go, newest first: beyond the newest `keep_lost_runs` lost runs, or older than
    `retention_days`; never a registered run, never one already pruned. Pure: the tests' subject."""
    lost = sorted(
        (r for r in runs if r.lost and r.run_id not in registered), key=lambda r: r.start_time_ms, reverse=True
    )
    chosen = []
    for rank, run in enumerate(lost):
        if FILES_PRUNED_TAG in run.tags:
            continue
        if rank >= retention.keep_lost_runs:
            chosen.append(Selected(run.run_id, f"beyond the last {retention.keep_lost_runs} lost runs"))
        elif run.age_days(now) > retention.retention_days:
            chosen.append(Selected(run.run_id, f"older than {retention.retention_days:g} days"))
    return chosen


def pruned_note(selected: Selected, retention: RunRetention, now: dt.datetime) -> str:
    return (
        f"{now.date().isoformat()}: lost challenger ({selected.why}); files removed by retention "
        f"({retention.policy}); params, metrics, tags and description kept"
    )


def contained(location: str, root: str, owner: str) -> str:
    """`location` as the URI to delete, if it lies strictly inside `root` and names `owner` (the run or model id it
    belongs to); raises OutsideArtifactRoot otherwise. Local paths are resolved first, symlinks included, so neither
    `..` nor a link leads out of the root."""
    if _is_local(root):
        if not _is_local(location):
            raise OutsideArtifactRoot(f"{location} is not in the local artifact root {root}")
        base, path = _local_path(root).resolve(), _local_path(location).resolve()
        if path == base or not path.is_relative_to(base) or owner not in path.relative_to(base).parts:
            raise OutsideArtifactRoot(f"{location} (resolved {path}) is not {owner}'s folder inside {base}")
        return path.as_uri()
    parts = unquote(urlparse(location).path).split("/")
    if not location.startswith(root.rstrip("/") + "/") or ".." in parts or owner not in parts:
        raise OutsideArtifactRoot(f"{location} is not {owner}'s location inside {root}")
    return location


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def _local_path(uri: str) -> Path:
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(uri))


@dataclass
class Pruned:
    """What one call did: the runs whose files went, the bytes freed (local store), the runs left whole on purpose
    (refused) and by accident (failed: selected again next time)."""

    runs: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def prune_ticker(
    tracker: Tracker, ticker: str, keep_lost_runs: int, retention_days: float, now: dt.datetime | None = None
) -> Pruned:
    """Remove the files of `ticker`'s lost runs past the retention; idempotent (a pruned run is tagged and skipped,
    so a second call reads the few newest lost runs and does nothing)."""
    retention = RunRetention(keep_lost_runs, retention_days)
    now = now or dt.datetime.now(dt.UTC)
    runs = {run.info.run_id: run for run in _lost_runs(tracker, ticker, keep_lost_runs)}
    versions = tracker.versions(ticker)
    registered_runs = {v.run_id for v in versions if v.run_id}
    registered_models = {v.model_id for v in versions if v.model_id} | {v.source for v in versions if v.source}
    selected = select_for_pruning((RunFacts.of(r) for r in runs.values()), registered_runs, retention, now)
    done = Pruned()
    if not selected:
        return done
    root = _artifact_root(tracker)
    for choice in selected:
        run = runs[choice.run_id]
        try:
            done.bytes_freed += _prune_run(tracker, run, root, registered_models, pruned_note(choice, retention, now))
            done.runs.append(choice.run_id)
        except Refused as exc:
            log.warning("%s: retention left run %s whole: %s", ticker, choice.run_id, exc)
            done.refused.append(choice.run_id)
        except Exception as exc:  # one run's trouble must not keep the older ones from being pruned
            log.warning("%s: retention could not prune run %s: %s: %s", ticker, choice.run_id, type(exc).__name__, exc)
            done.failed.append(choice.run_id)
    if done.runs:
        log.info(
            "%s: retention removed the files of %d lost run(s), %.1f MB (%s)",
            ticker,
            len(done.runs),
            done.bytes_freed / 1e6,
            retention.policy,
        )
    return done


def _lost_runs(tracker: Tracker, ticker: str, keep: int) -> list[Run]:
    """The newest `keep` lost runs (whatever their state: they decide what "beyond the last" means) and every lost
    run not yet pruned: a handful once retention has caught up, however long the history."""
    lost = (
        f"tags.{TICKER} = '{ticker}' and tags.{ROLE} = '{DAILY}' and tags.{DECISION} = '{Decision.kept.value}' "
        f"and attributes.status = '{FINISHED}'"
    )

    def search(filter_string: str, page_size: int) -> Iterator[Run]:
        return _pages(
            lambda token: tracker.client.search_runs(
                [tracker.experiment_id],
                filter_string,
                order_by=["attributes.start_time DESC"],
                max_results=page_size,
                page_token=token,
            )
        )

    # MLflow serves at most 50,000 runs a page: a "keep everything" setting pages like any other.
    newest = list(islice(search(lost, max(1, min(keep, 1000))), keep))
    return newest + list(search(f"{lost} and tags.`{FILES_PRUNED_TAG}` IS NULL", 1000))


def _pages(search: Callable[[str | None], Any]) -> Iterator[Run]:
    token = None
    while True:
        page = search(token)
        yield from page
        token = page.token
        if not token:
            return


def _artifact_root(tracker: Tracker) -> str:
    """The configured artifact folder of a local store; a server's experiment location otherwise (the server,
    not this process, owns where its files are)."""
    if tracker.artifact_root is not None:
        return Path(tracker.artifact_root).resolve().as_uri()
    return tracker.client.get_experiment(tracker.experiment_id).artifact_location


def _prune_run(tracker: Tracker, run: Run, root: str, registered_models: set[str], note: str) -> int:
    """Every location is checked before anything is deleted, so a refused run is left whole; the run is tagged
    last, so one cut off part-way is selected again and finished."""
    run_id = run.info.run_id
    if tracker.client.search_model_versions(f"run_id = '{run_id}'"):
        raise Registered(f"a registered version points to run {run_id}")
    models = _logged_models(tracker, run_id)
    for model in models:
        if {model.model_id, model.artifact_location} & registered_models:
            raise Registered(f"logged model {model.model_id} is registered")
    targets = [contained(m.artifact_location, root, m.model_id) for m in models]
    targets.append(contained(run.info.artifact_uri, root, run_id))
    freed = sum(_delete_files(target, tracker.tracking_uri) for target in targets)
    for model in models:
        if FILES_PRUNED_TAG not in model.tags:
            tracker.client.set_logged_model_tags(model.model_id, {FILES_PRUNED_TAG: note})
    tracker.set_tags(run_id, {FILES_PRUNED_TAG: note})
    return freed


def _logged_models(tracker: Tracker, run_id: str) -> list[LoggedModel]:
    return list(
        tracker.client.search_logged_models([tracker.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    )


def _delete_files(target: str, tracking_uri: str) -> int:
    """Empty the folder at `target` with MLflow's artifact repository for it (the folder itself stays, empty, so
    a download of it yields nothing rather than an error); returns the bytes freed where they can be counted."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    freed = tree_size(_local_path(target)) if _is_local(target) else 0
    repository = get_artifact_repository(target, tracking_uri=tracking_uri)
    for entry in repository.list_artifacts():
        repository.delete_artifacts(entry.path)
    return freed
