"""Settings come from STOCKPIPE_* variables (and a `.env` in the working directory), with typed defaults."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipeline.common.settings import (
    BUNDLED_SNAPSHOTS,
    BUNDLED_SUITE,
    DEFAULT_MIN_RELATIVE_GAIN,
    PROJECT_ROOT,
    Settings,
    SourceKind,
    TrainingConfig,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No inherited STOCKPIPE_* or MLflow variables, and a working directory without a `.env`."""
    for key in [k for k in os.environ if k.startswith("STOCKPIPE_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults(clean_env):
    settings = Settings()
    assert settings.home == clean_env.resolve() / ".stockpipe"
    assert settings.tickers == ["MSFT", "GSPC"]
    assert settings.source is SourceKind.snapshot
    assert settings.snapshot_dir == BUNDLED_SNAPSHOTS and (BUNDLED_SNAPSHOTS / "MSFT.csv").is_file()
    assert settings.suite_path == BUNDLED_SUITE and BUNDLED_SUITE.is_file()
    assert settings.csv_dir is None
    assert settings.yahoo_symbols == {"GSPC": "^GSPC"}
    assert settings.mlflow_tracking_uri is None
    assert settings.max_workers == 2
    assert settings.min_relative_gain == DEFAULT_MIN_RELATIVE_GAIN and settings.promotion_alpha == 0.10
    assert settings.max_staleness_sessions == 3
    assert settings.csv_root == PROJECT_ROOT / "data"
    assert settings.training == TrainingConfig()
    assert settings.training.epochs == 30 and settings.training.window == 60


def test_state_folders_live_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_HOME", str(tmp_path / "state"))
    settings = Settings()
    assert settings.home == tmp_path / "state"
    for folder, name in [
        (settings.store_dir, "store"),
        (settings.reports_dir, "reports"),
        (settings.quarantine_dir, "quarantine"),
        (settings.locks_dir, "locks"),
        (settings.artifacts_dir, "artifacts"),
    ]:
        assert folder == tmp_path / "state" / name


@pytest.mark.parametrize(
    "spelled, expected",
    [
        (None, "cwd/.stockpipe"),
        (".stockpipe", "cwd/.stockpipe"),
        ("./state", "cwd/state"),
        ("state/../other", "cwd/other"),
        ("~/stockpipe", "home/stockpipe"),
        ("ABSOLUTE", "elsewhere/state"),
    ],
)
def test_home_is_absolute_however_it_is_spelled(clean_env, monkeypatch, spelled, expected):
    """GX Data Docs, MLflow's SQLite URI and Prefect's home all need absolute paths, from any working directory."""
    cwd, user_home, elsewhere = clean_env / "cwd", clean_env / "home", clean_env / "elsewhere"
    for folder in (cwd, user_home, elsewhere):
        folder.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(user_home))
    if spelled is not None:
        monkeypatch.setenv("STOCKPIPE_HOME", str(elsewhere / "state") if spelled == "ABSOLUTE" else spelled)
    settings = Settings()
    assert settings.home.is_absolute()
    assert settings.home == (clean_env / expected).resolve()
    assert settings.tracking_uri({}) == f"sqlite:///{settings.home / 'mlflow.db'}"
    monkeypatch.chdir(elsewhere)
    assert Settings.model_validate(settings.model_dump()).home == settings.home, "re-validation keeps the same place"


def test_folders_given_relative_are_resolved(clean_env, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_CSV_DIR", "exports")
    monkeypatch.setenv("STOCKPIPE_SNAPSHOT_DIR", "~/snap")
    monkeypatch.setenv("HOME", str(clean_env))
    settings = Settings()
    assert settings.csv_dir == clean_env.resolve() / "exports"
    assert settings.snapshot_dir == clean_env.resolve() / "snap"


def test_env_prefix_sets_fields(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_TICKERS", '["AAPL", "BRK-B"]')
    monkeypatch.setenv("STOCKPIPE_SOURCE", "yahoo")
    monkeypatch.setenv("STOCKPIPE_MAX_WORKERS", "3")
    monkeypatch.setenv("STOCKPIPE_YAHOO_SYMBOLS", '{"NDX": "^NDX"}')
    monkeypatch.setenv("STOCKPIPE_EXPERIMENT_NAME", "exp")
    settings = Settings()
    assert settings.tickers == ["AAPL", "BRK-B"]
    assert settings.source is SourceKind.yahoo
    assert settings.max_workers == 3
    assert settings.yahoo_symbols == {"NDX": "^NDX"}
    assert settings.experiment_name == "exp"


def test_unprefixed_variables_are_ignored(monkeypatch):
    monkeypatch.setenv("TICKERS", '["AAPL"]')
    monkeypatch.setenv("MAX_WORKERS", "7")
    settings = Settings()
    assert settings.tickers == ["MSFT", "GSPC"] and settings.max_workers == 2


def test_nested_training_variable(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_TRAINING__EPOCHS", "5")
    monkeypatch.setenv("STOCKPIPE_TRAINING__LEARNING_RATE", "0.01")
    training = Settings().training
    assert training.epochs == 5
    assert training.learning_rate == 0.01
    assert training.window == 60 and training.units == 64, "fields not set keep their defaults"


def test_out_of_range_training_value_is_refused(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_TRAINING__EPOCHS", "0")
    with pytest.raises(ValidationError, match="epochs"):
        Settings()


def test_dotenv_file_in_the_working_directory_is_read_and_env_wins(clean_env, monkeypatch):
    (clean_env / ".env").write_text("STOCKPIPE_EXPERIMENT_NAME=from-file\nSTOCKPIPE_TRAINING__UNITS=8\n")
    settings = Settings()
    assert settings.experiment_name == "from-file"
    assert settings.training.units == 8
    monkeypatch.setenv("STOCKPIPE_EXPERIMENT_NAME", "from-env")
    assert Settings().experiment_name == "from-env"


@pytest.mark.parametrize("bad", ["../x", "msft", "a/b", ""])
def test_invalid_ticker_in_env_is_refused(monkeypatch, bad):
    monkeypatch.setenv("STOCKPIPE_TICKERS", f'["MSFT", "{bad}"]')
    with pytest.raises(ValidationError, match="invalid ticker"):
        Settings()


def test_invalid_ticker_passed_directly_is_refused():
    with pytest.raises(ValidationError, match="invalid ticker"):
        Settings(tickers=["MSFT", "../../etc"])


def test_unknown_source_is_refused(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "ftp")
    with pytest.raises(ValidationError, match="source"):
        Settings()


# -- MLflow tracking URI ----------------------------------------------------------------------------


def test_tracking_uri_explicit_setting_wins(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    settings = Settings(mlflow_tracking_uri="http://explicit:5000")
    assert settings.tracking_uri() == "http://explicit:5000"
    assert settings.tracking_uri({"MLFLOW_TRACKING_URI": "http://other:5000"}) == "http://explicit:5000"


def test_tracking_uri_explicit_setting_from_prefixed_env(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_MLFLOW_TRACKING_URI", "http://prefixed:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert Settings().tracking_uri() == "http://prefixed:5000"


def test_tracking_uri_falls_back_to_mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert Settings().tracking_uri() == "http://env:5000"
    assert Settings().tracking_uri({"MLFLOW_TRACKING_URI": "http://given:5000"}) == "http://given:5000"


def test_tracking_uri_defaults_to_sqlite_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("STOCKPIPE_HOME", "state")  # relative: resolved against the working directory
    expected = f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"
    assert Settings().tracking_uri() == expected
    assert Settings().tracking_uri({}) == expected
    assert Settings().tracking_uri({"MLFLOW_TRACKING_URI": ""}) == expected, "an empty variable is unset"


def test_tracking_uri_with_explicit_empty_environ_ignores_process_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert Settings().tracking_uri({}).startswith("sqlite:///")


# -- training digest --------------------------------------------------------------------------------


def test_training_digest_is_stable():
    assert TrainingConfig().digest() == TrainingConfig().digest()
    assert TrainingConfig(epochs=5).digest() == TrainingConfig(epochs=5).digest()
    assert len(TrainingConfig().digest()) == 16
    # Equal values spelled differently (int vs float, env string) are the same configuration.
    assert TrainingConfig(history_years=10).digest() == TrainingConfig(history_years=10.0).digest()


def test_training_digest_same_through_env(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_TRAINING__EPOCHS", "5")
    monkeypatch.setenv("STOCKPIPE_TRAINING__HISTORY_YEARS", "10")
    assert Settings().training.digest() == TrainingConfig(epochs=5).digest()


@pytest.mark.parametrize(
    "change",
    [
        {"history_years": 5.0},
        {"window": 30},
        {"units": 32},
        {"dropout": 0.1},
        {"epochs": 31},
        {"batch_size": 32},
        {"learning_rate": 2e-3},
        {"patience": 6},
        {"warm_start_epochs": 4},
        {"val_fraction": 0.2},
        {"eval_sessions": 300},
        {"eval_blocks": 4},
        {"seed": 7},
    ],
)
def test_training_digest_changes_with_any_hyperparameter(change):
    assert TrainingConfig(**change).digest() != TrainingConfig().digest()


def test_every_training_field_is_covered_by_the_digest_test():
    fields = set(TrainingConfig.model_fields)
    covered = {
        "history_years",
        "window",
        "units",
        "dropout",
        "epochs",
        "batch_size",
        "learning_rate",
        "patience",
        "warm_start_epochs",
        "val_fraction",
        "eval_sessions",
        "eval_blocks",
        "seed",
    }
    assert fields == covered, (
        "a new hyperparameter needs a case in test_training_digest_changes_with_any_hyperparameter"
    )


# -- where file-based sources read from -----------------------------------------------------------


def test_yahoo_reads_no_folder(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "yahoo")
    assert Settings().price_folder() is None


def test_a_missing_price_folder_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "csv")
    monkeypatch.setenv("STOCKPIPE_CSV_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="nowhere is not a directory"):
        Settings().price_folder()


def test_csv_source_without_csv_dir_is_an_error(monkeypatch):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "csv")
    with pytest.raises(ValueError, match="csv-dir|CSV_DIR"):
        Settings().price_folder()


def test_csv_source_reads_csv_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("STOCKPIPE_SOURCE", "csv")
    monkeypatch.setenv("STOCKPIPE_CSV_DIR", str(tmp_path / "exports"))
    (tmp_path / "exports").mkdir()
    assert Settings().price_folder() == (tmp_path / "exports").resolve()


def test_snapshot_source_reads_bundled_snapshots(monkeypatch, tmp_path):
    monkeypatch.setenv("STOCKPIPE_CSV_DIR", str(tmp_path / "exports"))  # ignored unless the source is csv
    assert Settings().price_folder() == BUNDLED_SNAPSHOTS
