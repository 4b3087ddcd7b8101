"""A Dask worker preload: `dask worker tcp://SCHEDULER:8786 --nthreads 1 --preload flows.dask_worker`.

A worker process lives for many tickers and imports the flow's libraries once either way; preloaded, it pays for
them while it starts (alongside the others) instead of inside its first ticker, on the run's critical path. The local
cluster of `--task-runner dask` starts its workers with this preload too (flows.cli)."""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

# Under `distributed`: a worker logs through Dask's handler before Prefect sets up its own.
log = logging.getLogger("distributed.stockpipe")
PRELOADED = (
    "yfinance",
    "flows.daily",
    "pipeline.models.lstm",
    "pipeline.registry.tracking",
    "keras",
    "great_expectations",
    "mlflow",
)


def dask_setup(worker: Any = None) -> None:
    started = time.perf_counter()
    # In this order: yfinance before TensorFlow (yfinance issue 2528), then what a ticker-day imports on first use.
    for module in PRELOADED:
        importlib.import_module(module)

    log.info("Dask worker preloaded the flow's libraries in %.1fs", time.perf_counter() - started)
