"""A full disk, for real: `stockpipe run` with its home on a small tmpfs.

Too small for the pre-flight (STOCKPIPE_MIN_FREE_MB), the ticker fails before its first write in one line naming the
folder, what is free and what a ticker-day needs: nothing trained, the store as it was. With room for the pre-flight,
`tests.fill_at` fills the filesystem at an exact point of the day (right after the pre-flight passed; while the
challenger is logged): the ticker fails in one line, `DiskFull: disk full under <home>: ...`, with no traceback from
MLflow, SQLAlchemy or anything else; once the ballast is gone, the next run settles what was cut off and completes.

Mounting needs root (CAP_SYS_ADMIN); without it the tests skip, saying so. In the filling runs the local Prefect
API keeps its database off the small disk (see the test).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common.settings import DEFAULT_MIN_FREE_MB
from pipeline.data.store import PriceStore
from tests.fill_at import MARKER
from tests.support import MSFT_LAST_SESSION
from tests.system.test_kill import HISTORY_SINCE, SNAPSHOTS, base_env, read_records, run_args

pytestmark = pytest.mark.system

RUN_TIMEOUT = 300
# A fresh home takes about 8 MB before a ticker-day starts (the Prefect API's database, MLflow's schema): 24 MB
# starts the run and leaves well under the default need.
TOO_SMALL_MB = 24
ROOMY_MB = 96
# With room for it in ROOMY_MB whatever the default becomes: the fill, not the pre-flight, is what these runs meet.
ROOMY_NEED = {"STOCKPIPE_MIN_FREE_MB": "20"}


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Callable[[str, int], Path]]:
    """Mounts a tmpfs of the given size (MB) under tmp_path; each is unmounted at the end, whatever happened."""
    mounted: list[Path] = []

    def mount(name: str, size_mb: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            # Busy (a process this test started that has not quite gone): detach it now, freed when it goes.
            subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def exports(tmp_path) -> Path:
    folder = tmp_path / "exports"
    folder.mkdir()
    prices = pd.read_csv(SNAPSHOTS / "MSFT.csv")
    prices[prices["Date"] >= HISTORY_SINCE].to_csv(folder / "MSFT.csv", index=False)
    return folder


def stockpipe_run(cwd: Path, env: dict[str, str], exports: Path, fill: list[str] | None = None):
    """`stockpipe run` for MSFT; with `fill`, under tests.fill_at (its target, when and options)."""
    module = ["tests.fill_at", *fill, "--"] if fill else ["flows.cli"]
    argv = [sys.executable, "-m", *module, *run_args(exports, force=False)]
    started = time.monotonic()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result, time.monotonic() - started


def log_of(result) -> str:
    return result.stdout + result.stderr


def tail(result, lines: int = 40) -> str:
    kept = [line for line in log_of(result).splitlines() if "oneDNN" not in line and "absl::" not in line]
    return "\n".join(kept[-lines:])


def failure_lines(result) -> list[str]:
    return [line for line in log_of(result).splitlines() if "MSFT: failed:" in line]


def assert_no_traceback(result) -> None:
    assert "Traceback" not in log_of(result), f"a traceback in the log:\n{log_of(result)[-6000:]}"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_home_too_small_for_the_preflight_fails_the_ticker_at_once_in_one_line(tmp_path, small_disk, exports):
    assert TOO_SMALL_MB < DEFAULT_MIN_FREE_MB, "the tmpfs must be smaller than what a ticker-day needs by default"
    home = small_disk("small", TOO_SMALL_MB) / "home"
    # The store holds an older history; the export has newer sessions the day would store.
    store = PriceStore(home / "store", home / "locks")
    older = pd.read_csv(exports / "MSFT.csv", parse_dates=["Date"])
    store.write("MSFT", older[older["Date"] < "2017-11-01"].reset_index(drop=True))
    stored = digest(store.path("MSFT"))

    result, seconds = stockpipe_run(tmp_path, base_env(home), exports)

    assert result.returncode == 1, tail(result)
    (line,) = failure_lines(result)
    assert re.search(
        rf"MSFT: failed: DiskSpaceLow: low disk space under {re.escape(str(home))}: \d+\.\d MB free, a ticker-day "
        rf"needs {DEFAULT_MIN_FREE_MB:.1f} MB \(STOCKPIPE_MIN_FREE_MB={DEFAULT_MIN_FREE_MB}\); nothing was written",
        line,
    ), line
    assert_no_traceback(result)
    assert "train-MSFT" not in log_of(result) and "epoch" not in log_of(result), "it trained"
    assert digest(store.path("MSFT")) == stored, "the store changed"
    records = read_records(home)
    assert records.versions == {} and records.aliases == {}, records.describe()
    assert [r.info.status for r in records.runs.values()] == ["FAILED"], records.describe()
    print(f"\npre-flight refusal after {seconds:.0f}s: {line.split(' - ', 1)[-1]}")


def test_a_disk_that_fills_mid_run_fails_the_ticker_cleanly_and_the_next_run_settles_it(tmp_path, small_disk, exports):
    disk = small_disk("roomy", ROOMY_MB)
    home, ballast = disk / "home", disk / "ballast"
    # The local Prefect API's database stays off the disk that fills: on it, Prefect's own server fails its writes
    # too (500s, its tracebacks) whenever its SQLite WAL must grow at that moment, which is Prefect's failure, not
    # the day's, and not deterministic. Everything the ticker-day writes is on the filling disk.
    env = base_env(home, **ROOMY_NEED, PREFECT_HOME=str(tmp_path / "prefect"))
    summary = []

    # 1. Full right after the pre-flight passed: the store write is the first to meet it.
    fill = ["pipeline.daily.check_free_space", "after", "--ballast", str(ballast)]
    result, seconds = stockpipe_run(tmp_path, env, exports, fill)
    assert result.returncode == 1 and MARKER in result.stderr, tail(result)
    (line,) = failure_lines(result)
    assert f"MSFT: failed: DiskFull: disk full under {home}: [Errno 28] No space left on device" in line, line
    assert_no_traceback(result)
    assert not PriceStore(home / "store", home / "locks").path("MSFT").exists(), "a torn store file"
    assert not list((home / "store").glob(".*.tmp")), "a temporary store file left behind"
    records = read_records(home)
    assert records.versions == {} and not records.running(), records.describe()
    seen = set(records.runs)
    summary.append(f"filled after the pre-flight: failed after {seconds:.0f}s: {line.split(' - ', 1)[-1]}")
    ballast.unlink()

    # 2. Full while the challenger is logged (call 1 logs the naive baseline of a ticker's first day).
    fill = ["pipeline.registry.tracking.Tracker.log_forecaster", "before", "--call", "2", "--ballast", str(ballast)]
    result, seconds = stockpipe_run(tmp_path, env, exports, fill)
    assert result.returncode == 1 and MARKER in result.stderr, tail(result)
    (line,) = failure_lines(result)
    assert f"MSFT: failed: DiskFull: disk full under {home}: " in line, line
    assert_no_traceback(result)
    assert "TrackingUnavailable" not in log_of(result) and "Retry 1/" not in log_of(result), "a full disk retried"
    records = read_records(home)
    assert records.aliases == {"champion": 1} and list(records.versions) == [1], records.describe()
    (cut,) = [r for r in records.runs.values() if r.data.tags.get("role") == "daily" and r.info.run_id not in seen]
    assert cut.data.tags.get("stage") == "recording", records.describe()
    seen = set(records.runs)
    summary.append(f"filled while logging the model: failed after {seconds:.0f}s, left {cut.info.status}: {line}")
    ballast.unlink()

    # 3. Room again: the next run settles the cut-off run first, then completes its day.
    result, seconds = stockpipe_run(tmp_path, env, exports)
    assert result.returncode == 0, tail(result)
    assert_no_traceback(result)
    records = read_records(home)
    assert not records.running(), records.describe()
    settled = records.runs[cut.info.run_id]
    assert settled.info.status == "FAILED" and settled.data.tags["decision"] == "failed", records.describe()
    if cut.info.status == "RUNNING":
        assert "settled an interrupted run" in log_of(result), tail(result)
        assert settled.data.tags["reason"].startswith("cut off while recording"), settled.data.tags["reason"]
    (done,) = [r for r in records.runs.values() if r.info.run_id not in seen]
    assert done.info.status == "FINISHED", records.describe()
    assert done.data.tags["decision"] in ("promoted", "kept"), records.describe()
    assert PriceStore(home / "store", home / "locks").read("MSFT")["Date"].max().date() == MSFT_LAST_SESSION
    summary.append(f"after the ballast went: completed in {seconds:.0f}s; {records.describe()}")
    print("\n" + "\n".join(summary))
