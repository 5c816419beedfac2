"""Small helpers the config services share: fresh ids, the store's notion of now, and
the stale-edit error."""

from __future__ import annotations

from datetime import UTC, datetime

from bson import ObjectId

from app.core.errors import RevisionConflict
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


def revision_conflict(kind: str, name: str, expected: int, current: int) -> RevisionConflict:
    """Returns the 409 for an edit of the `kind` ("Pipeline", "Feature") named `name`
    based on revision `expected` while the stored one is `current`."""
    return RevisionConflict(
        f"{kind} {name!r} was changed by someone else: your edit is based on "
        f"revision {expected}, the current revision is {current}. "
        "Reload it and apply your change again."
    )
