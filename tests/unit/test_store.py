"""The per-ticker Parquet store: schema-preserving round trip, incremental merge, atomic replace, digest, lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from filelock import FileLock, Timeout

from pipeline.common import files as fsutil
from pipeline.common.symbols import InvalidTicker
from pipeline.data.sources import COLUMNS, normalize
from pipeline.data.store import PriceStore, StoreUnreadable, digest, merge_new_rows, overlap_disagreement
from tests.support import PRICE_SCHEMA

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path) -> PriceStore:
    return PriceStore(tmp_path / "store", tmp_path / "locks")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- round trip --------------------------------------------------------------------------------------


def test_write_read_round_trip_preserves_schema_and_values(store, msft_slice):
    store.write("MSFT", msft_slice)
    back = store.read("MSFT")
    pd.testing.assert_frame_equal(back, msft_slice)
    assert str(back["Date"].dtype) == "datetime64[ns]" and back["Volume"].dtype == "int64"
    assert files_in(store.root) == ["MSFT.parquet"]


def test_write_stores_only_the_schema_columns(store, msft_slice):
    store.write("MSFT", msft_slice.assign(LogReturn=0.0, Extra="x"))
    assert list(store.read("MSFT").columns) == COLUMNS


def test_nullable_volume_survives_the_round_trip(store, msft_slice):
    prices = msft_slice.head(3).assign(Volume=pd.array([1, None, 3], dtype="Int64"))
    store.write("MSFT", prices)
    back = store.read("MSFT")
    assert str(back["Volume"].dtype) == "Int64" and back["Volume"].isna().tolist() == [False, True, False]


def test_reading_an_unknown_ticker_is_an_empty_table_in_the_schema(store):
    empty = store.read("MSFT")
    assert empty.empty and list(empty.columns) == COLUMNS
    assert {c: str(t) for c, t in empty.dtypes.items()} == PRICE_SCHEMA
    assert store.last_date("MSFT") is None
    assert store.tickers() == []


def test_last_date_and_tickers(store, msft_slice):
    store.write("MSFT", msft_slice)
    store.write("GSPC", msft_slice.head(10))
    assert store.last_date("MSFT") == msft_slice["Date"].max().date()
    assert store.last_date("GSPC") == msft_slice["Date"].iloc[9].date()
    assert store.tickers() == ["GSPC", "MSFT"]


def test_rewrite_replaces_the_history(store, msft_slice):
    store.write("MSFT", msft_slice)
    store.write("MSFT", msft_slice.head(5))
    assert len(store.read("MSFT")) == 5


@pytest.mark.parametrize("bad", ["../MSFT", "a/b", "msft", ""])
def test_paths_refuse_invalid_tickers(store, bad, msft_slice):
    with pytest.raises(InvalidTicker):
        store.path(bad)
    with pytest.raises(InvalidTicker):
        store.write(bad, msft_slice)
    assert not Path(store.root).exists() or files_in(store.root) == []


# -- incremental merge --------------------------------------------------------------------------------


def test_merge_appends_only_rows_after_the_stored_end(msft_slice):
    history, batch = msft_slice.iloc[:200], msft_slice.iloc[150:]  # 50 rows overlap
    merged = merge_new_rows(history, batch)
    pd.testing.assert_frame_equal(merged, msft_slice)
    assert merged["Date"].is_unique and merged["Date"].is_monotonic_increasing


def test_merge_is_idempotent(msft_slice):
    history, batch = msft_slice.iloc[:200], msft_slice.iloc[150:]
    once = merge_new_rows(history, batch)
    twice = merge_new_rows(once, batch)
    pd.testing.assert_frame_equal(twice, once)
    assert len(twice) == len(msft_slice)


def test_merge_keeps_stored_rows_on_the_overlap(msft_slice):
    history = msft_slice.iloc[:200]
    batch = msft_slice.iloc[190:].copy()
    batch["Close"] = batch["Close"] * 2  # a disagreeing overlap is overlap_disagreement's business, not merge's
    merged = merge_new_rows(history, batch)
    assert merged["Close"].iloc[:200].tolist() == history["Close"].tolist()
    assert merged["Close"].iloc[200:].tolist() == batch["Close"].iloc[10:].tolist()


def test_merge_into_an_empty_store_takes_the_batch(msft_slice):
    empty = normalize(pd.DataFrame(columns=COLUMNS))
    merged = merge_new_rows(empty, msft_slice.iloc[10:20])
    pd.testing.assert_frame_equal(merged, msft_slice.iloc[10:20].reset_index(drop=True))


@pytest.mark.parametrize("batch_rows", [slice(0, 0), slice(0, 100)], ids=["empty", "all-older"])
def test_merge_of_nothing_new_changes_nothing(msft_slice, batch_rows):
    history = msft_slice.iloc[:200]
    batch = normalize(msft_slice.iloc[batch_rows])
    merged = merge_new_rows(history, batch)
    pd.testing.assert_frame_equal(merged, history)


def test_incremental_store_updates_end_in_the_full_history(store, msft_slice):
    for start, end in [(0, 100), (90, 180), (90, 180), (170, 300)]:  # each fetch overlaps the stored end
        store.write("MSFT", merge_new_rows(store.read("MSFT"), msft_slice.iloc[start:end]))
    pd.testing.assert_frame_equal(store.read("MSFT"), msft_slice)


# -- overlap check --------------------------------------------------------------------------------------


def test_overlap_agreement_and_disagreement(msft_slice):
    history, fetched = msft_slice.iloc[:200], msft_slice.iloc[190:].copy()
    assert overlap_disagreement(history, fetched) is None
    assert overlap_disagreement(history, fetched.iloc[0:0]) is None
    nudged = fetched.assign(Close=fetched["Close"] * (1 + 1e-6))
    assert overlap_disagreement(history, nudged) is None, "within rounding"
    adjusted = fetched.assign(Close=fetched["Close"] / 2)
    message = overlap_disagreement(history, adjusted)
    day = fetched["Date"].iloc[0].strftime("%Y-%m-%d")
    assert message is not None and message.startswith(f"Close on {day}")


# -- atomic replace ----------------------------------------------------------------------------------------


@pytest.fixture
def stored(store, msft_slice) -> bytes:
    store.write("MSFT", msft_slice.iloc[:100])
    return store.path("MSFT").read_bytes()


class Crash(Exception):
    pass


def test_crash_while_writing_parquet_leaves_the_old_file(store, stored, msft_slice, monkeypatch):
    def half_written(self, target, *args, **kwargs):
        target.write(b"PAR1 torn")  # some bytes reach the temporary file before the crash
        raise Crash("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_written)
    with pytest.raises(Crash):
        store.write("MSFT", msft_slice)
    monkeypatch.undo()
    assert store.path("MSFT").read_bytes() == stored
    assert files_in(store.root) == ["MSFT.parquet"], "no temporary file left behind"
    assert len(store.read("MSFT")) == 100


def test_crash_at_replace_leaves_the_old_file(store, stored, msft_slice, monkeypatch):
    seen = []

    def failing_replace(src, dst):
        seen.append(Path(src))
        assert Path(src).stat().st_size > 0, "the new content is complete before the swap"
        raise Crash("power cut")

    monkeypatch.setattr(fsutil.os, "replace", failing_replace)
    with pytest.raises(Crash):
        store.write("MSFT", msft_slice)
    monkeypatch.undo()
    assert seen and seen[0].parent == store.path("MSFT").parent, "temporary file beside the target (same filesystem)"
    assert store.path("MSFT").read_bytes() == stored
    assert files_in(store.root) == ["MSFT.parquet"]


def test_interrupt_during_write_is_cleaned_up_too(store, stored, msft_slice, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write("MSFT", msft_slice)
    monkeypatch.undo()
    assert store.path("MSFT").read_bytes() == stored
    assert files_in(store.root) == ["MSFT.parquet"]


def test_failed_first_write_leaves_nothing(store, msft_slice, monkeypatch):
    monkeypatch.setattr(fsutil.os, "replace", lambda src, dst: (_ for _ in ()).throw(Crash("boom")))
    with pytest.raises(Crash):
        store.write("MSFT", msft_slice)
    monkeypatch.undo()
    assert files_in(store.root) == []
    assert store.read("MSFT").empty


# -- digest ------------------------------------------------------------------------------------------------


def test_digest_is_stable(msft_slice):
    first = digest(msft_slice)
    assert len(first) == 16
    assert digest(msft_slice.copy()) == first
    assert digest(msft_slice.set_axis(range(1000, 1300))) == first, "the index is not content"
    assert digest(msft_slice.assign(Extra=1.0)) == first, "only the schema columns count"


def test_digest_survives_the_parquet_round_trip(store, msft_slice):
    store.write("MSFT", msft_slice)
    assert digest(store.read("MSFT")) == digest(msft_slice)


def test_digest_is_the_same_in_another_process(tmp_path, store, msft_slice):
    store.write("MSFT", msft_slice)
    code = (
        "import sys, pandas as pd\nfrom pipeline.data.store import digest\n"
        "print(digest(pd.read_parquet(sys.argv[1])))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(store.path("MSFT"))],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest(msft_slice)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.assign(Close=f["Close"].where(f.index != 150, f["Close"] + 0.01)),
        lambda f: f.assign(Volume=f["Volume"].where(f.index != 0, f["Volume"] + 1)),
        lambda f: f.assign(Date=f["Date"].where(f.index != 299, f["Date"] + pd.Timedelta(days=1))),
        lambda f: f.iloc[:-1],
        lambda f: f.iloc[::-1],
    ],
    ids=["close", "volume", "date", "row-removed", "order"],
)
def test_digest_changes_with_the_data(msft_slice, change):
    assert digest(change(msft_slice)) != digest(msft_slice)


# -- lock ------------------------------------------------------------------------------------------------------


def test_lock_file_exists_and_is_exclusive(store):
    lock_file = Path(store.locks) / "MSFT.lock"
    with store.lock("MSFT"):
        assert lock_file.exists()
        with pytest.raises(Timeout):
            FileLock(lock_file, timeout=0).acquire()
        with pytest.raises(Timeout), store.lock("MSFT", timeout=0):
            pass
        with store.lock("GSPC", timeout=0):  # one ticker's lock does not block another's
            pass
    other = FileLock(lock_file, timeout=0)
    other.acquire()  # released on exit
    other.release()


def test_lock_is_exclusive_across_processes(store):
    code = (
        "import sys\n"
        "from filelock import FileLock, Timeout\n"
        "try:\n"
        "    FileLock(sys.argv[1], timeout=0).acquire()\n"
        "except Timeout:\n"
        "    print('held')\n"
        "else:\n"
        "    print('acquired')\n"
    )
    lock_file = str(Path(store.locks) / "MSFT.lock")

    def probe() -> str:
        done = subprocess.run([sys.executable, "-c", code, lock_file], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    with store.lock("MSFT"):
        assert probe() == "held"
    assert probe() == "acquired"


def test_lock_refuses_invalid_ticker(store):
    with pytest.raises(InvalidTicker), store.lock("../MSFT"):
        pass


# -- broken files and permissions -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_an_unreadable_store_file_is_named_with_how_to_recover(store, stored, damage):
    path = store.path("MSFT")
    if damage == "truncated":
        path.write_bytes(stored[: len(stored) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        pd.DataFrame({"x": [1]}).to_parquet(path)
    with pytest.raises(StoreUnreadable, match=r"MSFT\.parquet is unreadable .*move it aside"):
        store.read("MSFT")


def test_store_files_and_folders_are_private(store, msft_slice):
    store.write("MSFT", msft_slice)
    with store.lock("MSFT"):
        pass
    assert store.path("MSFT").stat().st_mode & 0o777 == 0o600
    assert Path(store.root).stat().st_mode & 0o777 == 0o700
    assert Path(store.locks).stat().st_mode & 0o777 == 0o700
