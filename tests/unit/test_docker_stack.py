"""docker/compose.yaml, docker/Dockerfile and the README's production section, read as files: no Docker, no shell.

The compose file is parsed by compose-spec (Python bindings of the Rust `compose_spec` crate, a strict parser of the
Compose Specification): unknown or duplicate keys, wrong types, bad enum values, durations and ports are refused, as
`docker compose config` would refuse them. What that parser does not check (depends_on targets, named volumes, build
contexts, bind-mount sources) and what the stack promises (loopback ports, health checks, the same settings as the
native test, authentication on both servers) are checked here too. `docker compose config`, docker/check-secrets.sh
and docker/mlflow-basic-auth.sh run in tests/integration/test_docker_scripts.py. tests/system/test_production_stack.py
runs the same services natively.
"""

from __future__ import annotations

import re

import pytest
import yaml
from compose_spec import PyOptions

from tests.support import DOCKER, PROJECT_ROOT, env_example, is_secret

COMPOSE_FILE = DOCKER / "compose.yaml"
README = PROJECT_ROOT / "README.md"
PRODUCTION_HEADING = "## Production: Docker Compose"

PYTHON_SERVICES = ("check-secrets", "mlflow", "prefect-server", "prefect-worker", "deploy")
LONG_RUNNING = ("postgres", "mlflow", "prefect-server", "prefect-worker")
ONE_SHOT = ("check-secrets", "deploy")
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# The deploy step's last command, and the settings it reads that no other service gets.
ALERTS_INSTALL = "stockpipe alerts install --if-configured"
ALERT_CHANNELS = ("STOCKPIPE_ALERT_WEBHOOK_URL", "STOCKPIPE_ALERT_SLACK_URL", "STOCKPIPE_ALERT_TEAMS_URL")
ALERT_SETTINGS = (*ALERT_CHANNELS, "STOCKPIPE_ALERT_MISSED_RUN_HOURS")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def check_compose_spec(text: str) -> None:
    """Parses a compose file as the Compose Specification defines it, YAML merge keys (`<<`) resolved, and checks
    that the networks, volumes, configs and secrets its services use are declared; raises ValueError otherwise."""
    PyOptions(apply_merge=True).from_yaml(text).validate()


def as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, (str, dict)) else list(value)


def env_files(service: dict) -> list[str]:
    return [entry if isinstance(entry, str) else entry["path"] for entry in as_list(service.get("env_file"))]


def interpolated_paths(node, path=()) -> list[tuple]:
    """Where the file uses `${...}`: the key path of every string value that interpolates a variable."""
    if isinstance(node, dict):
        return [p for key, value in node.items() for p in interpolated_paths(value, (*path, key))]
    if isinstance(node, list):
        return [p for i, value in enumerate(node) for p in interpolated_paths(value, (*path, i))]
    return [path] if isinstance(node, str) and re.search(r"(?<!\$)\$\{", node) else []


