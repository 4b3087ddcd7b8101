"""The real `daily-pipeline` flow on bundled data: MLflow runs, registered versions, the champion alias."""

from __future__ import annotations

import datetime as dt

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.daily import daily_pipeline
from pipeline import journal
from pipeline.forecasters import NAIVE
from pipeline.promotion import CHAMPION_ALIAS, FAILED, KEPT, PROMOTED, SKIPPED
from pipeline.store import PriceStore
from pipeline.symbols import registered_model_name
from tests.integration.planted import BiasedForecaster, OracleForecaster, install_champion

pytestmark = pytest.mark.integration

AS_OF = dt.date(2017, 11, 10)  # last MSFT session in the snapshot


def run_flow(**params) -> list[dict]:
    state = daily_pipeline(return_state=True, **params)
    outcomes = state.result(raise_on_failure=False)
    assert isinstance(outcomes, list), f"flow failed before any ticker ran: {outcomes}"
    return outcomes


def by_ticker(outcomes: list[dict]) -> dict[str, dict]:
    return {o["ticker"]: o for o in outcomes}


def client_for(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri())


def test_daily_run_trains_logs_registers_and_decides(settings):
    outcomes = by_ticker(run_flow(tickers=["MSFT", "GSPC"], as_of=AS_OF))
    client = client_for(settings)
    for ticker, outcome in outcomes.items():
        assert outcome["decision"] in (PROMOTED, KEPT), outcome
        assert outcome["data_end"] <= AS_OF.isoformat()
        name = registered_model_name(ticker)
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        # Version 1 is the naive baseline, version 2 the first LSTM challenger.
        assert [v.tags["model_kind"] for v in versions] == [NAIVE, "lstm"]
        assert versions[1].tags["decision"] == outcome["decision"]
        assert float(versions[1].tags["naive_test_rmse"]) == pytest.approx(outcome["naive_test_rmse"], rel=1e-5)
        champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        assert str(champion.version) == ("2" if outcome["decision"] == PROMOTED else "1")

        run = client.get_run(outcome["run_id"])
        assert run.info.run_name == f"{ticker} {outcome['data_end']}"
        assert run.data.tags["ticker"] == ticker and run.data.tags["decision"] == outcome["decision"]
        assert run.data.tags["prefect_flow_run_id"]
        for metric in ("test_rmse", "test_mae", "test_mape", "test_directional_accuracy", "test_naive_rmse",
                       "test_u2", "test_dm_stat", "test_dm_pvalue", "champion_test_rmse"):
            assert metric in run.data.metrics, metric
        assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 1
        assert run.data.params["data_digest"] == outcome["data_digest"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
            a.path for folder in ("plots", "validation", "promotion") for a in client.list_artifacts(run.info.run_id, folder)}
        assert {"plots/test_forecast.png", "validation/validation.json", "promotion/decision.json"} <= artifacts
        assert run.inputs.dataset_inputs, "the training data should be logged as an MLflow dataset"

    # The champion serves forecasts from raw prices, whatever its kind.
    model = mlflow.pyfunc.load_model(f"models:/{registered_model_name('MSFT')}@{CHAMPION_ALIAS}")
    history = PriceStore(settings.store_dir, settings.locks_dir).read("MSFT").tail(80)
    from pipeline.forecasters import to_model_input

    forecast = model.predict(to_model_input(history))
    assert forecast["as_of"].iloc[-1] == AS_OF.isoformat()
    assert forecast["forecast_close"].iloc[-1] == pytest.approx(history["Close"].iloc[-1], rel=0.1)


def test_rerun_without_new_data_skips_and_force_retrains(settings):
    first = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    again = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    assert again["decision"] == SKIPPED
    assert "no new data" in again["reason"]
    assert again["challenger_test_rmse"] == first["challenger_test_rmse"]
    versions = client_for(settings).search_model_versions(f"name = '{registered_model_name('MSFT')}'")
    assert len(versions) == 2, "a skipped run must not register anything"

    forced = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF, force=True))["MSFT"]
    assert forced["decision"] in (PROMOTED, KEPT)
    assert len(client_for(settings).search_model_versions(f"name = '{registered_model_name('MSFT')}'")) == 3


