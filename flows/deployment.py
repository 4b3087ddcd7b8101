"""The `daily` deployment: one schedule, declared here for `stockpipe serve` and mirrored in prefect.yaml."""

from __future__ import annotations

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron
from prefect.task_runners import ThreadPoolTaskRunner

from flows.daily import daily_pipeline
from pipeline.settings import Settings

DEPLOYMENT_NAME = "daily"
# After the US close, Monday to Friday; holidays are quick no-ops inside the flow (exchange calendar).
SCHEDULE_CRON = "0 18 * * 1-5"
SCHEDULE_TIMEZONE = "America/New_York"
WORK_POOL = "stockpipe"


def daily_schedule() -> Cron:
    return Cron(SCHEDULE_CRON, timezone=SCHEDULE_TIMEZONE)


def serve(settings: Settings, parameters: dict | None = None) -> None:
    """Serve the deployment from this process until interrupted; at most one run at a time, so runs never overlap."""
    runnable = daily_pipeline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=settings.max_workers))
    runnable.serve(
        name=DEPLOYMENT_NAME,
        schedules=[daily_schedule()],
        parameters=parameters or {},
        description="stockpipe: fetch, validate, retrain, track and promote after each US close",
        tags=["stockpipe"],
        pause_on_shutdown=False,
        # One run at a time for the deployment (a late run queues), and this process never runs two at once.
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        limit=1,
    )
