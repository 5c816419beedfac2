"""The dashboard runs in a browser on another origin: the config API answers its CORS
preflight for the configured origins only, and sends no CORS headers when none is set."""

from __future__ import annotations

from pathlib import Path

from httpx import ASGITransport, AsyncClient

import main
from app.core.settings import BackendSettings, ConfigApiSettings

DASHBOARD = "https://dashboard.example.com"
PREFLIGHT = {
    "Origin": DASHBOARD,
    "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "authorization,content-type",
}


def _settings(tmp_path: Path, origins: list[str]) -> ConfigApiSettings:
    return ConfigApiSettings(
        ENVIRONMENT="development",
        backends=BackendSettings(config_store="sqlite", cache="memory", data_dir=tmp_path),
        cors_origins=origins,
    )


async def _preflight(settings: ConfigApiSettings, origin: str) -> tuple[int, dict[str, str]]:
    app = main.create_app(settings)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://t") as client:
        response = await client.options(
            "/api/v1/projects/p1/pipelines", headers={**PREFLIGHT, "Origin": origin}
        )
    return response.status_code, dict(response.headers)


async def test_a_configured_dashboard_origin_passes_the_preflight(tmp_path: Path) -> None:
    status, headers = await _preflight(_settings(tmp_path, [DASHBOARD]), DASHBOARD)
    assert status == 200
    assert headers["access-control-allow-origin"] == DASHBOARD
    assert "authorization" in headers["access-control-allow-headers"].lower()


async def test_another_origin_gets_no_cors_permission(tmp_path: Path) -> None:
    _, headers = await _preflight(_settings(tmp_path, [DASHBOARD]), "https://evil.example")
    assert "access-control-allow-origin" not in headers


async def test_without_configured_origins_no_cors_headers_are_sent(tmp_path: Path) -> None:
    _, headers = await _preflight(_settings(tmp_path, []), DASHBOARD)
    assert "access-control-allow-origin" not in headers
