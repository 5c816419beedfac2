"""Standard Webhooks signatures (https://www.standardwebhooks.com/), as the platform's
ingestion verifies them: `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`, keyed by the base64 part of the pipeline's
`whsec_...` secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """Returns the `webhook-signature` header value for `body`."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, body: bytes, *, now_s: int | None = None) -> dict[str, str]:
    """Returns the three webhook headers plus Content-Type for one delivery of `body`.

    Every call is a new delivery (a new webhook-id): a retry is signed anew so its
    timestamp is fresh, and the events' own `event_id`s are what make it idempotent."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    timestamp = int(time.time()) if now_s is None else now_s
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, webhook_id, timestamp, body),
    }


def new_event_id() -> str:
    """A fresh event id (a random UUID), for events whose sender has none of its own."""
    return str(uuid.uuid4())
