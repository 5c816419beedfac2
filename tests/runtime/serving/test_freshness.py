"""Freshness in every read: each user's answer says when the newest counted event
happened and when compute last wrote the record, so "0 because nothing happened" and
"0 because compute is behind" can be told apart. On the Redis and SQLite stores."""

from __future__ import annotations

from tests.runtime.serving.conftest import ServingKit
from tests.runtime.serving.test_endpoints import deployed, shopper

# The kit's clock starts at 2025-05-01T12:00:00Z; the shopper's newest event is 1 min old.
WRITTEN_AT = "2025-05-01T12:00:00.000Z"
NEWEST_EVENT = "2025-05-01T11:59:00.000Z"


class TestFreshness:
    async def test_a_read_says_when_the_newest_event_happened_and_when_compute_wrote(
        self, kit: ServingKit, project_id: str
    ):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        kit.clock.advance(10 * 60)  # ten minutes without a write: values slide, not these
        async with kit.client(project_id) as client:
            body = (await client.get(f"/features/{project_id}/users/u-1")).json()
        assert body["last_event_at"] == NEWEST_EVENT
        assert body["updated_at"] == WRITTEN_AT
        assert body["as_of"] == "2025-05-01T12:10:00.000Z"
        assert body["features"]["cart_adds_5m"] == 0  # zero, and the answer says why

    async def test_a_user_compute_never_wrote_has_no_freshness(
        self, kit: ServingKit, project_id: str
    ):
        await deployed(kit, project_id)
        async with kit.client(project_id) as client:
            body = (await client.get(f"/features/{project_id}/users/never-seen")).json()
        assert (body["last_event_at"], body["updated_at"]) == (None, None)

    async def test_each_user_of_a_batch_has_its_own(self, kit: ServingKit, project_id: str):
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        kit.clock.advance(60)
        await shopper(kit, snap, "u-2")
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/users/batch", json={"user_ids": ["u-2", "nobody", "u-1"]}
            )
        users = response.json()["users"]
        assert [(u["user_id"], u["last_event_at"], u["updated_at"]) for u in users] == [
            ("u-2", "2025-05-01T12:00:00.000Z", "2025-05-01T12:01:00.000Z"),
            ("nobody", None, None),
            ("u-1", NEWEST_EVENT, WRITTEN_AT),
        ]
