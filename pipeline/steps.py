"""The daily pipeline's steps for one ticker, as plain functions the orchestrator wires together."""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline import journal
from pipeline.evaluation import forecast_metrics, shrinkage_toward_persistence
from pipeline.forecasters import LstmForecaster, forecasts_on, to_model_input
from pipeline.plots import forecast_figure
from pipeline.promotion import FAILED, SKIPPED, Decision, decide, decision_report, report_markdown
from pipeline.settings import TrainingConfig
from pipeline.sources import PriceSource
from pipeline.store import PriceStore, digest, merge_new_rows, overlap_disagreement
from pipeline.tracking import Tracker
from pipeline.validation import ValidationReport, validate_prices
from pipeline.windows import Dataset, build_dataset, min_rows_for

log = logging.getLogger(__name__)


class DataContractViolation(RuntimeError):
    """Prices broke a critical expectation; the store was left as it was."""

    def __init__(self, ticker: str, report: ValidationReport, quarantined: Path | None, docs_dir: Path | None = None):
        self.ticker = ticker
        self.report = report
        self.quarantined = quarantined
        self.docs_dir = docs_dir
        where = f"; batch quarantined in {quarantined}" if quarantined else ""
        failed = "; ".join(f.describe() for f in report.critical_failures)
        super().__init__(f"{ticker}: {report.subject} failed the data contract: {failed}{where}")


@dataclass
class Admitted:
    """Prices that passed the contract and may be stored and trained on."""

    ticker: str
    history: pd.DataFrame
    new_rows: int
    data_digest: str
    reports: list[ValidationReport] = field(default_factory=list)
    replaced_history: bool = False
    note: str = ""
    docs_dir: Path | None = None

    @property
    def changed(self) -> bool:
        """Whether the store must be rewritten with `history`."""
        return self.replaced_history or self.new_rows > 0

    @property
    def data_start(self) -> str:
        return self.history["Date"].min().strftime("%Y-%m-%d")

    @property
    def data_end(self) -> str:
        return self.history["Date"].max().strftime("%Y-%m-%d")


@dataclass
class Challenger:
    dataset: Dataset
    keras_model: Any
    forecaster: LstmForecaster
    training_history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    test_forecast: np.ndarray
    metrics: dict[str, float]
    warm_start_from: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # Tags its MLflow run, so a retry after a lost connection resumes that run instead of tracking it twice.
    challenger_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class TickerOutcome:
    ticker: str
    decision: str
    reason: str
    data_start: str | None = None
    data_end: str | None = None
    rows: int = 0
    new_rows: int = 0
    data_digest: str | None = None
    settings_digest: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    model_version: str | None = None
    champion_version: str | None = None
    champion_kind: str | None = None
    challenger_test_rmse: float | None = None
    champion_test_rmse: float | None = None
    naive_test_rmse: float | None = None
    u2: float | None = None
    challenger_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    finished_at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    @property
    def succeeded(self) -> bool:
        return self.decision != FAILED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# Calendar days re-fetched before the stored end, to notice a provider re-adjusting its history.
OVERLAP_DAYS = 7


@dataclass
class Fetched:
    """What a source returned: new rows after the stored end, or a full history that replaces the store."""

    rows: pd.DataFrame
    replaces_history: bool = False
    note: str = ""


def fetch_batch(source: PriceSource, store: PriceStore, ticker: str, as_of: dt.date) -> Fetched:
    history = store.read(ticker)
    since = None if history.empty else history["Date"].max().date()
    if since is None:
        rows = source.fetch(ticker, None, as_of)
        log.info("%s: fetched %d row(s) from %s (full history)", ticker, len(rows), source.name)
        return Fetched(rows)
    window = source.fetch(ticker, since - dt.timedelta(days=OVERLAP_DAYS), as_of)
    changed = overlap_disagreement(history, window.loc[window["Date"] <= pd.Timestamp(since)])
    if changed:
        rows = source.fetch(ticker, None, as_of)
        note = f"history re-adjusted by {source.name} ({changed}): re-fetched {len(rows)} row(s) to replace the store"
        log.warning("%s: %s", ticker, note)
        return Fetched(rows, replaces_history=True, note=note)
    rows = window.loc[(window["Date"] > pd.Timestamp(since)) | window["Date"].isna()].reset_index(drop=True)
    log.info("%s: fetched %d new row(s) from %s since %s", ticker, len(rows), source.name, since)
    return Fetched(rows)


