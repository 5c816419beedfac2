"""Reading feature values: one store read, then the tile merge relative to now.

The plan calls this module the Aerospike reader; the class works over ANY
`OnlineStore` (Aerospike, Redis, the embedded SQLite store), since stores keep the
record opaque and the maths lives in `runtime/compute` (`merge.py` applies it to many
records at one `now`). Values are merged at
read time from the tiles inside `(now - window, now]`, so a window slides forward
without any write: a 5m count drops back to 0 five minutes (plus at most one 5 s tile)
after the user's last event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from app.core.errors import OnlineStoreUnavailable
from app.db.online_store import OnlineStore, StoredRecord
from runtime.serving.metrics import ServingMetrics
from runtime.serving.plan import Selection

logger = logging.getLogger(__name__)

Clock = Callable[[], int]
"""Returns the current time in epoch milliseconds (tests inject their own)."""


def system_clock() -> int:
    """Returns the wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class FeatureReader:
    """Reads users' records from an online store and serves their feature values."""

    def __init__(self, store: OnlineStore, metrics: ServingMetrics) -> None:
        self._store = store
        self._metrics = metrics

    async def read_one(
        self, project_id: str, user_id: str, selection: Selection, now_ms: int
    ) -> dict[str, Any]:
        """Returns {feature key: value} for the selection at `now_ms`.

        A user without a record gets every selected key at its empty value. Raises
        OnlineStoreUnavailable when the store cannot answer.
        """
        started = time.perf_counter()
        try:
            stored = await self._store.get(project_id, user_id)
        except Exception as exc:
            raise _unavailable(exc) from exc
        self._metrics.store_read_seconds.labels("get").observe(time.perf_counter() - started)
        if stored is None:
            return dict(selection.empty)
        return selection.merger(now_ms)(stored.record)

    async def read_many(
        self, project_id: str, user_ids: Sequence[str], selection: Selection, now_ms: int
    ) -> list[dict[str, Any]]:
        """Returns one {feature key: value} per user id, in the order of `user_ids`, from
        ONE batch read of the store (a repeated id is answered each time it appears).

        Raises OnlineStoreUnavailable when the store cannot answer.
        """
        started = time.perf_counter()
        try:
            records: list[StoredRecord | None] = await self._store.get_many(project_id, user_ids)
        except Exception as exc:
            raise _unavailable(exc) from exc
        self._metrics.store_read_seconds.labels("get_many").observe(time.perf_counter() - started)
        empty = selection.empty
        merge = selection.merger(now_ms)
        return [dict(empty) if stored is None else merge(stored.record) for stored in records]


def _unavailable(exc: Exception) -> OnlineStoreUnavailable:
    # Stores raise their driver's errors (redis, sqlite3, aerospike): the interface has
    # no common type. Only the store call is guarded, never the merge, so a bug in the
    # maths still surfaces as a 500; the traceback is logged either way.
    logger.warning("online store read failed: %r", exc, exc_info=exc)
    return OnlineStoreUnavailable("The online store did not answer; retry shortly")
