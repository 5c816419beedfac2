"""docker-compose.yml cannot run here (no Docker engine): these tests keep it honest by
reading it. Every process gets the env its settings need, every backend it points at is a
service of the file, and every mounted file exists."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from app.core.settings import (
    ArchiveSettings,
    ComputeSettings,
    ConfigApiSettings,
    IngestionSettings,
    ServiceSettings,
    ServingSettings,
)

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES: dict[str, type[ServiceSettings]] = {
    "config-api": ConfigApiSettings,
    "ingestion": IngestionSettings,
    "compute": ComputeSettings,
    "archive": ArchiveSettings,
    "serving": ServingSettings,
}
BACKEND_VARS = (
    "CONFIG_STORE",
    "MONGODB_URL",
    "EVENT_LOG",
    "KAFKA_BOOTSTRAP",
    "ONLINE_STORE",
    "AEROSPIKE_HOSTS",
    "CACHE",
    "REDIS_URL",
    "ANALYTICS",
    "CLICKHOUSE_URL",
    "JWT_SECRET",
)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "environment must be a mapping"
    resolved = {}
    for key, value in env.items():
        # ${VAR:?message} is filled by the user at `up`; stand in a valid value.
        text = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 40, str(value))
        resolved[key] = text
    return resolved


def _host(address: str) -> str:
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    assert parsed.hostname, f"no host in {address!r}"
    return parsed.hostname


class TestCompose:
    def test_compose_names_every_process_and_backend(self, compose: dict[str, Any]) -> None:
        services = set(compose["services"])
        assert set(APP_SERVICES) <= services
        assert {"mongodb", "kafka", "aerospike", "redis", "clickhouse"} <= services

    @pytest.mark.parametrize("name", sorted(APP_SERVICES))
    def test_every_process_has_its_backend_env_set(
        self, compose: dict[str, Any], name: str
    ) -> None:
        env = _env(compose["services"][name])
        missing = [var for var in BACKEND_VARS if not env.get(var)]
        assert missing == [], f"{name} lacks {missing}"

    @pytest.mark.parametrize("name", sorted(APP_SERVICES))
    def test_every_backend_address_is_a_service_of_the_file(
        self, compose: dict[str, Any], name: str
    ) -> None:
        env = _env(compose["services"][name])
        services = set(compose["services"])
        for var in ("MONGODB_URL", "KAFKA_BOOTSTRAP", "AEROSPIKE_HOSTS", "REDIS_URL"):
            for address in env[var].split(","):
                assert _host(address) in services, f"{name}: {var}={address}"
        assert _host(env["CLICKHOUSE_URL"]) in services

    @pytest.mark.parametrize("name", sorted(APP_SERVICES))
    def test_env_builds_valid_production_settings(
        self, compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = _env(compose["services"][name])
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = APP_SERVICES[name]()
        assert settings.environment == "production"
        assert settings.backends.config_store == "mongodb"
        assert settings.backends.event_log == "kafka"
        assert settings.backends.online_store == "aerospike"

    def test_mounted_files_exist(self, compose: dict[str, Any]) -> None:
        for name, service in compose["services"].items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    assert (ROOT / source).is_file(), f"{name} mounts missing {source}"

    @pytest.mark.parametrize("name", sorted(APP_SERVICES))
    def test_process_command_points_at_a_real_module(
        self, compose: dict[str, Any], name: str
    ) -> None:
        command = compose["services"][name]["command"]
        module = command[2] if command[:2] == ["python", "-m"] else command[1].split(":")[0]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"


def test_dockerfile_copies_only_existing_paths() -> None:
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