def admit(
    ticker: str,
    history: pd.DataFrame,
    fetched: Fetched,
    *,
    suite: dict,
    as_of: dt.date,
    config: TrainingConfig,
    quarantine_dir: Path,
    reports_dir: Path,
) -> Admitted:
    """Validate the new batch, then the merged history; quarantine and raise on a critical failure."""
    docs_dir = Path(reports_dir) / ticker / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)  # the docs show this run's results, not an ever-growing list
    batch = fetched.rows
    reports = []
    if not batch.empty:
        batch_report = validate_prices(batch, subject=f"{ticker} {'replacement history' if fetched.replaces_history else 'new batch'}",
                                       suite_definition=suite, as_of=as_of, docs_dir=docs_dir)
        reports.append(batch_report)
        if not batch_report.passed:
            _save_reports(reports_dir, ticker, reports)
            raise DataContractViolation(ticker, batch_report, quarantine(quarantine_dir, ticker, batch, batch_report, docs_dir), docs_dir)
    merged = batch.reset_index(drop=True) if fetched.replaces_history else merge_new_rows(history, batch)
    merged_report = validate_prices(
        merged, subject=f"{ticker} merged history", suite_definition=suite, as_of=as_of, min_rows=min_rows_for(config),
        docs_dir=docs_dir,
    )
    reports.append(merged_report)
    _save_reports(reports_dir, ticker, reports)
    if not merged_report.passed:
        raise DataContractViolation(ticker, merged_report, quarantine(quarantine_dir, ticker, batch, merged_report, docs_dir), docs_dir)
    for report in reports:
        log.info("%s", report.summary())
    return Admitted(ticker, merged, len(merged) - len(history), digest(merged), reports,
                    replaced_history=fetched.replaces_history, note=fetched.note, docs_dir=docs_dir)


