"""One typed settings object, read from `STOCKPIPE_*` environment variables at the edges.

Library functions take the pieces they need as arguments; nothing here runs at import time.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.common.markets import exchange_for
from pipeline.common.symbols import validate_ticker

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_SNAPSHOTS = PROJECT_ROOT / "data" / "snapshots"
BUNDLED_SUITE = PROJECT_ROOT / "expectations" / "prices.json"


# Two small LSTMs train side by side on this kind of 2-core machine; a third only competes for the cores.
DEFAULT_MAX_WORKERS = 2
# A price file larger than this is refused before it is read (a misdirected path, not an export).
DEFAULT_MAX_INPUT_BYTES = 256 * 2**20
# Chosen from the replay of the promotion rule on the bundled data (bench/promotion_replay.py; README, "How a model
# earns promotion"): the smallest margin that alone refused as many of the old rule's noise promotions as 0.5% did.
DEFAULT_MIN_RELATIVE_GAIN = 0.002
DEFAULT_PROMOTION_ALPHA = 0.10
# Measured with the default model on the bundled data (`stockpipe run` in a home on a tmpfs, `df` sampled every
# 50 ms): a fresh home's first ticker-day peaks at 10 MB (7.5 MB of it the Prefect and MLflow databases being
# created), a later one writes 1.2 MB before retention prunes (logged model 0.7 MB, run files 0.1 MB, MLflow and
# Prefect rows 0.4 MB). Five times the larger leaves room for the tickers that train at once, SQLite journals and WAL
# growing past their usual size, and a model larger than the default.
DEFAULT_MIN_FREE_MB = 50


class OnDegraded(StrEnum):
    fallback = "fallback"
    alert = "alert"


class SourceKind(StrEnum):
    snapshot = "snapshot"
    csv = "csv"
    yahoo = "yahoo"


class TrainingConfig(BaseModel):
    """Everything that shapes a trained model; its digest decides whether a retrain is needed."""

    history_years: float = Field(10.0, gt=0, description="Years of history before the data end used for a model.")
    window: int = Field(60, ge=5, description="Sessions of history the model sees per forecast.")
    units: int = Field(64, ge=1, description="Units in each of the two LSTM layers.")
    dropout: float = Field(0.2, ge=0, lt=1)
    epochs: int = Field(30, ge=1)
    # 512: Keras's CPU LSTM runs ~120 small ops per time step and layer whatever the batch, so an epoch's cost is their
    # dispatch. 512 halves s/epoch against 64 and early stopping lands sooner, with best validation loss and test U2
    # equal to 64's within seed noise (3 seeds x 2 tickers; bench/results.json, "training").
    batch_size: int = Field(512, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    patience: int = Field(5, ge=1, description="Epochs without validation improvement before early stopping.")
    warm_start_epochs: int = Field(8, ge=1, description="Epochs when retraining from the champion's weights.")
    val_fraction: float = Field(
        0.1,
        gt=0,
        lt=0.5,
        description="Share of windows before the test sessions used for "
        "early stopping, shrinkage and interval calibration.",
    )
    eval_sessions: int = Field(250, ge=20, description="The last sessions every model is scored on (never trained on).")
    eval_blocks: int = Field(5, ge=1, description="Consecutive blocks the test sessions are split into.")
    seed: int = 42

    def digest(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class Settings(BaseSettings):
    """Runtime configuration. Nested fields use `__`, e.g. `STOCKPIPE_TRAINING__EPOCHS=5`."""

    model_config = SettingsConfigDict(
        env_prefix="STOCKPIPE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    home: Path = Field(Path(".stockpipe"), description="Directory holding all local state.")
    tickers: list[str] = ["MSFT", "GSPC"]
    source: SourceKind = SourceKind.snapshot
    snapshot_dir: Path = BUNDLED_SNAPSHOTS
    csv_dir: Path | None = None
    suite_path: Path = BUNDLED_SUITE
    # Yahoo spells index symbols with a caret, which is not safe in paths or model names.
    yahoo_symbols: dict[str, str] = {"GSPC": "^GSPC"}
    exchanges: dict[str, str] = Field(
        {},
        description="Ticker -> exchange-calendars code (XNYS, XLON, XTKS, ...), as JSON, for a ticker whose Yahoo "
        "symbol's suffix does not say its exchange (pipeline.common.markets); without a suffix, New York.",
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="Defaults to MLFLOW_TRACKING_URI, else a SQLite database under `home`."
    )
    experiment_name: str = "stockpipe"
    min_relative_gain: float = Field(
        DEFAULT_MIN_RELATIVE_GAIN,
        ge=0,
        lt=1,
        description="Relative RMSE improvement over the champion a challenger needs to be promoted.",
    )
    promotion_alpha: float = Field(
        DEFAULT_PROMOTION_ALPHA,
        gt=0,
        le=1,
        description="A challenger is promoted only if the one-sided Diebold-Mariano p-value is below this.",
    )
    on_degraded: OnDegraded = Field(
        OnDegraded.fallback,
        description="When the champion goes bad on its live record: `fallback` (to `previous`, else the baseline v1) "
        "or `alert` (only mark it degraded).",
    )
    max_staleness_sessions: int = Field(
        3,
        ge=0,
        description="Newest stored session at most this many exchange sessions before the as-of date.",
    )
    csv_root: Path = Field(
        PROJECT_ROOT / "data",
        description="Deployed runs read --csv-dir folders only inside this root.",
    )
    max_input_bytes: int = Field(
        DEFAULT_MAX_INPUT_BYTES, ge=1, description="Largest price file one source read accepts."
    )
    quarantine_max_age_days: float = Field(30, ge=0, description="Rejected batches older than this are deleted.")
    quarantine_max_bytes: int = Field(
        200 * 2**20,
        ge=0,
        description="Quarantine is pruned, oldest first, to stay under this size.",
    )
    mlflow_ui_url: str = Field("http://127.0.0.1:5000", description="Base URL of the MLflow UI links point at.")
    max_workers: int = Field(DEFAULT_MAX_WORKERS, ge=1, description="Tickers processed at once.")
    fetch_backoff_seconds: float = Field(
        5.0, ge=0, description="First retry delay after a rate limit or network error; doubles per retry, with jitter."
    )
    fetch_rate_per_second: float = Field(
        2.0,
        gt=0,
        description="Yahoo requests per second across every ticker of a run (a Prefect global concurrency limit "
        "with this rate on a server; in-process without one).",
    )
    keep_lost_runs: int = Field(
        5,
        ge=0,
        description="Per ticker, the last runs whose challenger lost that keep their files (logged model, "
        "examples, plot, reports); older ones keep params, metrics, tags and description only.",
    )
    retention_days: float = Field(
        30, ge=0, description="A lost run's files are deleted after this many days, even among the last kept."
    )
    min_free_mb: float = Field(
        DEFAULT_MIN_FREE_MB,
        ge=0,
        description="Free space (MB) a ticker-day needs under `home` before it stores data and trains; less fails "
        "the ticker with DiskSpaceLow, nothing written. 50: five times the measured peak of a ticker-day (10 MB on "
        "a fresh home, 1.2 MB after; DEFAULT_MIN_FREE_MB). 0 turns the check off.",
    )
    # Alerts: each channel set here gets one message per event (pipeline.alerts, flows.alerts); none set, none sent.
    alert_webhook_url: SecretStr | None = Field(None, description="POST one JSON message per event here.")
    alert_slack_url: SecretStr | None = Field(None, description="A Slack incoming-webhook URL.")
    alert_teams_url: SecretStr | None = Field(None, description="A Microsoft Teams Workflows webhook URL.")
    alert_email_to: list[str] = Field([], description="Addresses an email per event goes to (needs the SMTP server).")
    alert_smtp_server: str | None = None
    alert_smtp_port: int = Field(465, ge=1, le=65535)
    alert_smtp_security: Literal["SSL", "STARTTLS", "INSECURE"] = "SSL"
    alert_smtp_username: str | None = None
    alert_smtp_password: SecretStr | None = None
    alert_email_from: str | None = Field(None, description="The sender; default: the SMTP username.")
    alert_retries: int = Field(2, ge=0, description="Retries of an alert a channel did not accept.")
    alert_retry_seconds: float = Field(2.0, ge=0, description="Wait before each retry of an alert.")
    alert_missed_run_hours: float = Field(
        26,
        gt=0,
        description="The server's missed-run automation fires when no daily-pipeline run completed for this long "
        "(the daily schedule's 24 hours plus 2 hours' grace).",
    )
    training: TrainingConfig = TrainingConfig()

    @field_validator("home", "snapshot_dir", "csv_dir", "suite_path", "csv_root")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        """Resolved once, where settings are read: GX, MLflow and Prefect each need absolute paths, and a relative
        one would mean another folder in every process that changes its working directory."""
        return None if path is None else path.expanduser().resolve()

    @field_validator("tickers")
    @classmethod
    def _tickers_are_symbols(cls, tickers: list[str]) -> list[str]:
        return [validate_ticker(t) for t in tickers]

    def exchange(self, ticker: str) -> str:
        """The calendar `ticker` trades on (UnknownMarket when neither its symbol nor `exchanges` says)."""
        return exchange_for(ticker, self.exchanges, self.yahoo_symbols.get(ticker))

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def forecasts_dir(self) -> Path:
        """The served forecasts, one Parquet file per ticker, scored when their session comes (the live record)."""
        return self.home / "forecasts"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def tracking_uri(self, environ: dict[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if env.get("MLFLOW_TRACKING_URI"):
            return env["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def price_folder(self) -> Path | None:
        """The folder a file-based source reads `<TICKER>.csv` from; None for Yahoo.

        The one place that knows a csv source needs a folder and that the folder must exist.
        """
        if self.source is SourceKind.yahoo:
            return None
        if self.source is SourceKind.csv:
            if self.csv_dir is None:
                raise ValueError("--source csv needs --csv-dir (or STOCKPIPE_CSV_DIR)")
            folder = self.csv_dir
        else:
            folder = self.snapshot_dir
        if not folder.is_dir():
            raise ValueError(f"price folder {folder} is not a directory")
        return folder
