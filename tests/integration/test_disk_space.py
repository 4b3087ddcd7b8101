"""pipeline.daily.run_ticker and the disk: the pre-flight refuses a ticker-day before its first write (store,
registry and champion as they were), a day with nothing to do never asks for space, and a disk that fills mid-run
fails the ticker as one DiskFull naming the home. The real filesystem filling is tests/system/test_disk_full.py."""

from __future__ import annotations

import dataclasses
import errno
import hashlib

import mlflow
import pandas as pd
import pytest

from pipeline.common.outcome import Decision
from pipeline.contract.inputs import load_suite_definition
from pipeline.daily import DailyContext, Stages, run_ticker
from pipeline.data.quarantine import Retention
from pipeline.data.sources import CsvSource
from pipeline.data.store import PriceStore
from pipeline.evaluation.evidence import PromotionPolicy
from pipeline.registry.tracking import Tracker
from tests.support import MSFT_LAST_SESSION, SNAPSHOTS, migrated_tracking_store, tiny_config

AS_OF = MSFT_LAST_SESSION
# More than any disk has: the pre-flight refuses whatever this machine's free space.
NO_DISK_IS_THAT_LARGE_MB = 2**40


@pytest.fixture
def ctx(tmp_path) -> DailyContext:
    exports = tmp_path / "exports"
    exports.mkdir()
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv")
    prices[prices["Date"] >= "2014-11-01"].to_csv(exports / "MSFT.csv", index=False)
    home = tmp_path / "home"
    uri = migrated_tracking_store(home / "mlflow.db")
    mlflow.set_tracking_uri(uri)
    return DailyContext(
        store=PriceStore(home / "store", home / "locks"),
        source=CsvSource(exports, name="csv"),
        connect=lambda: Tracker.connect(uri, "stockpipe-test", home / "artifacts"),
        tracking_uri=uri,
        suite=load_suite_definition(SNAPSHOTS.parent.parent / "expectations" / "prices.json"),
        config=tiny_config(),
        policy=PromotionPolicy(0.002, 0.10),
        reports_dir=home / "reports",
        quarantine_dir=home / "quarantine",
        retention=Retention(30, 10**9),
        max_staleness_sessions=3,
        today=lambda: AS_OF,
    )


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
