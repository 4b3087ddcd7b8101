"""The real `daily-pipeline` flow on bundled data: MLflow runs that read like a record, a registry of what served,
the champion alias, Prefect's artifacts, and bad batches that change nothing."""

from __future__ import annotations

import datetime as dt
import re

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.daily import PROGRESS_KEY, SUMMARY_KEY, daily_pipeline
from pipeline.common.outcome import Decision, TickerOutcome
from pipeline.common.symbols import registered_model_name
from pipeline.data.store import PriceStore
from pipeline.evaluation.promotion import CHAMPION_ALIAS, PREVIOUS_ALIAS
from pipeline.registry import journal
from pipeline.registry.tracking import Tracker
from tests.readme import section
from tests.support import MSFT_LAST_SESSION, plant_lstm_champion

pytestmark = pytest.mark.integration

AS_OF = MSFT_LAST_SESSION
# What a run may log beyond the model itself: the validation report, the decision, the plot, the model summary.
RUN_ARTIFACTS_BUDGET = 300 * 1024


def run_flow(**params) -> list[TickerOutcome]:
    state = daily_pipeline(return_state=True, **params)
    outcomes = state.result(raise_on_failure=False)
    assert isinstance(outcomes, list), f"flow failed before any ticker ran: {outcomes}"
    return outcomes


def by_ticker(outcomes: list[TickerOutcome]) -> dict[str, TickerOutcome]:
    return {o.ticker: o for o in outcomes}


def client_for(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri())


def readme_names(kind: str) -> set[str]:
    """Names in the README's table of what a run holds, for one kind (tag, param, metric), patterns expanded."""
    names = set()
    for row in re.findall(r"^\| (tag|param|metric) \| (.+?) \|", section("Looking at the results"), flags=re.M):
        if row[0] != kind:
            continue
        for name in re.findall(r"`([^`]+)`", row[1]):
            names |= expand(name)
    return names


def expand(pattern: str) -> set[str]:
    """`{challenger,champion}_rmse` -> both names; a trailing `*` stays a prefix pattern."""
    match = re.search(r"\{([^}]+)\}", pattern)
    if not match:
        return {pattern}
    return set().union(
        *(expand(pattern[: match.start()] + option + pattern[match.end() :]) for option in match.group(1).split(","))
    )


def documented(name: str, names: set[str]) -> bool:
    return name in names or any(n.endswith("*") and name.startswith(n[:-1]) for n in names)


def artifact_bytes(client: MlflowClient, run_id: str, path: str | None = None) -> int:
    total = 0
    for item in client.list_artifacts(run_id, path):
        total += artifact_bytes(client, run_id, item.path) if item.is_dir else (item.file_size or 0)
    return total


