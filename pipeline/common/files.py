"""Files the pipeline writes and reads: durable atomic writes, state private to the user, untrusted inputs confined.

Every state file is written the same way: a private temporary file beside the target, flushed and fsynced, renamed
over the target, then the directory fsynced, so a reader (or the next run after a crash) sees the old file or the new
one, never a torn one, and the rename itself survives a power cut. Permissions are set when a file or directory is
created, never by changing the process umask (which would race with other threads creating files).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class UnsafeInput(ValueError):
    """An input path that is not a regular file inside its folder (a device, a FIFO, a link that leaves it)."""


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parents as 0700; existing directories are left as their owner set them."""
    path = Path(path)
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # created by a concurrent run in the meantime
            folder.mkdir(mode=PRIVATE_DIR)
    return path


def fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write` puts into a file handle; readers never see a partial file."""
    path = Path(path)
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    # O_EXCL with mode 0600 from the start: no window in which the file is readable by others.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def within(path: Path, root: Path) -> bool:
    """True when `path`, with every link followed, lies inside `root` (also with links followed)."""
    try:
        Path(path).resolve(strict=False).relative_to(Path(root).resolve(strict=False))
    except ValueError:
        return False
    return True


def read_regular_file(folder: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of `folder/name`, only if it is a regular file that stays inside `folder` once links are followed.

    Refused: links that leave the folder (a link to /proc/self/environ would copy the environment into logs),
    devices and FIFOs (a read could block forever or never end), and files larger than `max_bytes`.
    """
    path = Path(folder) / name
    if not within(path, folder):
        raise UnsafeInput(f"{path} leads outside {folder}: inputs must be files inside their folder")
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the type check below refuses it anyway.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        # What was opened, not what the path said a moment ago: a link swapped in between is caught here.
        opened = Path(f"/proc/self/fd/{descriptor}")
        if opened.exists() and not within(Path(os.readlink(opened)), folder):
            raise UnsafeInput(f"{path} leads outside {folder}: inputs must be files inside their folder")
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeInput(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeInput(f"{path} is {info.st_size:,} bytes, over the {max_bytes:,}-byte limit for one input")
        chunks = []
        remaining = max_bytes + 1
        while chunk := os.read(descriptor, min(1 << 20, remaining)):
            chunks.append(chunk)
            remaining -= len(chunk)
            if remaining <= 0:
                raise UnsafeInput(f"{path} grew past the {max_bytes:,}-byte limit while being read")
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def tree_size(path: Path) -> int:
    """Bytes of every regular file under `path` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(Path(root) / name)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
    return total
