"""Config store fixtures: every contract test runs against SQLite and MongoDB (FerretDB).

The MongoDB store gets a database of its own per test (dropped afterwards); the SQLite
store a file in the test's temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from app.core.settings import BackendSettings
from app.db.config_store import ConfigStore
from app.db.mongodb import MongoConfigStore
from app.db.sqlite_config import SQLiteConfigStore


async def _drop_database(settings: BackendSettings) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_url, serverSelectionTimeoutMS=5000
    )
    try:
        await client.drop_database(settings.mongodb_database)
    finally:
        await client.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("mongodb", id="mongodb", marks=pytest.mark.mongodb),
    ]
)
async def config_store(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[ConfigStore]:
    """An initialised, empty config store of each kind."""
    store: ConfigStore
    if request.param == "sqlite":
        store = SQLiteConfigStore(backend_settings)
    else:
        store = MongoConfigStore(backend_settings)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()
        if request.param == "mongodb":
            await _drop_database(backend_settings)
