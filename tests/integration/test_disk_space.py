"""pipeline.daily.run_ticker and the disk: the pre-flight refuses a ticker-day before its first write (store,
registry and champion as they were), a day with nothing to do never asks for space, and a disk that fills mid-run
fails the ticker as one DiskFull naming the home. The real filesystem filling is tests/system/test_disk_full.py."""

from __future__ import annotations

import dataclasses
import errno
import hashlib

import pytest

from pipeline.common.outcome import Decision
from pipeline.daily import DailyContext, Stages, run_ticker
from tests.support import (
    MSFT_LAST_SESSION,
    msft_exports,
    tiny_daily_context,
)

AS_OF = MSFT_LAST_SESSION
# More than any disk has: the pre-flight refuses whatever this machine's free space.
NO_DISK_IS_THAT_LARGE_MB = 2**40


@pytest.fixture
def ctx(tmp_path) -> DailyContext:
    return tiny_daily_context(tmp_path / "home", msft_exports(tmp_path / "exports"), today=AS_OF)


def never(*args, **kwargs):
    raise AssertionError("the day trained or recorded after the pre-flight refused it")


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_preflight_refuses_before_the_first_write_and_leaves_everything_as_it_was(ctx):
    # The store holds an older history; the source has newer sessions the day would store.
    before = ctx.source.receive("MSFT", None, AS_OF).rows
    ctx.store.write("MSFT", before.iloc[:-5])
    stored = digest(ctx.store.path("MSFT"))
    low = dataclasses.replace(ctx, min_free_mb=NO_DISK_IS_THAT_LARGE_MB)

    outcome = run_ticker("MSFT", low, as_of=AS_OF, stages=Stages(train=never, publish=never))

    assert outcome.decision is Decision.failed and outcome.failure == "DiskSpaceLow"
    assert outcome.reason.startswith(f"DiskSpaceLow: low disk space under {ctx.home}: ")
    assert "STOCKPIPE_MIN_FREE_MB" in outcome.reason and "TB" in outcome.reason
    assert digest(ctx.store.path("MSFT")) == stored, "the store changed"
    tracker = ctx.connect()
    assert tracker.champion("MSFT") is None, "a champion (even the baseline) was registered"
    assert tracker.client.search_registered_models() == []
    # Recorded like any failure before training: one failed run saying why, no model.
    (run,) = tracker.runs("MSFT")
    assert run.info.status == "FAILED" and "low disk space" in run.data.tags["mlflow.note.content"]
    assert tracker.client.search_logged_models(experiment_ids=[run.info.experiment_id]) == []


def test_a_day_with_nothing_new_never_asks_for_space(ctx):
    first = run_ticker("MSFT", ctx, as_of=AS_OF)
    assert first.succeeded, first.reason
    again = run_ticker("MSFT", dataclasses.replace(ctx, min_free_mb=NO_DISK_IS_THAT_LARGE_MB), as_of=AS_OF)
    assert again.decision is Decision.skipped and "up to date" in again.reason


def test_a_disk_that_fills_mid_run_fails_the_ticker_as_one_disk_full(ctx):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    outcome = run_ticker("MSFT", ctx, as_of=AS_OF, stages=Stages(publish=full))
    assert outcome.decision is Decision.failed and outcome.failure == "DiskFull"
    assert outcome.reason == f"DiskFull: disk full under {ctx.home}: [Errno 28] No space left on device"
    tracker = ctx.connect()
    assert tracker.champion("MSFT").kind == "naive", "the champion moved"
