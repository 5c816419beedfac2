"""Webhook secrets: format, Standard Webhooks compatibility, rotation."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from app.core.secrets import secrets_of
from app.services.common import utc_now
from app.services.webhook_secrets import generate_secret, rotated, secret_key, sign
from tests.factories import pipeline_document


def test_secrets_are_whsec_base64_of_32_bytes_and_never_repeat() -> None:
    secrets = {generate_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32


def test_our_signature_verifies_with_the_standard_webhooks_library() -> None:
    secret = generate_secret()
    body = b'{"event":"search"}'
    timestamp = int(utc_now().timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
    }
    Webhook(secret).verify(body, headers)
    headers["webhook-signature"] = sign(generate_secret(), "msg_1", timestamp, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_a_secret_without_the_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="whsec_"):
        secret_key("c2VjcmV0")


def test_rotation_keeps_the_previous_secret_until_the_grace_ends() -> None:
    doc = pipeline_document("p")
    now = utc_now()
    after = rotated(doc, now, timedelta(hours=1))
    assert after.webhook_secret != doc.webhook_secret
    live = secrets_of(after, now + timedelta(minutes=59))
    assert (live.current, live.previous) == (after.webhook_secret, doc.webhook_secret)
    assert secrets_of(after, now + timedelta(hours=1)).previous is None


def test_zero_grace_drops_the_previous_secret() -> None:
    after = rotated(pipeline_document("p"), utc_now(), timedelta(0))
    assert (after.previous_webhook_secret, after.previous_secret_expires_at) == (None, None)
