"""MongoDB store only: the revision claims that make replace a real compare-and-set on
FerretDB, whose updates check the filter and write in two steps."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from app.core.settings import BackendSettings
from app.db.mongodb import CLAIM_STALE_AFTER, MongoConfigStore
from tests.conftest import unique
from tests.factories import pipeline_document

pytestmark = pytest.mark.mongodb


@pytest.fixture
async def claims(
    backend_settings: BackendSettings,
) -> AsyncIterator[tuple[MongoConfigStore, object]]:
    store = MongoConfigStore(backend_settings)
    await store.initialize()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(backend_settings.mongodb_url)
    try:
        yield store, client[backend_settings.mongodb_database]["revision_claims"]
    finally:
        await store.close()
        await client.drop_database(backend_settings.mongodb_database)
        await client.close()


async def test_a_replace_is_refused_while_another_writer_holds_the_claim(claims) -> None:
    store, coll = claims
    doc = pipeline_document(unique("proj"))
    await store.insert_pipeline(doc)
    await coll.insert_one({"_id": f"pipelines:{doc.id}:1", "at": datetime.now(UTC)})
    edited = doc.model_copy(update={"description": "late", "revision": 2})
    assert await store.replace_pipeline(edited, expected_revision=1) is False
    assert await store.get_pipeline(doc.project_id, doc.id) == doc


async def test_a_stale_claim_of_a_dead_writer_is_taken_over(claims) -> None:
    store, coll = claims
    doc = pipeline_document(unique("proj"))
    await store.insert_pipeline(doc)
    old = datetime.now(UTC) - CLAIM_STALE_AFTER - timedelta(seconds=1)
    await coll.insert_one({"_id": f"pipelines:{doc.id}:1", "at": old})
    edited = doc.model_copy(update={"description": "after crash", "revision": 2})
    assert await store.replace_pipeline(edited, expected_revision=1) is True
    assert await store.get_pipeline(doc.project_id, doc.id) == edited


async def test_claims_are_released_after_a_replace(claims) -> None:
    store, coll = claims
    doc = pipeline_document(unique("proj"))
    await store.insert_pipeline(doc)
    await store.replace_pipeline(doc.model_copy(update={"revision": 2}), expected_revision=1)
    await store.replace_pipeline(doc.model_copy(update={"revision": 3}), expected_revision=1)
    assert await coll.count_documents({}) == 0