def test_a_daily_run_trains_records_and_decides_each_ticker(settings):
    outcomes = by_ticker(run_flow(tickers=["MSFT", "GSPC"], as_of=AS_OF))
    client = client_for(settings)
    params, metrics = readme_names("param"), readme_names("metric")
    tags = readme_names("tag")
    for ticker, outcome in outcomes.items():
        assert outcome.decision in (Decision.promoted, Decision.kept), outcome
        name = registered_model_name(ticker)
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        # The registry is the history of what served: the baseline, then only challengers that became champion.
        expected = ["naive", "lstm"] if outcome.decision is Decision.promoted else ["naive"]
        assert [v.tags["model_kind"] for v in versions] == expected
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        assert (
            str(champion.version) == outcome.champion_version == ("2" if outcome.decision is Decision.promoted else "1")
        )

        run = client.get_run(outcome.run_id)
        assert run.info.run_name == f"{ticker} {outcome.data_end} #1"
        assert run.info.status == "FINISHED"
        assert run.data.tags["decision"] == outcome.decision.value and run.data.tags["prefect_flow_run_id"]
        description = run.data.tags["mlflow.note.content"]
        assert description.startswith(("**Promoted**", "**Kept**")) and "| relative_gain |" in description
        # One naming scheme, documented; nothing logged twice under two names.
        undocumented_params = {p for p in run.data.params if not documented(p, params)}
        undocumented_metrics = {m for m in run.data.metrics if not documented(m, metrics)}
        undocumented_tags = {t for t in run.data.tags if not t.startswith("mlflow.") and not documented(t, tags)}
        assert not (undocumented_params or undocumented_metrics or undocumented_tags), (
            undocumented_params,
            undocumented_metrics,
            undocumented_tags,
        )
        assert not set(run.data.params) & set(run.data.tags), "a param is never repeated as a tag"
        for metric in (
            "challenger_rmse",
            "champion_rmse",
            "naive_rmse",
            "u2",
            "dm_pvalue",
            "blocks_won",
            "challenger_coverage_80",
            "challenger_coverage_95",
            "garch_t_winkler_80",
            "ewma_coverage_95",
            "champion_kupiec_p_80",
            "naive_christoffersen_p_95",
            "challenger_pinball",
            "relative_gain",
        ):
            assert metric in run.data.metrics, metric
        epochs = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in epochs] == list(range(int(run.data.metrics["epochs_run"]))), "one point per epoch"
        blocks = client.get_metric_history(run.info.run_id, "challenger_rmse_by_block")
        assert [m.step for m in blocks] == [1, 2, 3, 4, 5]
        assert run.info.end_time - run.info.start_time >= 1000 * run.data.metrics["train_seconds"] * 0.9, (
            "the run opens before training, so its duration includes it"
        )
        artifacts = {
            a.path
            for folder in ("plots", "validation", "decision")
            for a in client.list_artifacts(run.info.run_id, folder)
        }
        assert {
            "plots/forecast.png",
            "validation/report.html",
            "validation/result.json",
            "decision/decision.json",
        } <= artifacts
        assert artifact_bytes(client, run.info.run_id) < RUN_ARTIFACTS_BUDGET
        assert run.inputs.dataset_inputs, "the training data is logged as an MLflow dataset"
        (logged,) = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
        assert logged.tags["model_kind"] == "lstm", "every challenger stays a logged model of its run"

    # The champion serves through MLflow's pyfunc loader too, with pickles refused (models-from-code).
    model = mlflow.pyfunc.load_model(f"models:/{registered_model_name('MSFT')}@{CHAMPION_ALIAS}")
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT").tail(300)
    from pipeline.models.forecasters import to_model_input

    forecast = model.predict(to_model_input(history))
    assert forecast["as_of"].iloc[-1] == AS_OF.isoformat()
    assert forecast["forecast_close"].iloc[-1] == pytest.approx(history["Close"].iloc[-1], rel=0.1)
    assert forecast["lower_80"].iloc[-1] < forecast["forecast_close"].iloc[-1] < forecast["upper_80"].iloc[-1]


def test_the_flow_run_shows_a_table_links_and_progress_in_prefect(settings):
    state = daily_pipeline(tickers=["MSFT"], as_of=AS_OF, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    assert run.name == "daily 2017-11-10 MSFT", "runs are named after what they are about"
    by_key = {a.key: a for a in artifacts}
    summary = by_key[SUMMARY_KEY]
    assert summary.type == "table"
    assert '"ticker": "MSFT"' in summary.data and '"coverage 80%"' in summary.data
    assert by_key["mlflow-run-msft"].type == "markdown" and "/#/experiments/" in by_key["mlflow-run-msft"].data
    assert by_key[PROGRESS_KEY].type == "progress" and float(by_key[PROGRESS_KEY].data) == pytest.approx(100.0)


def test_rerun_without_new_data_skips_and_force_retrains_as_a_second_attempt(settings):
    first = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    again = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    assert again.decision is Decision.skipped and "no new data" in again.reason
    assert again.challenger_test_rmse == first.challenger_test_rmse and again.run_id == first.run_id
    forced = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF, force=True))["MSFT"]
    assert forced.decision in (Decision.promoted, Decision.kept)
    assert client_for(settings).get_run(forced.run_id).info.run_name == "MSFT 2017-11-10 #2"
    if first.decision is Decision.promoted:
        # The same seed and data give the same network again: a tie, which never promotes.
        assert forced.decision is Decision.kept and forced.champion_version == first.champion_version


def test_new_data_is_merged_incrementally(settings):
    run_flow(tickers=["MSFT"], as_of=dt.date(2017, 10, 31))
    store = PriceStore(settings.store_dir, settings.locks_dir)
    assert store.last_date("MSFT") == dt.date(2017, 10, 31)
    later = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    assert later.new_rows == 8  # the sessions from 1 to 10 November 2017
    assert store.last_date("MSFT") == AS_OF
    assert store.read("MSFT")["Date"].is_unique


def test_a_challenger_that_beats_a_weak_champion_on_evidence_is_promoted(settings):
    run_flow(tickers=["MSFT"], as_of=AS_OF)
    client = client_for(settings)
    name = registered_model_name("MSFT")
    tracker = Tracker.connect(settings.tracking_uri(), settings.experiment_name, settings.artifacts_dir)
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT")
    weak = plant_lstm_champion(tracker, "MSFT", history, settings.training, return_bias=0.03)
    promoted = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF, force=True))["MSFT"]
    assert promoted.decision is Decision.promoted, promoted.reason
    assert promoted.challenger_test_rmse < promoted.champion_test_rmse
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == promoted.model_version
    assert str(client.get_model_version_by_alias(name, PREVIOUS_ALIAS).version) == weak
    version = client.get_model_version(name, promoted.model_version)
    assert version.tags["decision"] == "promoted" and version.description.startswith("**Promoted**")