def production_section(readme: str) -> str:
    start = readme.index(f"\n{PRODUCTION_HEADING}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else len(readme)]


# -- the Compose Specification --------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification():
    check_compose_spec(COMPOSE_FILE.read_text())
    # Compose interpolates before it validates; checking the raw text is the same check because variables are only
    # ever interpolated into environment values, which are strings either way.
    paths = interpolated_paths(compose())
    assert paths, "the passwords come from docker/.env"
    assert all(p[0] == "services" and p[2] == "environment" for p in paths), paths


# Realistic mistakes, each one edit away from the committed file, and how the parser names it.
MISTAKES = {
    "misspelt depends_on condition": ("condition: service_healthy", "condition: service_healty", "`service_healty`"),
    "retries not a number": ("retries: 12", "retries: twelve", '"twelve"'),
    "misspelt service key": (
        "    restart: unless-stopped\n    depends_on:\n      check-secrets:",
        "    restrat: unless-stopped\n    depends_on:\n      check-secrets:",
        "`restrat`",
    ),
    "misspelt key in the shared x-stockpipe block": ("  init: true\n", "  inti: true\n", "`inti`"),
    "container port out of range": ('"127.0.0.1:5000:5000"', '"127.0.0.1:5000:500000"', "`500000`"),
    "dot for a colon in a port": ('"127.0.0.1:4200:4200"', '"127.0.0.1.4200:4200"', "`127.0.0.1.4200`"),
    "duration without a unit": ("interval: 5s", "interval: 5 seconds", "not a valid duration unit"),
    "unknown restart policy": ('restart: "no"', 'restart: "never"', "`never`"),
    "misspelt health check form": ('["CMD-SHELL", "pg_isready', '["CMD_SHELL", "pg_isready', "`CMD_SHELL`"),
    "duplicate key": (
        '    restart: "no"\n    environment:\n',
        '    restart: "no"\n    restart: "no"\n    environment:\n',
        'duplicate entry with key "restart"',
    ),
    "undeclared network": ('    restart: "no"\n', '    restart: "no"\n    networks: [backend]\n', "network `backend`"),
    "entrypoint not a list or string": (
        'entrypoint: ["sh", "/etc/stockpipe/mlflow-basic-auth.sh"]',
        "entrypoint: {sh: /etc/stockpipe/mlflow-basic-auth.sh}",
        "expected a string or list of strings",
    ),
    "misspelt top-level key": ("\nvolumes:\n  postgres-data:", "\nvolume:\n  postgres-data:", "`volume`"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_compose_check_refuses_realistic_mistakes(mistake):
    old, new, named = MISTAKES[mistake]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the committed file no longer has {old!r}: update this mistake"
    with pytest.raises(ValueError, match=re.escape(named)):
        check_compose_spec(text.replace(old, new, 1))


# -- what the stack promises ----------------------------------------------------------------------


def test_compose_file_structure():
    """References the spec parser leaves alone, and what the stack promises (loopback ports, health checks)."""
    spec = compose()
    assert set(spec) <= {"name", "services", "volumes", "networks", "secrets", "configs"} | {
        k for k in spec if k.startswith("x-")
    }
    services = spec["services"]
    assert set(services) == {"check-secrets", "postgres", "mlflow", "prefect-server", "prefect-worker", "deploy"}
    declared_volumes = set(spec.get("volumes") or {})
    used_volumes = set()

    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), f"{name}: no Dockerfile"
        for port in as_list(service.get("ports")):
            host_ip = port["host_ip"] if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1" and (isinstance(port, dict) or str(port).count(":") == 2), (
                f"{name}: port {port} must be published on 127.0.0.1 only"
            )
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, condition in depends.items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert condition["condition"] in DEPENDS_ON_CONDITIONS, (name, condition)
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target} to be healthy: no healthcheck"
        for volume in as_list(service.get("volumes")):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                used_volumes.add(source)
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
        for env_file in env_files(service):
            assert (DOCKER / f"{env_file}.example").is_file(), f"{name}: {env_file} has no committed .example"
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL"), (name, test)
    assert used_volumes == declared_volumes, "every named volume is used"

    for name in LONG_RUNNING:
        assert "healthcheck" in services[name], f"{name}: no healthcheck"
        assert services[name]["restart"] == "unless-stopped"
    for name in ONE_SHOT:
        assert services[name]["restart"] == "no"
    for name in PYTHON_SERVICES:
        assert (
            services[name]["image"] == "stockpipe:local"
            and services[name]["build"]["dockerfile"] == "docker/Dockerfile"
        )


