"""Dockerfile, docker-compose.yml and .env.example, checked as text (Docker does not run in CI)."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.config import Settings

ROOT = Path(__file__).resolve().parents[2]
# Read by the image's start command (uvicorn's worker count and port), not by the app.
CONTAINER_VARIABLES = {"WEB_CONCURRENCY", "PORT"}
SETTINGS_VARIABLES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    assert listed == SETTINGS_VARIABLES | CONTAINER_VARIABLES


def test_compose_services_ports_and_health(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"api", "postgres", "redis"}
    assert services["api"]["ports"] == ["8000:8000"]
    assert services["api"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("api", "postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "/ready" in " ".join(services["api"]["healthcheck"]["test"])


def test_compose_uses_current_postgres_with_a_volume(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    image, _, tag = postgres["image"].partition(":")
    assert image == "postgres"
    assert int(tag.split("-")[0]) >= 18
    volume = postgres["volumes"][0].split(":")[0]
    assert volume in compose["volumes"]


def test_compose_is_a_development_api_on_its_own_database_and_redis(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    environment = api["environment"]
    assert set(environment) <= SETTINGS_VARIABLES | CONTAINER_VARIABLES
    assert "@postgres:5432/" in environment["DATABASE_URL"]
    assert environment["REDIS_URL"].startswith("redis://redis:6379")
    # Development only: the dev secret applies unless .env sets one; production refuses to start without one.
    assert environment["APP_ENV"] == "development"
    assert "BETTER_AUTH_SECRET" not in environment  # never a secret in the repository
    assert api["env_file"] == [{"path": ".env", "required": False}]


def test_dockerfile_slim_non_root_with_cached_dependencies(dockerfile: str) -> None:
    bases = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert re.fullmatch(r"python:3\.\d+-slim(-\w+)?", bases[-1])
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.MULTILINE)
    assert users
    assert users[-1] not in ("root", "0")
    dependencies_installed = dockerfile.index("pip install -r")
    assert dockerfile.index("COPY pyproject.toml") < dependencies_installed < dockerfile.index("COPY backend")


def test_dockerfile_starts_uvicorn_from_env(dockerfile: str) -> None:
    command = dockerfile[dockerfile.index("\nCMD ") :]
    for flag in ('--workers \\"$WEB_CONCURRENCY\\"', "--no-server-header", "--no-proxy-headers"):
        assert flag in command, flag
    # Proxy headers: the app's own middleware, trusting FORWARDED_ALLOW_IPS from the environment.
    assert re.search(r"^\s+FORWARDED_ALLOW_IPS=", dockerfile, flags=re.MULTILINE)
    assert "HEALTHCHECK" in dockerfile


def test_no_registry_address_in_lock_files() -> None:
    lock = (ROOT / "package-lock.json").read_text()
    assert '"resolved"' not in lock
