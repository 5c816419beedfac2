"""Webhook details and secret rotation, as a storefront and ingestion see them."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

from standardwebhooks import Webhook

from app.core.secrets import secrets_key
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import sign
from tests.api.conftest import INGEST_URL, Api


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def _shared_secrets(api: Api, pipeline_id: str) -> WebhookSecrets:
    cache = api.resources.cache
    assert cache is not None
    raw = await cache.get(secrets_key(api.project, pipeline_id))
    assert raw is not None
    return WebhookSecrets.model_validate_json(raw)


class TestWebhookDetails:
    async def test_details_name_the_url_scheme_headers_and_secret(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        response = await api.request("GET", f"/pipelines/{pipeline['id']}/webhook")
        assert response.status_code == 200
        info = response.json()
        assert info["ingest_url"] == f"{INGEST_URL}/ingest/{api.project}/{pipeline['id']}"
        assert info["batch_ingest_url"] == info["ingest_url"] + "/batch"
        assert info["signature_scheme"] == "standard-webhooks-v1"
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= set(info["headers"])
        assert info["previous_secret"] is None
        assert info["previous_secret_expires_at"] is None

    async def test_secret_is_whsec_with_32_random_bytes_unique_per_pipeline(self, api: Api) -> None:
        secrets = set()
        for _ in range(3):
            pipeline = await api.create_pipeline()
            info = (await api.request("GET", f"/pipelines/{pipeline['id']}/webhook")).json()
            assert info["secret"].startswith("whsec_")
            assert len(base64.b64decode(info["secret"].removeprefix("whsec_"))) == 32
            secrets.add(info["secret"])
        assert len(secrets) == 3

    async def test_a_signature_made_as_documented_verifies_with_standard_webhooks(
        self, api: Api
    ) -> None:
        pipeline = await api.create_pipeline()
        secret = (await api.request("GET", f"/pipelines/{pipeline['id']}/webhook")).json()["secret"]
        body = b'{"event":"add_to_cart","user_id":"u1","properties":{"product_id":"p1"}}'
        timestamp = int(time.time())
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, "msg_1", timestamp, body),
        }
        assert Webhook(secret).verify(body, headers) is not None

    async def test_creation_shares_the_secret_with_ingestion(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        info = (await api.request("GET", f"/pipelines/{pipeline['id']}/webhook")).json()
        assert await _shared_secrets(api, pipeline["id"]) == WebhookSecrets(current=info["secret"])


class TestRotation:
    async def test_rotation_keeps_the_old_secret_for_the_default_24_hours(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        url = f"/pipelines/{pipeline['id']}/webhook"
        before = (await api.request("GET", url)).json()
        started = datetime.now(UTC)
        response = await api.request("POST", f"{url}/rotate")
        finished = datetime.now(UTC)
        assert response.status_code == 200
        rotated = response.json()
        assert rotated["secret"] != before["secret"]
        assert rotated["previous_secret"] == before["secret"]
        expires = _parse(rotated["previous_secret_expires_at"])
        grace = timedelta(hours=24)
        assert started + grace - timedelta(milliseconds=1) <= expires <= finished + grace
        assert (await api.request("GET", url)).json() == rotated

    async def test_rotation_reaches_ingestion_without_a_deploy(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        rotated = (
            await api.request("POST", f"/pipelines/{pipeline['id']}/webhook/rotate", json={})
        ).json()
        shared = await _shared_secrets(api, pipeline["id"])
        assert (shared.current, shared.previous) == (rotated["secret"], rotated["previous_secret"])

    async def test_grace_hours_in_the_body_override_the_default(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        response = await api.request(
            "POST", f"/pipelines/{pipeline['id']}/webhook/rotate", json={"grace_hours": 2}
        )
        expires = _parse(response.json()["previous_secret_expires_at"])
        assert timedelta(hours=1) < expires - datetime.now(UTC) <= timedelta(hours=2)

    async def test_zero_grace_retires_the_old_secret_at_once(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        response = await api.request(
            "POST", f"/pipelines/{pipeline['id']}/webhook/rotate", json={"grace_hours": 0}
        )
        rotated = response.json()
        assert (rotated["previous_secret"], rotated["previous_secret_expires_at"]) == (None, None)
        shared = await _shared_secrets(api, pipeline["id"])
        assert shared == WebhookSecrets(current=rotated["secret"])

    async def test_a_second_rotation_keeps_only_the_latest_previous_secret(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        url = f"/pipelines/{pipeline['id']}/webhook/rotate"
        first = (await api.request("POST", url)).json()
        second = (await api.request("POST", url)).json()
        assert second["previous_secret"] == first["secret"]

    async def test_grace_hours_are_bounded(self, api: Api) -> None:
        pipeline = await api.create_pipeline()
        url = f"/pipelines/{pipeline['id']}/webhook/rotate"
        for body in ({"grace_hours": -1}, {"grace_hours": 721}, {"grace": 1}):
            response = await api.request("POST", url, json=body)
            assert response.status_code == 422, body
            assert response.json()["error"] == "ValidationError"
        assert (await api.request("POST", url, json={"grace_hours": 720})).status_code == 200

    async def test_rotation_bumps_the_revision_and_changes_nothing_else_visible(
        self, api: Api
    ) -> None:
        pipeline = await api.create_pipeline()
        await api.request("POST", f"/pipelines/{pipeline['id']}/webhook/rotate")
        stored = (await api.request("GET", f"/pipelines/{pipeline['id']}")).json()
        # A dashboard tab that loaded revision 1 must reload before saving over the rotation.
        assert stored["revision"] == 2
        assert {k: v for k, v in stored.items() if k not in {"revision", "updated_at"}} == {
            k: v for k, v in pipeline.items() if k not in {"revision", "updated_at", "features"}
        }
