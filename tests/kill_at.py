"""Fault injection for tests: `stockpipe` in a real process that SIGKILLs itself at an exact point.

    python -m tests.kill_at <dotted.path.to.function> <before|after> [--call N] -- <stockpipe args...>

The named function (a module function, or a method given as `module.Class.method`) is wrapped where the running code
looks it up, so that on its N-th call (default: the first) the process kills itself with SIGKILL right before or
right after the real call; then `flows.cli.app()` runs with the remaining arguments. Nothing can run after the
signal (no `finally`, no `atexit`): it is what `kill -9` does at that point. A line `kill_at: SIGKILL ...` goes to
stderr first, so a test can tell the point was reached from any other death.

The product has no test hooks: patch a name the running code actually calls at run time (a method on a class, a
name a module imported into itself); a function captured earlier, e.g. by a Prefect `task(...)` object, is not it.
"""

from __future__ import annotations

import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

USAGE = "usage: python -m tests.kill_at <dotted.path.to.function> <before|after> [--call N] -- <stockpipe args...>"
MARKER = "kill_at: SIGKILL"


def resolve(dotted: str) -> tuple[Any, str]:
    """The object holding the last name of `dotted` (a module or a class) and that name: the longest importable
    module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            owner: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:-1]:
            owner = getattr(owner, name)
        if not hasattr(owner, parts[-1]):
            raise SystemExit(f"kill_at: {dotted}: {owner!r} has no attribute {parts[-1]!r}")
        return owner, parts[-1]
    raise SystemExit(f"kill_at: {dotted}: no importable module in it")


def die(where: str) -> None:
    sys.stderr.write(f"{MARKER} {where}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(dotted: str, when: str, call: int = 1, action: Callable[[str], None] = die) -> None:
    """Wrap `dotted` so that its `call`-th call kills this process `when` (before or after the real call); another
    `action(where)` can stand in for the kill (tests.fill_at fills the disk there instead)."""
    if when not in ("before", "after"):
        raise SystemExit(f"kill_at: when must be before or after, not {when!r}\n{USAGE}")
    owner, name = resolve(dotted)
    raw = owner.__dict__.get(name, getattr(owner, name)) if isinstance(owner, type) else getattr(owner, name)
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
    original = raw.__func__ if kind else raw
    calls = 0
    lock = threading.Lock()

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        with lock:
            calls += 1
            this = calls
        where = f"{when} {dotted} (call {this})"
        if this == call and when == "before":
            action(where)
        result = original(*args, **kwargs)
        if this == call and when == "after":
            action(where)
        return result

    setattr(owner, name, kind(wrapper) if kind else wrapper)


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit(USAGE)
    split = argv.index("--")
    ours, command = argv[:split], argv[split + 1 :]
    call = 1
    if "--call" in ours:
        at = ours.index("--call")
        call = int(ours[at + 1])
        del ours[at : at + 2]
    if len(ours) != 2 or not command:
        raise SystemExit(USAGE)
    dotted, when = ours
    arm(dotted, when, call)
    from flows.cli import app

    sys.argv = ["stockpipe", *command]
    app()


if __name__ == "__main__":
    main(sys.argv[1:])
