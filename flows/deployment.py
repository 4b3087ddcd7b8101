"""The `daily` deployment. `prefect.yaml` declares it (schedule, concurrency, parameters schema enforcement) for work
pools; `stockpipe serve` serves the same deployment from one process, reading the schedule from that same file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.task_runners import ThreadPoolTaskRunner

from flows.daily import daily_pipeline
from pipeline.common.settings import PROJECT_ROOT, Settings

PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"
DEPLOYMENT_NAME = "daily"


def deployment_spec(name: str = DEPLOYMENT_NAME, path: Path = PREFECT_YAML) -> dict[str, Any]:
    """One deployment's entry in prefect.yaml: the single place its schedule and description are written."""
    config = yaml.safe_load(path.read_text())
    for deployment in config.get("deployments", []):
        if deployment.get("name") == name:
            return deployment
    raise LookupError(f"{path} declares no deployment named {name!r}")


def schedules(spec: dict[str, Any]) -> list[Cron]:
    return [
        Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
        for s in spec.get("schedules", [])
        if "cron" in s
    ]


def serve(settings: Settings, parameters: dict | None = None) -> None:
    """Serve the deployment from this process until interrupted; at most one run at a time, so runs never overlap."""
    spec = deployment_spec()
    limit = spec.get("concurrency_limit", {}).get("limit", 1)
    runnable = daily_pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=settings.max_workers))
    runnable.serve(
        name=DEPLOYMENT_NAME,
        schedules=schedules(spec),
        parameters=parameters or spec.get("parameters") or {},
        description=spec.get("description"),
        tags=spec.get("tags"),
        pause_on_shutdown=False,
        enforce_parameter_schema=bool(spec.get("enforce_parameter_schema", True)),
        # One run at a time for the deployment (a late run queues), and this process never runs two at once.
        global_limit=ConcurrencyLimitConfig(limit=limit, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        limit=1,
    )
