"""Webhook signing secrets, Standard Webhooks style (https://www.standardwebhooks.com).

A secret is `whsec_` + base64 of 32 random bytes from `secrets`. A storefront signs each
request with the base64-decoded bytes after `whsec_`:

    webhook-signature: v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">

Rotation keeps the previous secret valid for a grace period, so storefronts can switch
without dropping events. Only two secrets are kept: rotating again inside the grace
period retires the older previous secret at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

from app.db.documents import PipelineDocument

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
SECRET_BYTES = 32
SIGNATURE_VERSION = "v1"
SIGNATURE_SCHEME = "standard-webhooks-v1"
SIGNATURE_DESCRIPTION = (
    "Standard Webhooks: webhook-signature is 'v1,' + base64(HMAC-SHA256(key, "
    "'{webhook-id}.{webhook-timestamp}.{raw body}')), key = base64-decoded secret after "
    "'whsec_'. webhook-timestamp is Unix seconds and must be within 5 minutes of the "
    "server's clock; webhook-id is unique per message (replays are refused)."
)
HEADERS: dict[str, str] = {
    "webhook-id": "Unique message id, e.g. msg_2KWPBgLlAfxdpx2AI54pPJ85f4W (replays are refused)",
    "webhook-timestamp": "Unix time in seconds when the message was signed",
    "webhook-signature": "'v1,<base64 signature>'; several space-separated signatures allowed",
    "content-type": "application/json",
}


def generate_secret() -> str:
    """Returns a new `whsec_...` secret made of 32 bytes from a cryptographic RNG."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """Returns the HMAC key of a `whsec_` secret; raises ValueError if it is not one."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secret must start with 'whsec_'")
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Returns the `webhook-signature` header value (`v1,<base64>`) for one message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def rotated(doc: PipelineDocument, now: datetime, grace: timedelta) -> PipelineDocument:
    """Returns `doc` with a new current secret; the old one stays valid for `grace`
    (a zero grace retires it at once)."""
    keep_previous = grace > timedelta(0)
    return doc.model_copy(
        update={
            "webhook_secret": generate_secret(),
            "previous_webhook_secret": doc.webhook_secret if keep_previous else None,
            "previous_secret_expires_at": now + grace if keep_previous else None,
        }
    )