def test_compose_services_match_what_the_native_test_runs():
    services = compose()["services"]
    text = COMPOSE_FILE.read_text()

    postgres = services["postgres"]
    assert "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro" in postgres["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://mlflow:")
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].endswith("@postgres:5432/mlflow")
    assert mlflow["command"][:2] == ["mlflow", "server"] and "--serve-artifacts" in mlflow["command"]
    destination = next(a.split("=", 1)[1] for a in mlflow["command"] if a.startswith("--artifacts-destination="))
    assert f"mlflow-artifacts:{destination}" in mlflow["volumes"], "served artifacts live in a named volume"
    allowed = next(a.split("=", 1)[1] for a in mlflow["command"] if a.startswith("--allowed-hosts=")).split(",")
    assert {"mlflow:5000", "127.0.0.1:5000", "localhost:5000"} <= set(allowed)
    assert mlflow["ports"] == ["127.0.0.1:5000:5000"]

    prefect = services["prefect-server"]
    url = prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://prefect:") and url.endswith("@postgres:5432/prefect")
    assert prefect["ports"] == ["127.0.0.1:4200:4200"]
    assert prefect["environment"]["PREFECT_UI_API_URL"] == "http://127.0.0.1:4200/api"

    worker = services["prefect-worker"]
    pool = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"][0]["work_pool"]["name"]
    assert worker["command"][:3] == ["prefect", "worker", "start"]
    assert f"--pool={pool}" in worker["command"] and "--type=process" in worker["command"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    deploy = " ".join(services["deploy"]["command"])
    assert f"prefect work-pool create {pool} --type process" in deploy
    assert deploy.endswith(f"prefect deploy --no-prompt --name daily && exec {ALERTS_INSTALL}")

    # Every variable the file interpolates is in the committed example, so `cp .env.example .env` is complete.
    example = env_example()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert interpolated and interpolated <= set(example), interpolated - set(example)
    init_script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert set(re.findall(r"\$\{?([A-Z_]+_PASSWORD)", init_script)) <= set(example)


def test_the_deploy_step_installs_the_servers_alerts_once_the_deployment_is_registered():
    """`stockpipe alerts install` (flows/automations.py) after `prefect deploy` succeeded, with the channels of
    docker/.env; with none set it says so and exits 0, so a stack without alerts still deploys cleanly."""
    from pipeline.common.settings import Settings

    services = compose()["services"]
    command = services["deploy"]["command"]
    assert command[:2] == ["sh", "-c"] and command[2].endswith(f"&& exec {ALERTS_INSTALL}"), command
    deploy_env, worker_env = services["deploy"]["environment"], services["prefect-worker"]["environment"]
    for name in ALERT_SETTINGS:
        # Optional (`:-`): compose must not refuse to start a stack that has no alerts.
        (reference,) = references(deploy_env[name])
        assert reference[0] == name and reference[1] == ":-", (name, deploy_env[name])
        assert name.removeprefix("STOCKPIPE_").lower() in Settings.model_fields, f"{name} is not a setting"
    # The runs the worker starts get no channel: the server's automations deliver, each message once.
    assert not [name for name in worker_env if name.startswith("STOCKPIPE_ALERT_")]
    hours = Settings.model_fields["alert_missed_run_hours"].default
    assert deploy_env["STOCKPIPE_ALERT_MISSED_RUN_HOURS"].endswith(f":-{hours:g}}}"), "the settings' default"
    example = env_example()
    assert all(example[name] == "" for name in ALERT_CHANNELS), "the example sends nowhere"
    assert float(example["STOCKPIPE_ALERT_MISSED_RUN_HOURS"]) == hours
    # The links in the automations' messages: the UI's address, as published.
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_UI_URL"] == server_env["PREFECT_UI_API_URL"].removesuffix("/api")
    assert server_env["PREFECT_UI_URL"] == f"http://{services['prefect-server']['ports'][0].rsplit(':', 1)[0]}"


def test_the_alerts_command_the_deploy_step_runs_exists():
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["alerts", "install", "--help"])
    assert result.exit_code == 0 and "--if-configured" in result.output


# -- authentication and secrets -------------------------------------------------------------------

REFERENCE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(:?[-?])?")


def references(value: str) -> list[tuple[str, str]]:
    """The variables a compose value interpolates, each with its modifier (`:?`, `:-`, or '' for none)."""
    return [(name, modifier or "") for name, modifier in REFERENCE.findall(value)]


