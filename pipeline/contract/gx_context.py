"""The process's one Great Expectations context and the suites compiled in it, used by one thread at a time.

GX parses suite parameters with pyparsing, whose parse actions are not thread-safe on first use ("push_first()
missing 1 required positional argument"), and building a context and compiling a suite cost more than running
one: tickers validating in parallel threads share the context and take turns.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

SUITES_KEPT = 8  # suite definitions kept compiled; a long-running process sees few distinct ones

_LOCK = threading.Lock()
_GX: GxState | None = None  # built on first use; a forked child builds its own


class GxState:
    """An ephemeral GX context, its pandas data source and the suites registered in it."""

    def __init__(self) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.pid = os.getpid()
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("stockpipe").add_dataframe_asset("prices")
        self.batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        self.suites: OrderedDict[str, tuple[Any, dict[str, int]]] = OrderedDict()

    def suite(self, definition: dict[str, Any]) -> tuple[Any, dict[str, int]]:
        """The registered suite for this definition (built once) and each expectation id's position in it."""
        import great_expectations as gx

        key = hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:16]
        if key in self.suites:
            self.suites.move_to_end(key)
            return self.suites[key]
        suite = self.context.suites.add(
            gx.ExpectationSuite(
                name=f"{definition.get('name', 'prices')}-{key}",
                expectations=json.loads(json.dumps(definition["expectations"])),  # GX keeps what it is given
                meta=definition.get("meta", {}),
            )
        )
        order = {str(e.id): i for i, e in enumerate(suite.expectations)}
        self.suites[key] = (suite, order)
        while len(self.suites) > SUITES_KEPT:
            _, (old, _) = self.suites.popitem(last=False)
            self.context.suites.delete(old.name)
        return suite, order


@contextmanager
def gx_state() -> Iterator[GxState]:
    """The process's GX state, held by the calling thread until the block ends."""
    global _GX
    with _LOCK:
        if _GX is None or _GX.pid != os.getpid():
            _GX = GxState()
        yield _GX
