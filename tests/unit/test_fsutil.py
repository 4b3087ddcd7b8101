"""pipeline/common/files.py: durable atomic writes, state private to the user without touching the umask, and untrusted
inputs read only when they are regular files inside their folder (no devices, FIFOs, links out, oversize files)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline.common import files as fsutil
from pipeline.common.files import UnsafeInput, atomic_write, atomic_write_bytes, private_dir, read_regular_file


class Crash(Exception):
    """Stands for the process dying at that point (anything raised through atomic_write)."""


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def leftovers(folder: Path) -> list[str]:
    """Temporary files atomic_write left behind (`.<name>.<pid>.<random>.tmp`)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask_zero():
    """A permissive process umask (0o000), as a careless service manager might set: whatever fsutil creates must
    still be private. Restored afterwards."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def umask_forbidden(monkeypatch):
    """os.umask must never be called by fsutil: changing it races with every other thread creating files."""

    def forbidden(*_args):
        raise AssertionError("fsutil changed the process umask")

    monkeypatch.setattr(fsutil.os, "umask", forbidden)


# -- atomic writes --------------------------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert leftovers(tmp_path) == []


def test_a_crash_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old contents")

    def half_then_crash(handle):
        handle.write(b"new con")
        raise Crash("killed mid-write")

    with pytest.raises(Crash):
        atomic_write(target, half_then_crash)
    assert target.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_a_crash_at_the_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old contents")
    renamed = []

    def crash_at_rename(src, dst):
        renamed.append((Path(src).parent, Path(dst)))
        # The new contents were complete and on disk when the rename was attempted.
        assert Path(src).read_bytes() == b"new contents"
        raise Crash("killed at the rename")

    monkeypatch.setattr(fsutil.os, "replace", crash_at_rename)
    with pytest.raises(Crash):
        atomic_write_bytes(target, b"new contents")
    assert renamed == [(tmp_path, target)], "the temporary file lives beside the target (same filesystem)"
    assert target.read_bytes() == b"old contents"
    assert leftovers(tmp_path) == []


def test_a_crash_before_a_first_write_leaves_nothing(tmp_path):
    target = tmp_path / "new.json"
    with pytest.raises(Crash):
        atomic_write(target, lambda handle: (_ for _ in ()).throw(Crash("no")))
    assert list(tmp_path.iterdir()) == []


def test_the_file_is_fsynced_before_the_rename_and_the_directory_after_it(tmp_path, monkeypatch):
    target = tmp_path / "state" / "last_run.json"
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(fd):
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            events.append(("fsync-dir", str(Path(f"/proc/self/fd/{fd}").readlink())))
        else:
            events.append(("fsync-file", Path(f"/proc/self/fd/{fd}").readlink().name))
        real_fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "fsync", recording_fsync)
    monkeypatch.setattr(fsutil.os, "replace", recording_replace)
    atomic_write_bytes(target, b"{}")

    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync-file", "replace", "fsync-dir"], events
    # The file fsynced is the temporary (its data on disk before the name points at it), the directory the target's.
    assert events[0][1].startswith(".last_run.json.") and events[0][1].endswith(".tmp")
    assert events[1][1] == "last_run.json"
    assert events[2][1] == str(target.parent.resolve())
    assert target.read_bytes() == b"{}"


def test_a_failed_fsync_aborts_before_the_rename(tmp_path, monkeypatch):
    """A write the disk refused (EIO, ENOSPC at fsync) must not replace the old file."""
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


# -- private state --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask_zero", "umask_forbidden")
def test_files_are_0600_and_missing_directories_0700_whatever_the_umask(tmp_path):
    target = tmp_path / "home" / "reports" / "MSFT" / "last_run.json"
    atomic_write_bytes(target, b"{}")
    assert mode(target) == 0o600
    for folder in (tmp_path / "home", tmp_path / "home" / "reports", tmp_path / "home" / "reports" / "MSFT"):
        assert mode(folder) == 0o700, folder


@pytest.mark.usefixtures("umask_zero", "umask_forbidden")
def test_a_replaced_file_is_0600_even_if_the_old_one_was_readable_by_all(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    target.chmod(0o644)
    atomic_write_bytes(target, b"new")
    assert mode(target) == 0o600


@pytest.mark.usefixtures("umask_zero", "umask_forbidden")
def test_the_temporary_file_is_private_from_its_creation(tmp_path, monkeypatch):
    """No window in which the half-written file is readable by others: it is 0600 while `write` runs."""
    target = tmp_path / "state.json"
    seen = []

    def write(handle):
        seen.append(stat.S_IMODE(os.fstat(handle.fileno()).st_mode))
        handle.write(b"x")

    atomic_write(target, write)
    assert seen == [0o600]


@pytest.mark.usefixtures("umask_zero", "umask_forbidden")
def test_private_dir_creates_every_missing_parent_0700_and_leaves_existing_ones_alone(tmp_path):
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    made = private_dir(existing / "a" / "b")
    assert made == existing / "a" / "b"
    assert mode(existing) == 0o755, "an existing directory keeps what its owner set"
    assert mode(existing / "a") == 0o700 and mode(existing / "a" / "b") == 0o700
    assert private_dir(made) == made  # idempotent


def test_the_process_umask_is_unchanged(tmp_path):
    before = os.umask(0o022)
    os.umask(before)
    atomic_write_bytes(tmp_path / "x" / "y.bin", b"1")
    private_dir(tmp_path / "z")
    after = os.umask(before)
    os.umask(after)
    assert after == before


# -- untrusted inputs -----------------------------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path) -> Path:
    inputs = tmp_path / "exports"
    inputs.mkdir()
    return inputs


def test_a_regular_file_is_read(folder):
    (folder / "MSFT.csv").write_bytes(b"Date,Close\n2017-11-10,83.87\n")
    assert read_regular_file(folder, "MSFT.csv", 1000) == b"Date,Close\n2017-11-10,83.87\n"


def test_a_link_that_stays_inside_the_folder_is_read(folder):
    (folder / "archive").mkdir()
    (folder / "archive" / "MSFT-2017.csv").write_bytes(b"Date,Close\n")
    (folder / "MSFT.csv").symlink_to(Path("archive") / "MSFT-2017.csv")
    assert read_regular_file(folder, "MSFT.csv", 1000) == b"Date,Close\n"


def test_a_link_to_the_process_environment_is_refused_naming_the_path_without_its_content(folder, monkeypatch):
    marker = "stockpipe-test-environ-" + os.urandom(8).hex()
    monkeypatch.setenv("STOCKPIPE_TEST_MARKER", marker)
    (folder / "MSFT.csv").symlink_to("/proc/self/environ")
    with pytest.raises(UnsafeInput) as refused:
        read_regular_file(folder, "MSFT.csv", 10**6)
    message = str(refused.value)
    assert str(folder / "MSFT.csv") in message
    assert "outside" in message
    assert marker not in message and "PATH=" not in message


def test_a_link_to_a_device_outside_the_folder_is_refused(folder):
    (folder / "MSFT.csv").symlink_to("/dev/zero")
    with pytest.raises(UnsafeInput, match="leads outside"):
        read_regular_file(folder, "MSFT.csv", 10**6)


def test_a_relative_link_climbing_out_of_the_folder_is_refused(folder):
    secret = folder.parent / "secret.txt"
    secret.write_text("hunter2")
    (folder / "MSFT.csv").symlink_to(Path("..") / "secret.txt")
    with pytest.raises(UnsafeInput) as refused:
        read_regular_file(folder, "MSFT.csv", 10**6)
    assert "hunter2" not in str(refused.value)


def test_a_name_climbing_out_of_the_folder_is_refused(folder):
    (folder.parent / "elsewhere.csv").write_text("x")
    with pytest.raises(UnsafeInput, match="leads outside"):
        read_regular_file(folder, "../elsewhere.csv", 10**6)


@pytest.mark.timeout(5)
def test_a_fifo_is_refused_without_blocking(folder):
    fifo = folder / "MSFT.csv"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeInput, match="not a regular file") as refused:
        read_regular_file(folder, "MSFT.csv", 10**6)
    assert str(fifo) in str(refused.value)


@pytest.mark.timeout(5)
def test_a_link_to_a_fifo_inside_the_folder_is_refused_without_blocking(folder):
    os.mkfifo(folder / "pipe")
    (folder / "MSFT.csv").symlink_to("pipe")
    with pytest.raises(UnsafeInput, match="not a regular file"):
        read_regular_file(folder, "MSFT.csv", 10**6)


@pytest.mark.timeout(5)
def test_a_device_in_its_own_folder_is_refused_as_not_a_regular_file():
    """/dev/zero is inside /dev: only the type check stands between it and an endless read."""
    with pytest.raises(UnsafeInput, match="not a regular file") as refused:
        read_regular_file(Path("/dev"), "zero", 10**6)
    assert "/dev/zero" in str(refused.value)


def test_a_directory_is_refused_as_not_a_regular_file(folder):
    (folder / "MSFT.csv").mkdir()
    with pytest.raises(UnsafeInput, match="not a regular file"):
        read_regular_file(folder, "MSFT.csv", 10**6)


def test_a_file_over_the_limit_is_refused_before_it_is_read(folder, monkeypatch):
    (folder / "MSFT.csv").write_bytes(b"x" * 1001)
    real_read = os.read
    reads = []

    def counting_read(fd, n):
        reads.append(n)
        return real_read(fd, n)

    monkeypatch.setattr(fsutil.os, "read", counting_read)
    with pytest.raises(UnsafeInput, match="over the 1,000-byte limit") as refused:
        read_regular_file(folder, "MSFT.csv", 1000)
    assert str(folder / "MSFT.csv") in str(refused.value) and "1,001 bytes" in str(refused.value)
    assert reads == [], "refused from its size, without reading a byte"


def test_a_file_exactly_at_the_limit_is_read(folder):
    (folder / "MSFT.csv").write_bytes(b"x" * 1000)
    assert len(read_regular_file(folder, "MSFT.csv", 1000)) == 1000


def test_a_file_growing_past_the_limit_while_read_is_refused(folder, monkeypatch):
    """The size seen at open time is not trusted: reading stops one byte past the limit."""
    (folder / "MSFT.csv").write_bytes(b"x" * 10)
    # A file some other process keeps appending to: every read returns more.
    monkeypatch.setattr(fsutil.os, "read", lambda fd, n: b"x" * min(n, 600))
    with pytest.raises(UnsafeInput, match="grew past the 1,000-byte limit"):
        read_regular_file(folder, "MSFT.csv", 1000)


def test_a_missing_file_raises_file_not_found(folder):
    with pytest.raises(FileNotFoundError):
        read_regular_file(folder, "MSFT.csv", 1000)
