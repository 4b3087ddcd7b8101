"""Fault injection for tests: `stockpipe` in a real process whose disk fills at an exact point.

    python -m tests.fill_at <dotted.path.to.function> <before|after> --ballast PATH [--leave BYTES] [--call N]
        -- <stockpipe args...>

Like `tests.kill_at` (the same wrapping of a name the running code looks up, on its N-th call), but instead of a
SIGKILL the process allocates a ballast file at PATH that takes every free byte of PATH's filesystem but `--leave`
(default 0), then goes on: the writes after that point meet a full disk, as they would on a machine whose disk
another process filled. A line `fill_at: disk filled ...` goes to stderr first. Deleting the ballast frees the space.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

from tests.kill_at import arm

USAGE = (
    "usage: python -m tests.fill_at <dotted.path.to.function> <before|after> --ballast PATH [--leave BYTES] "
    "[--call N] -- <stockpipe args...>"
)
MARKER = "fill_at: disk filled"
CHUNK = 4096


def fill(ballast: Path, leave: int = 0) -> int:
    """Allocate `ballast` so that its filesystem has `leave` bytes left (to the block); returns the bytes taken.

    Other processes write meanwhile (the run's own Prefect API): an allocation larger than what is free by then is
    refused whole, so a refused one is asked again for half, down to a block, then the room is measured again.
    """
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            stats = os.statvfs(ballast.parent)
            # f_bfree, not f_bavail: this runs as root in the system tests, and root may use the reserved blocks.
            wanted = stats.f_bfree * stats.f_frsize - leave
            while wanted >= CHUNK:
                try:
                    os.posix_fallocate(descriptor, os.fstat(descriptor).st_size, wanted)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    wanted //= 2
            if wanted < CHUNK:
                break
        if leave == 0:
            # Whatever the allocations left (metadata, rounding) goes too: the disk is full, to the last block.
            try:
                while True:
                    os.write(descriptor, b"\0" * CHUNK)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
        return os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(USAGE)
    split = argv.index("--")
    ours, command = argv[:split], argv[split + 1 :]
    options = {"--call": "1", "--leave": "0", "--ballast": ""}
    for name in options:
        if name in ours:
            at = ours.index(name)
            options[name] = ours[at + 1]
            del ours[at : at + 2]
    if len(ours) != 2 or not command or not options["--ballast"]:
        raise SystemExit(USAGE)
    dotted, when = ours
    ballast, leave = Path(options["--ballast"]), int(options["--leave"])

    def filled(where: str) -> None:
        taken = fill(ballast, leave)
        sys.stderr.write(f"{MARKER} {where}: {ballast} takes {taken} bytes, {leave} left\n")
        sys.stderr.flush()

    arm(dotted, when, int(options["--call"]), action=filled)
    from flows.cli import app

    sys.argv = ["stockpipe", *command]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