def corrupt(prices: pd.DataFrame, kind: str) -> pd.DataFrame:
    """One realistic way a CSV export goes wrong, on 7 November 2017 (inside the new batch)."""
    day = prices["Date"] == "2017-11-07"
    out = prices.copy()
    if kind == "duplicate date":
        return pd.concat([out, out[day]]).sort_values("Date", kind="stable")
    if kind == "negative price":
        out.loc[day, "Close"] = -1.0
    elif kind == "high below low":
        out.loc[day, "High"] = out.loc[day, "Low"] - 1.0
    elif kind == "missing close":
        out.loc[day, "Close"] = float("nan")
    elif kind == "ten-fold jump":
        out.loc[day, ["Open", "High", "Low", "Close"]] *= 10
    return out


CORRUPTIONS = {
    "duplicate date": "expect_column_values_to_be_unique(Date): 2 row(s)",  # GX counts both copies
    "negative price": "expect_column_values_to_be_between(Close): 1 row(s): 2017-11-07",
    "high below low": "expect_column_pair_values_a_to_be_greater_than_b(High>=Low): 1 row(s): 2017-11-07",
    "missing close": "expect_column_values_to_not_be_null(Close): 1 row(s): 2017-11-07",
    "ten-fold jump": "expect_column_values_to_be_between(LogReturn): 2 row(s): 2017-11-07, 2017-11-08",
}


def test_bad_batches_are_quarantined_as_received_and_change_nothing(settings, csv_dir):
    good = by_ticker(
        run_flow(tickers=["MSFT", "GSPC"], source="csv", csv_dir=str(csv_dir), as_of=dt.date(2017, 10, 31))
    )
    assert good["MSFT"].succeeded
    store = PriceStore(settings.store_dir, settings.locks_dir)
    before = store.path("MSFT").read_bytes()
    client = client_for(settings)
    name = registered_model_name("MSFT")
    champion_before = client.get_model_version_by_alias(name, CHAMPION_ALIAS).version
    versions_before = len(client.search_model_versions(f"name = '{name}'"))
    clean = pd.read_csv(csv_dir / "MSFT.csv")

    for kind, named in CORRUPTIONS.items():
        corrupt(clean, kind).to_csv(csv_dir / "MSFT.csv", index=False)
        state = daily_pipeline(tickers=["MSFT"], source="csv", csv_dir=str(csv_dir), as_of=AS_OF, return_state=True)
        (outcome,) = state.result(raise_on_failure=False)
        assert state.is_failed(), kind
        assert outcome.decision is Decision.failed and named in outcome.reason, (kind, outcome.reason)
        assert store.path("MSFT").read_bytes() == before, f"{kind}: the store must stay byte-for-byte unchanged"
        assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == champion_before, kind
        assert len(client.search_model_versions(f"name = '{name}'")) == versions_before, kind
        latest = max((settings.quarantine_dir / "MSFT").iterdir())
        assert (latest / "MSFT.csv").read_bytes() == (csv_dir / "MSFT.csv").read_bytes(), "kept as received"

    kept = sorted((settings.quarantine_dir / "MSFT").iterdir())
    assert len(kept) == len(CORRUPTIONS)
    assert all((q / "validation.json").exists() and (q / "validation.html").exists() for q in kept)
    assert journal.read(settings.reports_dir, "MSFT").decision is Decision.failed
    rejected = client.search_runs(
        [client.get_experiment_by_name(settings.experiment_name).experiment_id],
        filter_string="tags.ticker = 'MSFT' and tags.decision = 'failed'",
    )
    assert len(rejected) == len(CORRUPTIONS), "each rejection is visible in MLflow as a failed run"
    assert {a.path for a in client.list_artifacts(rejected[0].info.run_id, "validation")} >= {
        "validation/report.html",
        "validation/result.json",
    }

    clean.to_csv(csv_dir / "MSFT.csv", index=False)
    repaired = by_ticker(run_flow(tickers=["MSFT"], source="csv", csv_dir=str(csv_dir), as_of=AS_OF))["MSFT"]
    assert repaired.succeeded and repaired.new_rows == 8, "a repaired export is merged as usual"
