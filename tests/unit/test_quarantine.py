"""pipeline/data/quarantine.py: rejected batches kept exactly as received with their report, under a name of the
source's choosing (never a path from the data), pruned by age then by total size, and never anything it did not
write."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.common.symbols import InvalidTicker
from pipeline.data.quarantine import STAMP_FORMAT, Retention, Usage, keep, prune, usage

NOW = dt.datetime(2024, 3, 15, 18, 0, 0, 123456, tzinfo=dt.UTC)
# Bytes as a source may deliver them: a BOM, CRLF line ends, a NUL, invalid UTF-8. Kept byte for byte.
RAW = b"\xef\xbb\xbfDate,Open,High,Low,Close,Volume\r\n2024-03-15,1,2,0.5,1.5,100\r\n\x00\xff\xfe garbage\n"
REPORT = {"success": False, "failed": ["close_positive"], "rows": 2}
HTML = "<html><body>refused</body></html>"


def days_ago(days: float) -> dt.datetime:
    return NOW - dt.timedelta(days=days)


def batch(root: Path, ticker: str, when: dt.datetime, size: int = 100, html: str | None = HTML) -> Path:
    return keep(root, ticker, b"x" * size, f"{ticker}.csv", REPORT, html, now=when)


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


# -- keep -----------------------------------------------------------------------------------------------------------


def test_keep_stores_the_bytes_as_received_with_the_report_under_ticker_and_utc_stamp(tmp_path):
    root = tmp_path / "quarantine"
    folder = keep(root, "MSFT", RAW, "MSFT.csv", REPORT, HTML, now=NOW)
    assert folder == root / "MSFT" / "20240315T180000123456Z"
    assert sorted(p.name for p in folder.iterdir()) == ["MSFT.csv", "validation.html", "validation.json"]
    assert (folder / "MSFT.csv").read_bytes() == RAW
    assert json.loads((folder / "validation.json").read_text()) == REPORT
    assert (folder / "validation.html").read_text() == HTML


def test_without_a_report_page_only_the_bytes_and_the_json_are_kept(tmp_path):
    folder = keep(tmp_path, "MSFT", RAW, "MSFT.yahoo.csv", {"when": NOW}, None, now=NOW)
    assert sorted(p.name for p in folder.iterdir()) == ["MSFT.yahoo.csv", "validation.json"]
    assert json.loads((folder / "validation.json").read_text()) == {"when": str(NOW)}


def test_the_default_stamp_is_now_in_utc(tmp_path):
    before = dt.datetime.now(dt.UTC)
    folder = keep(tmp_path, "MSFT", RAW, "MSFT.csv", REPORT, None)
    after = dt.datetime.now(dt.UTC)
    stamped = dt.datetime.strptime(folder.name, STAMP_FORMAT).replace(tzinfo=dt.UTC)
    assert before <= stamped <= after


def test_kept_batches_are_private(tmp_path):
    previous = os.umask(0)
    try:
        folder = keep(tmp_path / "quarantine", "MSFT", RAW, "MSFT.csv", REPORT, HTML, now=NOW)
    finally:
        os.umask(previous)
    for path in (tmp_path / "quarantine", tmp_path / "quarantine" / "MSFT", folder):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


@pytest.mark.parametrize("raw_name", ["../../x", "/etc/x", "sub/dir/x", "../x"])
def test_a_path_in_the_raw_name_never_leaves_the_batch_folder(tmp_path, raw_name):
    root = tmp_path / "quarantine"
    folder = keep(root, "MSFT", RAW, raw_name, REPORT, None, now=NOW)
    assert (folder / "x").read_bytes() == RAW
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [f"quarantine/MSFT/{folder.name}/validation.json", f"quarantine/MSFT/{folder.name}/x"]


@pytest.mark.parametrize("ticker", ["../etc", "msft", "MSFT/../../x", "", "."])
def test_a_ticker_that_is_not_a_symbol_is_refused_before_anything_is_written(tmp_path, ticker):
    with pytest.raises(InvalidTicker):
        keep(tmp_path / "quarantine", ticker, RAW, "MSFT.csv", REPORT, None, now=NOW)
    assert not (tmp_path / "quarantine").exists()


# -- usage ----------------------------------------------------------------------------------------------------------


def test_usage_counts_batches_and_bytes_per_ticker_and_in_all(tmp_path):
    root = tmp_path / "quarantine"
    msft = [batch(root, "MSFT", days_ago(d), size=1000) for d in (1, 2)]
    gspc = batch(root, "GSPC", days_ago(3), size=500, html=None)
    assert usage(root, "MSFT") == Usage(2, sum(tree_bytes(f) for f in msft))
    assert usage(root, "GSPC") == Usage(1, tree_bytes(gspc))
    assert usage(root) == Usage(3, sum(tree_bytes(f) for f in [*msft, gspc]))
    assert usage(root, "AAPL") == Usage(0, 0)
    assert usage(root, "MSFT").bytes > 2000  # the raw bytes and the reports


def test_usage_of_a_quarantine_never_written_is_zero(tmp_path):
    assert usage(tmp_path / "nothing-here") == Usage(0, 0)


def test_usage_ignores_what_the_quarantine_did_not_write(tmp_path):
    root = tmp_path / "quarantine"
    kept = batch(root, "MSFT", days_ago(1))
    (root / "MSFT" / "notes").mkdir()
    (root / "MSFT" / "notes" / "big.bin").write_bytes(b"x" * 10_000)
    # A link with a batch's name, to a big folder elsewhere, is neither counted nor followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(b"x" * 10_000)
    (root / "MSFT" / days_ago(5).strftime(STAMP_FORMAT)).symlink_to(elsewhere)
    assert usage(root, "MSFT") == Usage(1, tree_bytes(kept))


# -- prune ----------------------------------------------------------------------------------------------------------


def test_prune_deletes_batches_older_than_the_retention_age(tmp_path):
    root = tmp_path / "quarantine"
    old = batch(root, "MSFT", days_ago(31))
    older = batch(root, "GSPC", days_ago(400))
    recent = batch(root, "MSFT", days_ago(29))
    removed = prune(root, Retention(max_age_days=30, max_bytes=10**9), now=NOW)
    assert sorted(removed) == sorted([old, older])
    assert not old.exists() and not older.exists() and recent.exists()
    assert usage(root) == Usage(1, tree_bytes(recent))


def test_prune_then_deletes_the_oldest_until_the_total_fits(tmp_path):
    root = tmp_path / "quarantine"
    folders = [batch(root, "MSFT" if d % 2 else "GSPC", days_ago(d), size=1000) for d in (5, 4, 3, 2, 1)]
    each = tree_bytes(folders[0])
    assert all(tree_bytes(f) == each for f in folders)
    removed = prune(root, Retention(max_age_days=30, max_bytes=2 * each + each // 2), now=NOW)
    assert removed == folders[:3], "oldest first, across tickers, until the total is under the limit"
    assert [f.exists() for f in folders] == [False, False, False, True, True]
    assert usage(root).bytes <= 2 * each + each // 2


def test_prune_keeps_everything_that_fits(tmp_path):
    root = tmp_path / "quarantine"
    folders = [batch(root, "MSFT", days_ago(d)) for d in (3, 2, 1)]
    total = usage(root).bytes
    assert prune(root, Retention(max_age_days=30, max_bytes=total), now=NOW) == []
    assert all(f.exists() for f in folders)


def test_prune_by_age_and_size_together(tmp_path):
    root = tmp_path / "quarantine"
    too_old = batch(root, "MSFT", days_ago(40), size=10)
    big_old = batch(root, "MSFT", days_ago(10), size=5000)
    newest = batch(root, "MSFT", days_ago(1), size=10)
    removed = prune(root, Retention(max_age_days=30, max_bytes=tree_bytes(newest) + 100), now=NOW)
    assert removed == [too_old, big_old]
    assert newest.exists()


def test_a_zero_size_retention_empties_the_quarantine(tmp_path):
    root = tmp_path / "quarantine"
    for d in (2, 1):
        batch(root, "MSFT", days_ago(d))
    assert len(prune(root, Retention(max_age_days=30, max_bytes=0), now=NOW)) == 2
    assert usage(root) == Usage(0, 0)


def test_prune_never_touches_what_it_did_not_write(tmp_path):
    root = tmp_path / "quarantine"
    ours = batch(root, "MSFT", days_ago(100))
    foreign = root / "MSFT" / "keep-me"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    stray = root / "README.txt"
    stray.write_text("an operator's note")
    # A link named like a batch, pointing at a folder elsewhere: neither deleted nor followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.csv").write_text("data")
    link = root / "GSPC" / days_ago(100).strftime(STAMP_FORMAT)
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    # A file (not a folder) named like a batch.
    lookalike = root / "MSFT" / days_ago(200).strftime(STAMP_FORMAT)
    lookalike.write_text("not a batch")

    removed = prune(root, Retention(max_age_days=1, max_bytes=0), now=NOW)
    assert removed == [ours] and not ours.exists()
    assert (foreign / "notes.txt").read_text() == "mine"
    assert stray.read_text() == "an operator's note"
    assert link.is_symlink() and (elsewhere / "precious.csv").read_text() == "data"
    assert lookalike.read_text() == "not a batch"


def test_prune_of_a_quarantine_never_written_does_nothing(tmp_path):
    assert prune(tmp_path / "nothing-here", Retention(max_age_days=0, max_bytes=0), now=NOW) == []
    assert not (tmp_path / "nothing-here").exists()
