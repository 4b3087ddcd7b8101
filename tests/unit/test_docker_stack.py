"""docker/compose.yaml, docker/Dockerfile and the README's production section, checked without Docker.

The compose file is parsed by compose-spec (Python bindings of the Rust `compose_spec` crate, a strict parser of the
Compose Specification): unknown or duplicate keys, wrong types, bad enum values, durations and ports are refused, as
`docker compose config` would refuse them. What that parser does not check (depends_on targets, named volumes, build
contexts, bind-mount sources) and what the stack promises (loopback ports, health checks, the same settings as the
native test) are checked here too. `docker compose config` itself runs where the docker client has the compose
plugin. tests/integration/test_production_stack.py runs the same services natively.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from compose_spec import PyOptions

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOCKER = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
README = PROJECT_ROOT / "README.md"
PRODUCTION_HEADING = "## Production: Docker Compose"

PYTHON_SERVICES = ("mlflow", "prefect-server", "prefect-worker", "deploy")
LONG_RUNNING = ("postgres", "mlflow", "prefect-server", "prefect-worker")
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


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
    return readme[start:end if end != -1 else len(readme)]


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
    "misspelt service key": ("    restart: unless-stopped\n    # POSTGRES_USER",
                             "    restrat: unless-stopped\n    # POSTGRES_USER", "`restrat`"),
    "misspelt key in the shared x-stockpipe block": ("  init: true\n", "  inti: true\n", "`inti`"),
    "container port out of range": ('"127.0.0.1:5000:5000"', '"127.0.0.1:5000:500000"', "`500000`"),
    "dot for a colon in a port": ('"127.0.0.1:4200:4200"', '"127.0.0.1.4200:4200"', "`127.0.0.1.4200`"),
    "duration without a unit": ("interval: 5s", "interval: 5 seconds", "not a valid duration unit"),
    "unknown restart policy": ('restart: "no"', 'restart: "never"', "`never`"),
    "misspelt health check form": ('["CMD-SHELL", "pg_isready', '["CMD_SHELL", "pg_isready', "`CMD_SHELL`"),
    "duplicate key": ("    env_file: .env\n", "    env_file: .env\n    env_file: ../.env\n",
                      'duplicate entry with key "env_file"'),
    "undeclared network": ("    env_file: .env\n", "    env_file: .env\n    networks: [backend]\n", "network `backend`"),
    "misspelt top-level key": ("\nvolumes:\n  postgres-data:", "\nvolume:\n  postgres-data:", "`volume`"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_compose_check_refuses_realistic_mistakes(mistake):
    old, new, named = MISTAKES[mistake]
    text = COMPOSE_FILE.read_text()
    assert old in text, f"the committed file no longer has {old!r}: update this mistake"
    with pytest.raises(ValueError, match=re.escape(named)):
        check_compose_spec(text.replace(old, new, 1))


def test_docker_compose_config_accepts_the_file(tmp_path):
    """`docker compose config`, where the docker client has the compose plugin (this machine's may not)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no `docker compose` plugin here: compose-spec checks the file instead")
    copy = tmp_path / "docker"
    shutil.copytree(DOCKER, copy)
    shutil.copy(DOCKER / ".env.example", copy / ".env")
    result = subprocess.run([docker, "compose", "-f", str(copy / "compose.yaml"), "config", "--quiet"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# -- what the stack promises ----------------------------------------------------------------------


def test_compose_file_structure():
    """References the spec parser leaves alone, and what the stack promises (loopback ports, health checks)."""
    spec = compose()
    assert set(spec) <= {"name", "services", "volumes", "networks", "secrets", "configs"} | {
        k for k in spec if k.startswith("x-")}
    services = spec["services"]
    assert set(services) == {"postgres", "mlflow", "prefect-server", "prefect-worker", "deploy"}
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
                f"{name}: port {port} must be published on 127.0.0.1 only")
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
    assert services["deploy"]["restart"] == "no"
    for name in PYTHON_SERVICES:
        assert services[name]["image"] == "stockpipe:local" and services[name]["build"]["dockerfile"] == "docker/Dockerfile"


def test_compose_services_match_what_the_native_test_runs():
    services = compose()["services"]
    text = COMPOSE_FILE.read_text()

    postgres = services["postgres"]
    assert "./postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro" in postgres["volumes"]
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    mlflow = services["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
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
    assert deploy.endswith("exec prefect deploy --no-prompt --name daily")

    # Every variable the file interpolates is in the committed example, so `cp .env.example .env` is complete.
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    assert interpolated and interpolated <= set(example), interpolated - set(example)
    init_script = (DOCKER / "postgres" / "init-databases.sh").read_text()
    assert set(re.findall(r"\$\{?([A-Z_]+_PASSWORD)", init_script)) <= set(example)


def test_dockerfile_builds_a_slim_non_root_image_from_the_lock():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0"), "the image runs as an unprivileged user"
    assert "--constraint requirements.lock" in dockerfile
    copied = set(re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", dockerfile, flags=re.M))
    sources = {s for line in copied for s in line.split()}
    assert {"pyproject.toml", "requirements.lock", "pipeline", "flows", "data", "expectations", "prefect.yaml"} <= sources
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
        f"the service table names {sorted(table)}, the compose file has {sorted(services)}")
    for volume in spec["volumes"]:
        assert f"`{volume}`" in docs, f"the docs do not name the volume {volume}"
    major = re.fullmatch(r"postgres:(\d+)(?:[.-].*)?", services["postgres"]["image"]).group(1)
    assert f"PostgreSQL {major}," in docs, "the PostgreSQL version the table gives is the image's"
