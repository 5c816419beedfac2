"""An online store that does not answer is a 503 with Retry-After, never a 500 or a
silently empty answer; and a failure that is not the store's is never a 503."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import httpx
from pydantic import SecretStr

from app.core.auth import issue_token
from app.core.config_loader import publish_config
from app.core.settings import AuthSettings, BackendSettings, ServingSettings
from runtime.compute.specs import build_specs
from runtime.serving.main import create_app
from tests.conftest import unique
from tests.runtime.serving.conftest import ServingKit
from tests.runtime.serving.test_endpoints import make_snapshot


def closed_port() -> int:
    """A local port nothing listens on (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_store_is_503_with_retry_after(backend_settings: BackendSettings):
    # The config comes through the in-process cache; only the online store is down.
    backends = backend_settings.model_copy(
        update={
            "online_store": "redis",
            "redis_url": f"redis://127.0.0.1:{closed_port()}/0",
            "cache": "memory",
            "config_store": "sqlite",
        }
    )
    auth = AuthSettings(secret=SecretStr(secrets.token_urlsafe(32)))
    app = create_app(ServingSettings(environment="production", backends=backends, auth=auth))
    project_id = unique("shop")
    token = issue_token(auth, "recommender", [project_id])
    async with app.router.lifespan_context(app):
        await publish_config(app.state.resources.cache, make_snapshot(project_id))
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://serving", headers=headers
        ) as client:
            single = await client.get(f"/features/{project_id}/users/u-1")
            batch = await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ["u-1"]}
            )
    for response in (single, batch):
        assert response.status_code == 503
        assert response.json()["error"] == "OnlineStoreUnavailable"
        assert response.headers["retry-after"] == "1"


async def test_a_record_the_merge_cannot_read_is_a_500_not_the_store_s_503(
    kit: ServingKit, project_id: str
):
    # The store answers; the merge (run as each record is decoded) fails on a tile
    # compute could never have written. That is a bug to see, not an outage to retry.
    snap = make_snapshot(project_id)
    await kit.deploy(snap)
    spec = next(s for s in build_specs(snap).specs if s.aggregation == "COUNT")
    window = spec.windows[0]
    tiles = {str(window.tile_of(kit.clock())): "not a count"}
    broken: dict[str, Any] = {
        "features": {spec.name: {"fp": spec.fingerprint, "w": {window.label: tiles}}},
        "offsets": {},
        "updated_ms": 0,
    }
    await kit.store.put(project_id, "u-1", broken, 3600, None)
    transport = httpx.ASGITransport(app=kit.app, raise_app_exceptions=False)
    headers = {"authorization": f"Bearer {kit.token(project_id)}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://serving", headers=headers
    ) as client:
        batch = await client.post(f"/features/{project_id}/users/batch", json={"user_ids": ["u-1"]})
        single = await client.get(f"/features/{project_id}/users/u-1")
    for response in (batch, single):
        assert response.status_code == 500
        assert response.json()["error"] == "InternalError"