def depends_on_closure(services: dict, name: str) -> set[str]:
    """Every service `name` waits for, directly or through the services it waits for."""
    seen: set[str] = set()
    pending = [name]
    while pending:
        for target in services[pending.pop()].get("depends_on") or {}:
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def test_nothing_starts_before_check_secrets_has_passed():
    services = compose()["services"]
    assert services["postgres"]["depends_on"]["check-secrets"] == {"condition": "service_completed_successfully"}
    for name in set(services) - {"check-secrets"}:
        assert "check-secrets" in depends_on_closure(services, name), f"{name} could start before check-secrets"


def test_every_credential_is_checked_and_none_may_be_empty():
    example = env_example()
    credentials = {name for name in example if is_secret(name) or name.endswith("_USERNAME")}
    assert {
        "POSTGRES_PASSWORD",
        "MLFLOW_DB_PASSWORD",
        "PREFECT_DB_PASSWORD",
        "MLFLOW_ADMIN_USERNAME",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "PREFECT_AUTH_USERNAME",
        "PREFECT_AUTH_PASSWORD",
    } <= credentials
    services = compose()["services"]
    check = services["check-secrets"]
    # The script checks the names the example gives: each must reach it under that same name.
    assert {name: references(value) for name, value in check["environment"].items()} == {
        name: [(name, ":?")] for name in credentials
    }
    assert check["command"] == ["sh", "/etc/stockpipe/check-secrets.sh", "/etc/stockpipe/env.example"]
    assert {
        "./check-secrets.sh:/etc/stockpipe/check-secrets.sh:ro",
        "./.env.example:/etc/stockpipe/env.example:ro",
    } <= set(check["volumes"])
    # Wherever a credential is used, compose refuses to go on when it is unset or empty.
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            for variable, modifier in references(str(value)):
                if variable in credentials:
                    assert modifier == ":?", f"{name}: {key} takes {variable} without `:?`"


