"""The Docker stack's scripts run as its containers run them: docker/check-secrets.sh under sh and bash,
docker/mlflow-basic-auth.sh in front of a stand-in server, and `docker compose config` where the docker client has
the compose plugin. The compose file itself is read without Docker in tests/unit/test_docker_stack.py."""

from __future__ import annotations

import configparser
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DOCKER, env_example, is_secret


def test_docker_compose_config_accepts_the_file(tmp_path):
    """`docker compose config`, where the docker client has the compose plugin (this machine's may not)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin here: compose-spec checks the file instead")
    copy = tmp_path / "docker"
    shutil.copytree(DOCKER, copy)
    shutil.copy(DOCKER / ".env.example", copy / ".env")
    result = subprocess.run(
        [docker, "compose", "-f", str(copy / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def strong_secrets() -> dict[str, str]:
    """A docker/.env a careful operator would write: every secret fresh and random, the rest as in the example."""
    return {name: secrets.token_hex(16) if is_secret(name) else value for name, value in env_example().items()}


def check_secrets(env: dict[str, str], shell: str = "sh") -> subprocess.CompletedProcess:
    """docker/check-secrets.sh as the check-secrets service runs it, with only `env` (and PATH) in its environment."""
    return subprocess.run(
        [shell, str(DOCKER / "check-secrets.sh"), str(DOCKER / ".env.example")],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_check_secrets_accepts_strong_secrets(shell):
    result = check_secrets(strong_secrets(), shell)
    assert result.returncode == 0, result.stderr
    assert "credentials set, none of them an example value" in result.stdout


def test_check_secrets_refuses_the_example_file_as_it_is_and_names_every_secret():
    example = env_example()
    result = check_secrets(example)
    assert result.returncode == 1
    named = set(re.findall(r"^check-secrets: (\w+) is still the example value", result.stderr, flags=re.M))
    assert named == {name for name in example if is_secret(name)}
    assert "refusing to start" in result.stderr


WEAK = {
    "the example's value": lambda example: example,
    "15 characters": lambda example: "a1B2c3D4e5F6g7H",
    "empty": lambda example: "",
    "a character that breaks a URL": lambda example: secrets.token_hex(12) + "@x",
    "a percent sign": lambda example: secrets.token_hex(12) + "%41",
    "a space": lambda example: secrets.token_hex(12) + " x",
    "a newline": lambda example: secrets.token_hex(12) + "\nx",
}


@pytest.mark.parametrize("weakness", WEAK)
@pytest.mark.parametrize("name", ["MLFLOW_ADMIN_PASSWORD", "PREFECT_AUTH_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_check_secrets_refuses_one_weak_secret_naming_it_and_never_printing_it(name, weakness):
    env = strong_secrets()
    env[name] = WEAK[weakness](env_example()[name])
    result = check_secrets(env)
    assert result.returncode == 1, result.stdout
    (problem,) = [line for line in result.stderr.splitlines() if not line.startswith("check-secrets: refusing")]
    assert problem.startswith(f"check-secrets: {name} ")
    output = result.stdout + result.stderr
    assert all(value not in output for value in env.values() if len(value) >= 8), "a value was printed"


def test_check_secrets_accepts_exactly_16_characters_and_refuses_a_missing_secret_or_a_colon_in_a_user_name():
    env = strong_secrets()
    env["PREFECT_AUTH_PASSWORD"] = "a1B2c3D4e5F6g7H8"
    assert check_secrets(env).returncode == 0

    missing = {k: v for k, v in strong_secrets().items() if k != "MLFLOW_DB_PASSWORD"}
    result = check_secrets(missing)
    assert result.returncode == 1 and "MLFLOW_DB_PASSWORD is not set" in result.stderr

    colon = {**strong_secrets(), "PREFECT_AUTH_USERNAME": "stock:pipe"}
    result = check_secrets(colon)
    assert result.returncode == 1 and "PREFECT_AUTH_USERNAME may only hold" in result.stderr


def mlflow_basic_auth(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """docker/mlflow-basic-auth.sh as the mlflow service's entrypoint, running a command that shows its arguments."""
    return subprocess.run(
        [
            "sh",
            str(DOCKER / "mlflow-basic-auth.sh"),
            sys.executable,
            "-c",
            "import sys; print('server', sys.argv[1:])",
            "--app-name=basic-auth",
            "--port=5000",
        ],
        env={"PATH": os.environ["PATH"], **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def read_ini(path: Path) -> configparser.SectionProxy:
    """The [mlflow] section as mlflow/server/auth/config.py reads it: a default ConfigParser, `%` interpolation on.
    (Importing that module would import MLflow's whole server; the production-stack test runs the real one.)"""
    parser = configparser.ConfigParser()
    assert parser.read(path) == [str(path)]
    return parser["mlflow"]


def test_mlflow_entrypoint_writes_a_private_ini_mlflow_reads_then_runs_the_server(tmp_path):
    config = tmp_path / "auth" / "basic_auth.ini"
    admin_password, key = secrets.token_hex(16), secrets.token_hex(16)
    # A `%` would be configparser interpolation if written as it is.
    database_uri = "postgresql://mlflow:p%40ss-" + secrets.token_hex(8) + "@postgres:5432/mlflow_auth"
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_DATABASE_URI": database_uri,
        "MLFLOW_AUTH_ADMIN_USERNAME": "stockpipe-admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": key,
    }
    result = mlflow_basic_auth(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert "server ['--app-name=basic-auth', '--port=5000']" in result.stdout, "the server command runs, unchanged"
    assert not any(secret in result.stdout + result.stderr for secret in (admin_password, key, database_uri))

    assert stat.S_IMODE(config.stat().st_mode) == 0o600 and stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert admin_password not in config.read_text() and key not in config.read_text()
    assert [p.name for p in config.parent.iterdir()] == ["basic_auth.ini"], "no partial file left behind"
    ini = read_ini(config)
    assert (ini["database_uri"], ini["default_permission"]) == (database_uri, "READ")
    assert ini["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert ini.getint("auth_cache_ttl_seconds") == 60
    # MLflow takes the admin from MLFLOW_AUTH_ADMIN_USERNAME/_PASSWORD, which override the file's anyway.
    assert "admin_username" not in ini and "admin_password" not in ini

    # Written afresh at every start: a later start with another database replaces the file.
    again = mlflow_basic_auth(tmp_path, **{**env, "MLFLOW_AUTH_DATABASE_URI": "postgresql://x@postgres/other"})
    assert again.returncode == 0 and read_ini(config)["database_uri"] == "postgresql://x@postgres/other"


@pytest.mark.parametrize(
    "missing", ["MLFLOW_AUTH_DATABASE_URI", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"]
)
def test_mlflow_entrypoint_refuses_to_start_without_its_settings(tmp_path, missing):
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "basic_auth.ini"),
        "MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:pw@postgres:5432/mlflow_auth",
        "MLFLOW_AUTH_ADMIN_USERNAME": "stockpipe-admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": secrets.token_hex(16),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    result = mlflow_basic_auth(tmp_path, **{**env, missing: ""})
    assert result.returncode != 0 and missing in result.stderr
    assert "server [" not in result.stdout and not (tmp_path / "basic_auth.ini").exists()
