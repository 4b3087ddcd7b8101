"""Retention's pure parts: which lost runs give up their files (rank, age, registration, already pruned), and the
refusal of any location that is not its own folder inside the configured artifact root."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.registry.retention import (
    FILES_PRUNED_TAG,
    OutsideArtifactRoot,
    RunFacts,
    RunRetention,
    contained,
    pruned_note,
    select_for_pruning,
)

NOW = dt.datetime(2026, 6, 30, 18, 0, tzinfo=dt.UTC)
DAY_MS = 86_400_000


def run(run_id: str, days_ago: float, *, decision: str = "kept", status: str = "FINISHED", role: str = "daily",
        **tags: str) -> RunFacts:  # fmt: skip
    started = int(NOW.timestamp() * 1000 - days_ago * DAY_MS)
    return RunFacts(run_id, status, {"role": role, "decision": decision, **tags}, started)


def chosen(runs, keep=2, days=30.0, registered=()) -> list[str]:
    return [s.run_id for s in select_for_pruning(runs, set(registered), RunRetention(keep, days), NOW)]


def test_lost_runs_beyond_the_newest_keep_are_selected_newest_first():
    runs = [run(f"r{i}", days_ago=i) for i in range(6)]
    assert chosen(runs, keep=2) == ["r2", "r3", "r4", "r5"]
    assert chosen(list(reversed(runs)), keep=2) == ["r2", "r3", "r4", "r5"], "the order given does not matter"
    assert chosen(runs, keep=6) == [] and chosen(runs, keep=0) == [f"r{i}" for i in range(6)]


def test_a_lost_run_among_the_newest_goes_once_older_than_the_retention_days():
    runs = [run("new", 1), run("old", 31), run("older", 40)]
    assert chosen(runs, keep=5, days=30) == ["old", "older"]
    assert chosen(runs, keep=5, days=45) == []
    reasons = {s.run_id: s.why for s in select_for_pruning(runs, set(), RunRetention(1, 35), NOW)}
    assert reasons == {"old": "beyond the last 1 lost runs", "older": "beyond the last 1 lost runs"}
    assert {s.why for s in select_for_pruning(runs[:2], set(), RunRetention(5, 30), NOW)} == {"older than 30 days"}


def test_only_finished_daily_runs_whose_challenger_lost_are_ever_selected():
    never = [
        run("promoted", 50, decision="promoted"),
        run("failed", 50, decision="failed", status="FAILED"),
        run("running", 50, status="RUNNING"),  # may still be recording
        run("killed", 50, status="KILLED"),
        run("undecided", 50, decision=""),
        run("baseline", 50, role="baseline", decision="baseline"),
        run("live", 50, role="live_record", decision=""),
    ]
    assert chosen(never, keep=0, days=0) == []
    assert chosen([*never, run("lost", 50)], keep=0, days=0) == ["lost"]


def test_registered_and_already_pruned_runs_are_left_and_only_lost_runs_count_towards_keep():
    runs = [
        run("newest", 0),
        run("registered", 1),
        run("pruned", 2, **{FILES_PRUNED_TAG: "2026-06-01: ..."}),
        run("promoted", 3, decision="promoted"),
        run("next", 4),
    ]
    # "registered" does not take a kept place; "pruned" does (it is the 2nd newest lost run) but is not selected again.
    assert chosen(runs, keep=2, registered={"registered"}) == ["next"]
    assert chosen(runs, keep=1, registered={"registered"}) == ["next"]
    assert chosen(runs, keep=3, registered={"registered"}) == []


def test_the_note_says_when_why_and_under_which_policy():
    (selected,) = select_for_pruning([run("a", 1), run("b", 2)], set(), RunRetention(1, 30), NOW)
    note = pruned_note(selected, RunRetention(1, 30), NOW)
    assert note.startswith("2026-06-30: lost challenger (beyond the last 1 lost runs)")
    assert "keep 1 / 30 days" in note


def test_a_location_inside_the_root_naming_its_owner_is_accepted_resolved(tmp_path):
    root = tmp_path / "artifacts"
    folder = root / "abc123" / "artifacts"
    folder.mkdir(parents=True)
    assert contained(folder.as_uri(), root.as_uri(), "abc123") == folder.resolve().as_uri()
    assert contained(str(folder), str(root), "abc123") == folder.resolve().as_uri(), "plain paths too"
    model = root / "models" / "m-1" / "artifacts"
    assert contained(model.as_uri(), root.as_uri(), "m-1") == model.as_uri()


@pytest.mark.parametrize(
    "location",
    [
        "{outside}",  # elsewhere altogether
        "{root}",  # the root itself
        "{root}/models",  # inside, but every model's folder: not this one's
        "{root}/other-run/artifacts",  # another run's
        "{root}/abc123/../../outside",  # climbs out
        "{root}/link/artifacts",  # a link inside the root pointing out
        "s3://bucket/abc123/artifacts",  # not local although the root is
    ],
)
def test_a_location_that_is_not_its_owners_folder_inside_the_root_is_refused(tmp_path, location):
    root, outside = tmp_path / "artifacts", tmp_path / "outside"
    (outside / "abc123" / "artifacts").mkdir(parents=True)
    root.mkdir()
    (root / "link").symlink_to(outside / "abc123")
    (root / "models").mkdir()
    with pytest.raises(OutsideArtifactRoot):
        contained(location.format(root=root, outside=outside / "abc123" / "artifacts"), root.as_uri(), "abc123")


def test_on_a_server_the_location_must_start_with_the_root_and_not_climb():
    root = "mlflow-artifacts:/1"
    assert contained("mlflow-artifacts:/1/abc123/artifacts", root, "abc123") == "mlflow-artifacts:/1/abc123/artifacts"
    for location in (
        "mlflow-artifacts:/2/abc123/artifacts",
        "mlflow-artifacts:/10/abc123/artifacts",  # a prefix, not a folder, of the root
        "mlflow-artifacts:/1/other/../abc123/../../2/x",
        "mlflow-artifacts:/1/%2e%2e/2/abc123",
        "mlflow-artifacts:/1/other/artifacts",
        "file:///etc/abc123",
    ):
        with pytest.raises(OutsideArtifactRoot):
            contained(location, root, "abc123")


def test_the_retention_settings_reach_every_ticker_day(monkeypatch):
    from flows.daily import daily_context
    from pipeline.common.settings import Settings

    monkeypatch.setenv("STOCKPIPE_KEEP_LOST_RUNS", "2")
    monkeypatch.setenv("STOCKPIPE_RETENTION_DAYS", "7")
    assert daily_context(Settings(_env_file=None)).lost_runs == RunRetention(2, 7.0)
