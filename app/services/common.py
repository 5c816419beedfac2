"""Small helpers the config services share: fresh ids and the store's notion of now."""

from __future__ import annotations

from datetime import UTC, datetime

from bson import ObjectId

from app.db.config_common import to_storage_time


def new_id() -> str:
    """Returns a fresh ObjectId as 24 lower-case hex characters."""
    return str(ObjectId())


def utc_now() -> datetime:
    """Returns the current UTC time truncated to milliseconds.

    BSON keeps milliseconds, so a document written with this time reads back equal from
    every config store.
    """
    return to_storage_time(datetime.now(UTC))
