"""Rules both config stores share, so MongoDB and SQLite behave the same.

- Ids are 24 lower-case hex characters. Anything else is "not found" and never becomes
  part of a query (no operator can ride in on an id).
- Datetimes are stored in UTC at millisecond precision: that is what BSON keeps, so the
  SQLite store truncates the same way and a document reads back equal on both.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel

from app.schemas.common import OBJECT_ID_PATTERN

_OBJECT_ID_RE = re.compile(OBJECT_ID_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

M = TypeVar("M", bound=BaseModel)


def is_object_id(value: object) -> bool:
    """Returns whether `value` is a string of exactly 24 lower-case hex characters."""
    return isinstance(value, str) and _OBJECT_ID_RE.fullmatch(value) is not None


def require_str(value: object, what: str) -> str:
    """Returns `value` if it is a str; raises TypeError otherwise.

    Filters are built from plain values only: a dict passed where a project id belongs
    would otherwise become a MongoDB operator.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def to_storage_time(value: datetime) -> datetime:
    """Returns `value` in UTC truncated to milliseconds (naive values are taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def to_millis(value: datetime) -> int:
    """Returns the Unix time of `value` in whole milliseconds (the SQLite sort key)."""
    return (to_storage_time(value) - _EPOCH) // timedelta(milliseconds=1)


def normalize_times(doc: M) -> M:
    """Returns a copy of `doc` whose top-level datetimes went through `to_storage_time`."""
    updates = {name: to_storage_time(value) for name, value in doc if isinstance(value, datetime)}
    return doc.model_copy(update=updates) if updates else doc
