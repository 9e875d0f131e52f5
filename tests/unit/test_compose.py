"""docker-compose.yaml, checked without a Docker engine: the Compose Specification's JSON schema, then
what the schema cannot know (files it builds and mounts, the services the DAGs connect to, the settings a
deployment must override, secrets only from .env)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from include.settings import PROJECT_ROOT, Settings

COMPOSE = PROJECT_ROOT / "docker-compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / ".env.example"
AIRFLOW_SERVICES = ("airflow-init", "api-server", "scheduler", "dag-processor", "triggerer")
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def compose_schema() -> dict:
    path = Path(os.environ.get("LLMOPS_COMPOSE_SCHEMA") or PROJECT_ROOT.parent / "shared" / "schemas" /
                "compose-spec.json")
    if not path.is_file():
        pytest.skip(f"Compose Specification schema not found at {path}: set LLMOPS_COMPOSE_SCHEMA")
    return yaml.safe_load(path.read_text())


def dotenv(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def interpolate(value, env: dict[str, str]):
    """Compose's interpolation: ${X}, ${X:-default}, ${X-default}, ${X:?error}, ${X?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.groups()
        present = name in env and (env[name] != "" or not (op or "").startswith(":"))
        if present:
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op else ""

    return VAR.sub(sub, value)


def referenced_variables(text: str) -> set[str]:
    return {m.group(1) for m in VAR.finditer(text) if m.group(1)}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, dotenv(ENV_EXAMPLE))


def test_valid_against_the_compose_specification(compose):
    jsonschema.Draft7Validator(compose_schema()).validate(compose)


def test_schema_check_catches_a_misspelt_key(compose):
    broken = {**compose, "services": {**compose["services"], "mlflow": {**compose["services"]["mlflow"],
                                                                        "helthcheck": {}}}}
    with pytest.raises(jsonschema.ValidationError, match="helthcheck"):
        jsonschema.Draft7Validator(compose_schema()).validate(broken)


def test_the_stack_has_every_part(compose):
    services = compose["services"]
    assert set(AIRFLOW_SERVICES) <= set(services)
    assert {"postgres", "s3", "s3-init", "mlflow", "prometheus"} <= set(services)
    assert [services[s]["command"][0] for s in AIRFLOW_SERVICES] == [
        "db", "api-server", "scheduler", "dag-processor", "triggerer"]


def test_every_build_has_its_dockerfile_and_every_mount_exists(compose):
    builds = [s["build"] for s in compose["services"].values() if "build" in s]
    assert builds
    for build in builds:
        assert (PROJECT_ROOT / build["context"] / build["dockerfile"]).is_file(), build
        for arg, value in (build.get("args") or {}).items():
            if arg == "REQUIREMENTS":
                assert (PROJECT_ROOT / value).is_file(), value
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        if "build" in service:
            continue
        image = service["image"]
        assert "@sha256:" in image or (":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")), \
            f"{name}: {image} is not pinned"


def depends(compose: dict, name: str) -> set[str]:
    """Every service `name` waits for, transitively; a cycle fails (compose refuses one too)."""
    seen: set[str] = set()
    stack = [(name, ())]
    while stack:
        current, path = stack.pop()
        assert current not in path, f"depends_on cycle: {' -> '.join((*path, current))}"
        for dep in compose["services"][current].get("depends_on", {}):
            assert dep in compose["services"], f"{current} depends on unknown service {dep}"
            seen.add(dep)
            stack.append((dep, (*path, current)))
    return seen


def endpoints(env: dict[str, str]) -> set[str]:
    """The hosts a service's environment points at: URLs, SQLAlchemy URLs and AIRFLOW_CONN_* JSON.

    Browser-facing URLs (the extra links' `*_UI_URL` / `*_CONSOLE_URL`) are opened by a person on the
    host, not by the service, and are left out.
    """
    import json

    hosts = set()
    for key, value in env.items():
        if key.endswith(("_UI_URL", "_CONSOLE_URL")):
            assert urlsplit(value).hostname in ("localhost", "127.0.0.1"), f"{key}: a browser URL on this host"
            continue
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(value)
            urls = [v for v in (conn.get("extra") or {}).values() if isinstance(v, str) and "://" in v]
            hosts |= {urlsplit(url).hostname for url in urls} | ({conn["host"]} if conn.get("host") else set())
        elif re.match(r"^[a-z0-9+]+://", value) and not value.startswith(("s3://", "file://")):
            hosts.add(urlsplit(value).hostname)
    return hosts


def test_every_service_the_dags_connect_to_exists_is_healthchecked_and_started_first(compose):
    for name in AIRFLOW_SERVICES[1:]:  # airflow-init only migrates the database
        targets = endpoints(compose["services"][name]["environment"]) - {"api-server"}
        assert {"postgres", "mlflow", "s3"} <= targets, targets
        waits_for = depends(compose, name)
        for host in targets:
            assert host in compose["services"], f"{name} connects to {host}, which is no service"
            assert "healthcheck" in compose["services"][host], f"{host} has no healthcheck"
            assert host in waits_for, f"{name} does not wait for {host}"


def test_settings_read_from_the_airflow_environment_leave_nothing_inside_the_checkout(compose):
    """A setting whose default points into the checkout cannot work in a container: compose must set it."""
    env = compose["services"]["scheduler"]["environment"]
    settings = Settings.from_env({k: str(v) for k, v in env.items()})
    defaults = Settings(profile=settings.profile)
    for field in ("data_root", "mlflow_tracking_uri", "checkpoint_root"):
        if str(PROJECT_ROOT) in getattr(defaults, field):
            assert str(PROJECT_ROOT) not in getattr(settings, field), field
    assert settings.data_root.startswith("s3://")
    assert urlsplit(settings.mlflow_tracking_uri).hostname == "mlflow"
    bucket = urlsplit(settings.data_root).hostname
    assert compose["services"]["s3-init"]["environment"]["S3_BUCKET"] == bucket


def test_secrets_come_only_from_the_env_file(raw):
    text = COMPOSE.read_text()
    example = dotenv(ENV_EXAMPLE)
    assert referenced_variables(text) <= set(example), referenced_variables(text) - set(example)
    secrets = {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "AIRFLOW_JWT_SECRET", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
    for name in secrets:
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be required (${{{name}:?...}}), never defaulted"
        assert not re.search(rf"\$\{{{name}:?-", text), f"{name} has a default in the compose file"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {k: v for k, v in example.items() if k != "POSTGRES_PASSWORD"})
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=PROJECT_ROOT)
    assert ignored.returncode == 0, ".env must be git-ignored"
