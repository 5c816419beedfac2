"""A real online store wrapped so a test can step in front of one method (a rival writer,
an outage) while every other call goes to the store unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.db.online_store import OnlineStore, StoredRecord


class DelegatingStore(OnlineStore):
    """Forwards the interface's abstract methods to `inner`; the optional ones
    (`put_many`, `get_many_mapped`) keep the interface's defaults unless a subclass
    overrides them."""

    def __init__(self, inner: OnlineStore) -> None:
        self._inner = inner

    async def ping(self) -> None:
        await self._inner.ping()

    async def get(
        self, project_id: str, user_id: str, *, with_ids: bool = True
    ) -> StoredRecord | None:
        return await self._inner.get(project_id, user_id, with_ids=with_ids)

    async def get_many(self, project_id: str, user_ids: Sequence[str]) -> list[StoredRecord | None]:
        return await self._inner.get_many(project_id, user_ids)

    async def put(
        self,
        project_id: str,
        user_id: str,
        record: dict[str, Any],
        ttl_seconds: int,
        expected_generation: int | None,
    ) -> None:
        await self._inner.put(project_id, user_id, record, ttl_seconds, expected_generation)