def test_both_servers_require_credentials_and_their_clients_carry_them():
    services = compose()["services"]
    mlflow, prefect, worker = services["mlflow"], services["prefect-server"], services["prefect-worker"]
    mlflow_env, worker_env = mlflow["environment"], worker["environment"]

    assert "--app-name=basic-auth" in mlflow["command"]
    assert mlflow["entrypoint"] == ["sh", "/etc/stockpipe/mlflow-basic-auth.sh"]
    assert "./mlflow-basic-auth.sh:/etc/stockpipe/mlflow-basic-auth.sh:ro" in mlflow["volumes"]
    # The ini lives in the container, not in a volume: regenerated at every start, never shared.
    config = mlflow_env["MLFLOW_AUTH_CONFIG_PATH"]
    mounted = [volume.split(":")[1] for volume in mlflow["volumes"]]
    assert config.startswith("/home/stockpipe/") and not any(config.startswith(f"{m}/") for m in mounted)
    assert mlflow_env["MLFLOW_AUTH_DATABASE_URI"].startswith("postgresql+psycopg://mlflow:")
    assert mlflow_env["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert references(mlflow_env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == [("MLFLOW_FLASK_SERVER_SECRET_KEY", ":?")]
    # The pipeline logs in as the admin MLflow creates from the same two variables.
    assert references(worker_env["MLFLOW_TRACKING_USERNAME"]) == references(mlflow_env["MLFLOW_AUTH_ADMIN_USERNAME"])
    assert references(worker_env["MLFLOW_TRACKING_PASSWORD"]) == references(mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert [v for v, _ in references(worker_env["MLFLOW_TRACKING_PASSWORD"])] == ["MLFLOW_ADMIN_PASSWORD"]

    server_auth = prefect["environment"]["PREFECT_SERVER_API_AUTH_STRING"]
    assert [v for v, _ in references(server_auth)] == ["PREFECT_AUTH_USERNAME", "PREFECT_AUTH_PASSWORD"]
    assert worker_env["PREFECT_API_AUTH_STRING"] == server_auth
    deploy_env = services["deploy"]["environment"]
    assert {k: v for k, v in deploy_env.items() if k not in ALERT_SETTINGS} == worker_env, "the same servers"

    # A Prefect Cloud key would be sent instead of the auth string by some clients: nothing may set one.
    for name, service in services.items():
        assert "PREFECT_API_KEY" not in (service.get("environment") or {}), name
    assert "PREFECT_API_KEY" not in (DOCKER / "Dockerfile").read_text()


def test_dockerfile_builds_a_slim_non_root_image_from_the_lock():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as an unprivileged user"
    assert "--constraint requirements.lock" in dockerfile
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", dockerfile, flags=re.M))
    sources = {s for line in copied for s in line.split()}
    assert {
        "pyproject.toml",
        "requirements.lock",
        "pipeline",
        "flows",
        "data",
        "expectations",
        "prefect.yaml",
    } <= sources
    for source in sources:
        assert (PROJECT_ROOT / source).exists(), source
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert all(f"!{source}" in ignore for source in sources), "the build context lets every copied path through"


# -- the README -----------------------------------------------------------------------------------


def test_production_docs_match_the_compose_file():
    """README.md's production section: the commands it gives work with this compose file, and it names every
    service, the UI addresses and the volumes the file has."""
    spec = compose()
    services = spec["services"]
    docs = production_section(README.read_text())

    assert "cp docker/.env.example docker/.env" in docs, "how docker/.env is made"
    assert "docker compose -f docker/compose.yaml up -d\n" in docs, "how the stack starts"
    for service, label in (("prefect-server", "Prefect UI"), ("mlflow", "MLflow UI")):
        (port,) = services[service]["ports"]
        host_ip, host_port, _ = port.split(":")
        assert f"{label}: http://{host_ip}:{host_port}" in docs, f"{service}'s UI address"
    assert "prefect deployment run 'daily-pipeline/daily'" in docs

    mentioned = re.findall(r"docker compose -f docker/compose\.yaml (?:exec|run --rm|logs(?: -f)?) ([\w-]+)", docs)
    assert {"prefect-worker", "deploy", "postgres"} <= set(mentioned), mentioned
    unknown = set(mentioned) - set(services)
    assert not unknown, f"the docs name services the compose file does not have: {unknown}"

    table = re.findall(r"^\| `([\w-]+)` \|", docs, flags=re.M)
    assert len(table) == len(set(table)) and set(table) == set(services), (
        f"the service table names {sorted(table)}, the compose file has {sorted(services)}"
    )
    for volume in spec["volumes"]:
        assert f"`{volume}`" in docs, f"the docs do not name the volume {volume}"
    major = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", services["postgres"]["image"]).group(1)
    assert f"PostgreSQL {major}," in docs, "the PostgreSQL version the table gives is the image's"


def test_production_docs_say_how_to_log_in():
    """Both UIs, the CLI on the host and more MLflow accounts: with the variables the stack really uses."""
    docs = production_section(README.read_text())
    example = env_example()
    named = set(re.findall(r"\b((?:MLFLOW_ADMIN|PREFECT_AUTH)_[A-Z_]+)", docs))
    assert {"PREFECT_AUTH_USERNAME", "PREFECT_AUTH_PASSWORD", "MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD"} <= named
    assert named <= set(example), named - set(example)
    assert "`PREFECT_AUTH_USERNAME:PREFECT_AUTH_PASSWORD`" in docs, "the Prefect UI's login is one `user:password`"
    for client_setting in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"):
        assert f"export {client_setting}" in docs or f" {client_setting}=" in docs, client_setting
    assert "unset PREFECT_API_KEY" in docs
    assert "http://127.0.0.1:5000/signup" in docs and 'get_app_client("basic-auth"' in docs
    assert "check-secrets" in docs and "SECURITY.md" in docs