def test_new_data_is_merged_incrementally(settings):
    run_flow(tickers=["MSFT"], as_of=dt.date(2017, 10, 31))
    store = PriceStore(settings.store_dir, settings.locks_dir)
    assert store.last_date("MSFT") == dt.date(2017, 10, 31)
    later = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF))["MSFT"]
    assert later["new_rows"] == 8  # the sessions from 1 to 10 November 2017
    assert store.last_date("MSFT") == AS_OF
    assert store.read("MSFT")["Date"].is_unique


def test_better_challenger_is_promoted_and_worse_is_kept(settings):
    run_flow(tickers=["MSFT"], as_of=AS_OF)
    client = client_for(settings)
    name = registered_model_name("MSFT")

    bad = install_champion(settings, "MSFT", BiasedForecaster(), "biased")
    promoted = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF, force=True))["MSFT"]
    assert promoted["decision"] == PROMOTED
    assert promoted["challenger_test_rmse"] < promoted["champion_test_rmse"]
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == promoted["model_version"]
    assert str(client.get_model_version_by_alias(name, "previous").version) == bad

    prices = pd.read_csv(settings.snapshot_dir / "MSFT.csv")
    oracle = install_champion(settings, "MSFT", OracleForecaster(dict(zip(prices["Date"], prices["Close"].shift(-1)))), "oracle")
    kept = by_ticker(run_flow(tickers=["MSFT"], as_of=AS_OF, force=True))["MSFT"]
    assert kept["decision"] == KEPT
    assert kept["champion_test_rmse"] == pytest.approx(0.0, abs=1e-9)
    assert str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version) == oracle
    kept_version = client.get_model_version(name, kept["model_version"])
    assert kept_version.tags["decision"] == KEPT, "a kept challenger is still registered with its decision"


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
    "negative price": "expect_column_values_to_be_between(Close): 1 row(s)",
    "high below low": "expect_column_pair_values_a_to_be_greater_than_b(High>=Low): 1 row(s)",
    "missing close": "expect_column_values_to_not_be_null(Close): 1 row(s)",
    "ten-fold jump": "expect_column_values_to_be_between(LogReturn): 2 row(s)",
}


def test_bad_batches_are_quarantined_and_change_nothing(settings, csv_dir):
    good = by_ticker(run_flow(tickers=["MSFT", "GSPC"], source="csv", csv_dir=str(csv_dir), as_of=dt.date(2017, 10, 31)))
    assert good["MSFT"]["decision"] != FAILED
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
        assert outcome["decision"] == FAILED and named in outcome["reason"], (kind, outcome["reason"])
        assert store.path("MSFT").read_bytes() == before, f"{kind}: the store must stay byte-for-byte unchanged"
        assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == champion_before, kind
        assert len(client.search_model_versions(f"name = '{name}'")) == versions_before, kind

    quarantined = sorted((settings.quarantine_dir / "MSFT").glob("*/batch.csv"))
    assert len(quarantined) == len(CORRUPTIONS)
    assert all((q.parent / "validation.json").exists() and (q.parent / "data_docs" / "index.html").exists()
               for q in quarantined)
    assert journal.read(settings.reports_dir, "MSFT")["decision"] == FAILED
    rejected = client.search_runs([client.get_experiment_by_name(settings.experiment_name).experiment_id],
                                  filter_string="tags.ticker = 'MSFT' and tags.decision = 'failed'")
    assert len(rejected) == len(CORRUPTIONS), "each rejection is visible in MLflow as a failed run"
    assert {a.path for a in client.list_artifacts(rejected[0].info.run_id, "validation")} >= {
        "validation/validation.json", "validation/data_docs"}

    clean.to_csv(csv_dir / "MSFT.csv", index=False)
    repaired = by_ticker(run_flow(tickers=["MSFT"], source="csv", csv_dir=str(csv_dir), as_of=AS_OF))["MSFT"]
    assert repaired["decision"] != FAILED and repaired["new_rows"] == 8, "a repaired export is merged as usual"