def quarantine(root: Path, ticker: str, batch: pd.DataFrame, report: ValidationReport,
               docs_dir: Path | None = None) -> Path | None:
    """Keep the rejected batch and why (the report and GX's Data Docs), so nothing fetched is lost."""
    if batch.empty:
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    folder = Path(root) / ticker / stamp
    folder.mkdir(parents=True, exist_ok=True)
    batch.to_csv(folder / "batch.csv", index=False)
    (folder / "validation.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    if docs_dir is not None and Path(docs_dir).is_dir():
        shutil.copytree(docs_dir, folder / "data_docs")
    log.warning("%s: rejected batch of %d row(s) quarantined in %s", ticker, len(batch), folder)
    return folder


def _save_reports(reports_dir: Path, ticker: str, reports: list[ValidationReport]) -> Path:
    folder = Path(reports_dir) / ticker
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "validation.json"
    path.write_text(json.dumps([r.to_json() for r in reports], indent=2, default=str))
    return path


def record_rejection(tracker: Tracker, violation: DataContractViolation, *, as_of: dt.date, source: str,
                     run_tags: dict[str, str]) -> str:
    """A failed MLflow run holding the validation reports, so a rejection is visible where runs are compared."""
    ticker = violation.ticker
    tags = {**run_tags, "ticker": ticker, "role": "daily", "source": source, "decision": FAILED,
            "decision_reason": str(violation)[:4000], "as_of": as_of.isoformat()}
    run_id = tracker.start_run(f"{ticker} {as_of} rejected", tags)
    try:
        tracker.log_json(run_id, violation.report.to_json(), "validation/validation.json")
        if violation.docs_dir is not None and Path(violation.docs_dir).is_dir():
            tracker.log_artifacts(run_id, violation.docs_dir, "validation/data_docs")
    finally:
        tracker.end_run(run_id, "FAILED")
    return run_id


def already_trained(reports_dir: Path, ticker: str, data_digest: str, settings_digest: str) -> bool:
    """True when the last successful run of this ticker saw the same data with the same settings."""
    last = journal.read(reports_dir, ticker)
    return bool(
        last
        and last.get("decision") not in (FAILED, None)
        and last.get("data_digest") == data_digest
        and last.get("settings_digest") == settings_digest
    )


def skipped(admitted: Admitted, settings_digest: str, previous: dict | None) -> TickerOutcome:
    carried = {k: (previous or {}).get(k) for k in ("run_id", "run_url", "model_version", "champion_version", "champion_kind",
                                                   "challenger_test_rmse", "champion_test_rmse", "naive_test_rmse", "u2")}
    return TickerOutcome(
        ticker=admitted.ticker,
        decision=SKIPPED,
        reason=f"no new data since {admitted.data_end} and the same settings: model is up to date (use --force to retrain)",
        data_start=admitted.data_start,
        data_end=admitted.data_end,
        rows=len(admitted.history),
        data_digest=admitted.data_digest,
        settings_digest=settings_digest,
        **carried,
    )


@dataclass(frozen=True)
class WarmStart:
    weights: list
    origin: str  # e.g. "v3", recorded with the run


def warm_start_from_champion(tracker: Tracker, ticker: str, config: TrainingConfig) -> WarmStart | None:
    """The champion's LSTM weights when they fit today's network; None (and why, in the log) otherwise."""
    from pipeline.features import FEATURE_NAMES
    from pipeline.model import weights_fit

    champion = tracker.champion(ticker)
    if champion is None or champion.kind != LstmForecaster.kind:
        log.info("%s: no LSTM champion to warm-start from (%s); training from scratch", ticker,
                 "none registered" if champion is None else f"champion is {champion.kind}")
        return None
    served = tracker.load(champion.model_uri).unwrap_python_model()
    weights = served.keras_model.get_weights()
    if served.window != config.window or not weights_fit(weights, config.window, len(FEATURE_NAMES), config):
        log.info("%s: champion v%s has another architecture; training from scratch", ticker, champion.version)
        return None
    log.info("%s: warm start from champion v%s", ticker, champion.version)
    return WarmStart(weights, f"v{champion.version}")


def market_closed(ticker: str, as_of: dt.date, previous: dict | None) -> TickerOutcome:
    """A run on a day the exchange did not trade, with the store already current: nothing to do."""
    carried = {k: (previous or {}).get(k) for k in ("data_start", "data_end", "rows", "data_digest", "settings_digest",
                                                   "run_id", "run_url", "model_version", "champion_version", "champion_kind",
                                                   "challenger_test_rmse", "champion_test_rmse", "naive_test_rmse", "u2")}
    return TickerOutcome(ticker=ticker, decision=SKIPPED,
                         reason=f"market closed on {as_of}: no new session to fetch", **{k: v for k, v in carried.items() if v is not None})


def train_challenger(
    history: pd.DataFrame, config: TrainingConfig, ticker: str, warm_start: WarmStart | None = None
) -> Challenger:
    from pipeline.model import train_lstm

    started = time.perf_counter()
    dataset = build_dataset(history, config)
    windowed = time.perf_counter()
    log.info(
        "%s: %d train / %d validation / %d test windows (test %s..%s)",
        ticker, len(dataset.train.y), len(dataset.val.y), len(dataset.test.y),
        dataset.test.target_date[0].date(), dataset.test.target_date[-1].date(),
    )
    trained = train_lstm(dataset, config, label=ticker, initial_weights=warm_start.weights if warm_start else None)
    fitted = time.perf_counter()
    shrinkage = validation_shrinkage(trained.keras_model, dataset)
    forecaster = LstmForecaster(trained.keras_model, dataset.scaler, dataset.window, shrinkage)
    predictions = forecaster.predict(None, to_model_input(dataset.history))
    test_forecast = forecasts_on(predictions, dataset.test.as_of)
    metrics = forecast_metrics(dataset.test.next_close, test_forecast, dataset.test.last_close)
    evaluated = time.perf_counter()
    log.info(
        "%s: trained %d epochs in %.1fs (best %d, shrinkage %.2f); test RMSE %.4f vs naive %.4f (U2 %.3f)",
        ticker, trained.epochs_run, fitted - windowed, trained.best_epoch, shrinkage, metrics["rmse"],
        metrics["naive_rmse"], metrics["u2"],
    )
    return Challenger(
        dataset=dataset,
        keras_model=trained.keras_model,
        forecaster=forecaster,
        training_history=trained.history,
        best_epoch=trained.best_epoch,
        epochs_run=trained.epochs_run,
        train_seconds=fitted - windowed,
        test_forecast=test_forecast,
        metrics=metrics,
        warm_start_from=warm_start.origin if warm_start else None,
        timings={"window": round(windowed - started, 3), "train": round(fitted - windowed, 3),
                 "evaluate": round(evaluated - fitted, 3)},
    )


def validation_shrinkage(keras_model, dataset: Dataset) -> float:
    """How much of the network's predicted return held up on the validation days (never the test days)."""
    scaled = np.asarray(keras_model(dataset.val.x, training=False)).reshape(-1)
    predicted = dataset.scaler.inverse_target(scaled)
    actual = np.log(dataset.val.next_close / dataset.val.last_close)
    return shrinkage_toward_persistence(predicted, actual)


def score_on_test_days(model, dataset: Dataset) -> float:
    """RMSE of any served forecaster on a dataset's test days, from the same raw history."""
    from sklearn.metrics import root_mean_squared_error

    predictions = model.predict(to_model_input(dataset.history))
    return float(root_mean_squared_error(dataset.test.next_close, forecasts_on(predictions, dataset.test.as_of)))


def track_and_promote(
    tracker: Tracker,
    admitted: Admitted,
    challenger: Challenger,
    *,
    config: TrainingConfig,
    margin: float,
    source: str,
    run_tags: dict[str, str],
) -> TickerOutcome:
    """Log the challenger's run and model, re-score the champion on its test days, register and decide.

    A version is created only after its run holds the metrics and the decision report, with the decision in its
    tags from the start. Calling this again for the same challenger (a retry after the tracking server went away)
    resumes its run: nothing is logged or registered twice, and a decision already registered is applied, never
    re-taken against a champion it may itself have become.
    """
    ticker = admitted.ticker
    settings_digest = config.digest()
    champion = tracker.ensure_baseline(ticker, admitted.history, run_tags)
    resumed = tracker.challenger_run(ticker, challenger.challenger_id)
    version = tracker.version_of_run(ticker, resumed.info.run_id) if resumed else None
    metrics = challenger.metrics
    if version is not None:
        decision = registered_decision(version.tags, resumed.data.metrics)
        champion_before = resumed.data.tags["champion_before"]
    else:
        champion_rmse = score_on_test_days(tracker.load(champion.model_uri), challenger.dataset)
        decision = decide(metrics["rmse"], champion_rmse, margin)
        champion_before = f"v{champion.version} ({champion.kind})"
    test = challenger.dataset.test
    tags = {
        **run_tags,
        "ticker": ticker,
        "role": "daily",
        "source": source,
        "data_end": admitted.data_end,
        "data_digest": admitted.data_digest,
        "settings_digest": settings_digest,
        "champion_before": champion_before,
        "challenger_id": challenger.challenger_id,
        **({"history_replaced": admitted.note} if admitted.replaced_history else {}),
    }
    summary = {
        "decision": decision.verdict,
        "decision_reason": decision.reason,
        "challenger_test_rmse": f"{metrics['rmse']:.6f}",
        "champion_test_rmse": f"{decision.champion_rmse:.6f}",
        "naive_test_rmse": f"{metrics['naive_rmse']:.6f}",
        "u2": f"{metrics['u2']:.4f}",
        "data_end": admitted.data_end,
        "data_digest": admitted.data_digest,
        "settings_digest": settings_digest,
        "promotion_margin": f"{decision.margin}",
        "test_days": f"{test.target_date[0].date()}..{test.target_date[-1].date()} ({len(test.y)})",
        "champion_before": champion_before,
    }
    if resumed is not None:
        run_id = resumed.info.run_id
        log.warning("%s: resuming MLflow run %s after an interrupted attempt", ticker, run_id)
    else:
        run_id = tracker.start_run(f"{ticker} {admitted.data_end}", tags)
    try:
        if version is None:
            log_challenger(tracker, run_id, resumed, admitted, challenger, config=config, margin=margin, source=source,
                           champion_rmse=decision.champion_rmse)
            model_info = tracker.log_lstm(run_id, challenger.forecaster, challenger.keras_model,
                                          LstmForecaster.preprocessing_spec(challenger.dataset.window,
                                                                            challenger.dataset.scaler,
                                                                            challenger.forecaster.shrinkage),
                                          admitted.history)
            report = decision_report(
                decision, ticker=ticker, challenger=f"lstm, run {run_id}", champion=champion_before,
                naive_rmse=metrics["naive_rmse"], test_days=[d.strftime("%Y-%m-%d") for d in test.target_date],
                data_digest=admitted.data_digest, dm_stat=metrics.get("dm_stat"), dm_pvalue=metrics.get("dm_pvalue"),
            )
            tracker.log_json(run_id, report, "promotion/decision.json")
            tracker.log_text(run_id, report_markdown(report), "promotion/decision.md")
            version = tracker.register_challenger(ticker, run_id, model_info.model_uri, summary, model_info.model_id)
        current = tracker.champion(ticker)
        if decision.promote and (current is None or current.version != str(version.version)):
            tracker.promote(ticker, version.version)
        tracker.set_tags(run_id, {**summary, "model_version": str(version.version)})
        tracker.end_run(run_id, "FINISHED")
    except BaseException:
        # Best effort: with the server gone this fails too, and must not hide why the step failed.
        with suppress(Exception):
            tracker.end_run(run_id, "FAILED")
        raise
    log.info("%s: %s v%s (%s)", ticker, decision.verdict, version.version, decision.reason)
    current = tracker.champion(ticker)
    return TickerOutcome(
        ticker=ticker,
        decision=decision.verdict,
        reason=decision.reason,
        data_start=admitted.data_start,
        data_end=admitted.data_end,
        rows=len(admitted.history),
        new_rows=admitted.new_rows,
        data_digest=admitted.data_digest,
        settings_digest=settings_digest,
        run_id=run_id,
        run_url=tracker.run_url(run_id),
        model_version=str(version.version),
        champion_version=current.version if current else None,
        champion_kind=current.kind if current else None,
        challenger_test_rmse=metrics["rmse"],
        champion_test_rmse=decision.champion_rmse,
        naive_test_rmse=metrics["naive_rmse"],
        u2=metrics["u2"],
        challenger_id=challenger.challenger_id,
    )


def log_challenger(tracker: Tracker, run_id: str, resumed, admitted: Admitted, challenger: Challenger, *,
                   config: TrainingConfig, margin: float, source: str, champion_rmse: float) -> None:
    """The run's parameters, metrics, dataset and reports; on a resumed run, only what is not there yet."""
    test = challenger.dataset.test
    params = {
        **config.model_dump(),
        "ticker": admitted.ticker,
        "source": source,
        "data_start": admitted.data_start,
        "data_end": admitted.data_end,
        "data_rows": len(admitted.history),
        "data_digest": admitted.data_digest,
        "train_start": challenger.dataset.train.as_of[0].date(),
        "test_start": test.target_date[0].date(),
        "test_end": test.target_date[-1].date(),
        "test_days": len(test.y),
        "promotion_margin": margin,
        "warm_start_from": challenger.warm_start_from or "none",
    }
    logged = resumed.data if resumed is not None else None
    missing = {k: v for k, v in params.items() if logged is None or k not in logged.params}
    if missing:
        tracker.log_params(run_id, missing)
    # One batch (well under the server's limit), so the metrics are either all there or not at all.
    if logged is None or "test_rmse" not in logged.metrics:
        tracker.log_metrics(run_id, {
            **{f"test_{k}": v for k, v in challenger.metrics.items()},
            "champion_test_rmse": champion_rmse,
            "best_epoch": challenger.best_epoch,
            "validation_shrinkage": challenger.forecaster.shrinkage,
            "epochs_run": challenger.epochs_run,
            "train_seconds": challenger.train_seconds,
        }, history=challenger.training_history)
    if resumed is None or not resumed.inputs.dataset_inputs:
        tracker.log_dataset(run_id, admitted.history, name=f"{admitted.ticker}-prices", source=source,
                            digest=admitted.data_digest)
    tracker.log_json(run_id, [r.to_json() for r in admitted.reports], "validation/validation.json")
    if admitted.docs_dir is not None and admitted.docs_dir.is_dir():
        tracker.log_artifacts(run_id, admitted.docs_dir, "validation/data_docs")
    tracker.log_figure(run_id, forecast_figure(admitted.ticker, test, challenger.test_forecast), "plots/test_forecast.png")


def registered_decision(version_tags: dict[str, str], run_metrics: dict[str, float]) -> Decision:
    """The decision a registered version carries, as it was taken before any alias moved."""
    return Decision(
        verdict=version_tags["decision"],
        reason=version_tags["decision_reason"],
        challenger_rmse=float(run_metrics["test_rmse"]),
        champion_rmse=float(run_metrics["champion_test_rmse"]),
        margin=float(version_tags.get("promotion_margin", "0")),
    )


INTERRUPTED_REASON = "interrupted: the tracking server became unreachable before this run finished"


def close_interrupted(tracker: Tracker, ticker: str, challenger_id: str) -> str | None:
    """Settle the run of a challenger whose tracking was cut off for good (every retry failed).

    If its version became champion, only the bookkeeping was lost: the run is finished. Otherwise the run is marked
    FAILED and a version it registered says it was never applied, so no version claims a promotion that did not
    happen. Returns what was done, or None when there was nothing to settle.
    """
    run = tracker.challenger_run(ticker, challenger_id)
    if run is None or run.info.status == "FINISHED" or run.data.tags.get("interrupted"):
        return None
    run_id = run.info.run_id
    version = tracker.version_of_run(ticker, run_id)
    champion = tracker.champion(ticker)
    if version is not None and champion is not None and champion.version == str(version.version):
        # The version's tags hold the run's summary (decision, RMSEs, digests) that never reached the run.
        tracker.set_tags(run_id, {**version.tags, "interrupted": "after the promotion: only the run's tags were lost",
                                  "model_version": str(version.version)})
        tracker.end_run(run_id, "FINISHED")
        done = f"run {run_id} finished: v{version.version} had become champion before tracking was cut off"
    else:
        if version is not None:
            tracker.tag_version(ticker, version.version, {
                "decision": FAILED,
                "decision_reason": f"{INTERRUPTED_REASON}; its decision ({version.tags.get('decision')}) was never "
                                   f"applied and the champion stayed {f'v{champion.version}' if champion else 'unset'}",
            })
        tracker.set_tags(run_id, {"interrupted": INTERRUPTED_REASON, "decision": FAILED,
                                  "decision_reason": INTERRUPTED_REASON})
        tracker.end_run(run_id, "FAILED")
        done = f"run {run_id} marked FAILED" + (f", v{version.version} marked never applied" if version else "")
    log.warning("%s: settled an interrupted tracking attempt: %s", ticker, done)
    return done
