"""What only the Aerospike online store has to get right, beyond the shared contract
(test_online_store_contract.py): one set for every tenant, batch results read record by
record, a start-up that waits for a late server, and reads that give up on a silent node.

Tests marked `aerospike` need a server (AEROSPIKE_HOSTS); the others run anywhere.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import aerospike
import pytest
from aerospike import exception as aerospike_errors

from app.core.auth import PROJECT_ID_PATTERN
from app.core.settings import BackendSettings
from app.db.aerospike import RECORD_SET, AerospikeOnlineStore, parse_hosts, record_key
from app.db.online_store import RecordRejected, RecordWrite, WriteConflict
from tests.conftest import AEROSPIKE_HOSTS, requires_aerospike, unique
from tests.support.own_redis import free_port
from tests.support.tcp_relay import TcpRelay

TTL = 600


def a_record(seed: int = 1) -> dict[str, Any]:
    return {"features": {"views": {"c": seed}}, "offsets": {"0": seed}, "updated_ms": seed}


def server_port() -> int:
    return parse_hosts(AEROSPIKE_HOSTS or "")[0][1]


def at_port(settings: BackendSettings, port: int, **update: Any) -> BackendSettings:
    """The settings with the Aerospike seed at 127.0.0.1:port, and `update`."""
    return settings.model_copy(update={"aerospike_hosts": f"127.0.0.1:{port}", **update})


@pytest.fixture
async def store(backend_settings: BackendSettings) -> AsyncIterator[AerospikeOnlineStore]:
    store = AerospikeOnlineStore(backend_settings)
    await store.initialize()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def relay() -> AsyncIterator[TcpRelay]:
    relay = TcpRelay(server_port(), port=free_port())
    try:
        yield relay
    finally:
        await relay.stop()


class TestOneSetForEveryTenant:
    def test_keys_cannot_collide_through_the_separator(self) -> None:
        assert record_key("a:b", "c") != record_key("a", "b:c")
        assert record_key("p1", "u:1") == "p1:u:1"

    @pytest.mark.parametrize("project_id", ["p" * 64, "P-1_x" * 12 + "abcd"])
    def test_the_longest_project_id_the_api_accepts_is_valid(self, project_id: str) -> None:
        assert re.fullmatch(PROJECT_ID_PATTERN, project_id)
        assert record_key(project_id, "u1").startswith(f"{project_id}:")

    @pytest.mark.aerospike
    @requires_aerospike
    async def test_a_record_lives_in_the_records_set_under_its_project_and_user(
        self, store: AerospikeOnlineStore, backend_settings: BackendSettings
    ) -> None:
        project = unique("proj")
        await store.put(project, "u1", a_record(), TTL, None)

        def exists() -> bool:
            client = aerospike.client({"hosts": parse_hosts(AEROSPIKE_HOSTS or "")})
            try:
                key = (backend_settings.aerospike_namespace, RECORD_SET, record_key(project, "u1"))
                _, meta = client.exists(key)
                return meta is not None
            finally:
                client.close()

        assert await asyncio.to_thread(exists)

    @pytest.mark.aerospike
    @requires_aerospike
    async def test_a_64_character_project_id_writes_and_reads(
        self, store: AerospikeOnlineStore
    ) -> None:
        project = unique("p").ljust(64, "x")
        assert await store.put_many(project, [RecordWrite("u1", a_record(), None)], TTL) == [None]
        stored = await store.get(project, "u1")
        assert stored is not None
        assert stored.record == a_record()

    @pytest.mark.aerospike
    @requires_aerospike
    async def test_more_projects_than_a_namespace_has_sets_all_write(
        self, store: AerospikeOnlineStore
    ) -> None:
        # A set per project would fail from the 4,096th (the namespace's set limit).
        prefix = unique("many")
        projects = [f"{prefix}_{i}" for i in range(4_100)]
        await asyncio.gather(*(store.put(p, "u1", a_record(), 60, None) for p in projects))
        last = await store.get(projects[-1], "u1")
        assert last is not None


@pytest.mark.aerospike
@requires_aerospike
class TestBatchWrite:
    async def test_one_call_writes_creates_and_updates_and_reports_each_conflict(
        self, store: AerospikeOnlineStore
    ) -> None:
        project = unique("proj")
        await store.put(project, "old", a_record(1), TTL, None)
        old = await store.get(project, "old")
        assert old is not None
        writes = [RecordWrite(f"u{i}", a_record(i), None) for i in range(500)]
        writes += [RecordWrite("old", a_record(2), old.generation)]
        writes += [RecordWrite("old", a_record(3), old.generation)]  # now stale

        results = await store.put_many(project, writes, TTL)

        assert results[:501] == [None] * 501
        assert isinstance(results[501], WriteConflict)
        got = await store.get_many(project, ["u0", "u499", "old"])
        assert [r.record if r else None for r in got] == [a_record(0), a_record(499), a_record(2)]

    async def test_a_record_too_big_for_the_namespace_is_rejected_not_retried(
        self, store: AerospikeOnlineStore
    ) -> None:
        # The test server's max-record-size is 4M (deploy/aerospike/aerospike.conf too).
        project = unique("proj")
        # Random text: the codec's zstd would shrink a repeated one below the limit.
        noise = base64.b64encode(random.Random(5).randbytes(5_000_000)).decode()
        big = {"features": {"blob": noise}, "offsets": {}, "updated_ms": 1}
        with pytest.raises(RecordRejected):
            await store.put(project, "big", big, TTL, None)
        with pytest.raises(RecordRejected):
            await store.put_many(
                project,
                [RecordWrite("small", a_record(), None), RecordWrite("big", big, None)],
                TTL,
            )
        assert await store.get(project, "big") is None

    async def test_a_silent_node_fails_the_batch_instead_of_reporting_it_written(
        self, backend_settings: BackendSettings, relay: TcpRelay
    ) -> None:
        await relay.start()
        settings = at_port(backend_settings, relay.port, aerospike_write_timeout_ms=300)
        store = AerospikeOnlineStore(settings)
        await store.initialize()
        try:
            relay.frozen = True
            with pytest.raises(aerospike_errors.AerospikeError):
                await store.put_many(unique("proj"), [RecordWrite("u1", a_record(), None)], TTL)
        finally:
            await store.close()


class TestStartUp:
    @pytest.mark.aerospike
    @requires_aerospike
    async def test_start_up_waits_for_a_server_that_opens_late(
        self, backend_settings: BackendSettings, relay: TcpRelay, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = at_port(backend_settings, relay.port, aerospike_startup_timeout_s=30)
        store = AerospikeOnlineStore(settings)

        async def open_late() -> None:
            await asyncio.sleep(1.0)
            await relay.start()

        with caplog.at_level(logging.WARNING, logger="app.db.aerospike"):
            await asyncio.gather(store.initialize(), open_late())
        try:
            assert any("not ready" in r.getMessage() for r in caplog.records)
            project = unique("proj")
            await store.put(project, "u1", a_record(), TTL, None)
            assert await store.get(project, "u1") is not None
        finally:
            await store.close()

    async def test_start_up_gives_up_after_its_bound_with_the_connection_error(
        self, backend_settings: BackendSettings, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = at_port(backend_settings, free_port(), aerospike_startup_timeout_s=0.5)
        store = AerospikeOnlineStore(settings)
        with (
            caplog.at_level(logging.WARNING, logger="app.db.aerospike"),
            pytest.raises(aerospike_errors.AerospikeError),
        ):
            await store.initialize()
        await store.close()
        assert sum("not ready" in r.getMessage() for r in caplog.records) >= 2


class TestReadTimeouts:
    def test_read_policies_carry_the_configured_timeouts(
        self, backend_settings: BackendSettings
    ) -> None:
        settings = backend_settings.model_copy(
            update={
                "aerospike_read_timeout_ms": 20,
                "aerospike_batch_read_timeout_ms": 200,
                "aerospike_socket_timeout_ms": 7,
            }
        )
        policies = AerospikeOnlineStore(settings).client_config()["policies"]
        assert policies["read"]["total_timeout"] == 20
        assert policies["batch"]["total_timeout"] == 200
        assert policies["read"]["socket_timeout"] == policies["batch"]["socket_timeout"] == 7

    @pytest.mark.aerospike
    @requires_aerospike
    async def test_reads_from_a_silent_node_raise_a_timeout_instead_of_waiting(
        self, backend_settings: BackendSettings, relay: TcpRelay
    ) -> None:
        await relay.start()
        store = AerospikeOnlineStore(at_port(backend_settings, relay.port))
        await store.initialize()
        try:
            relay.frozen = True
            with pytest.raises(aerospike_errors.TimeoutError):
                await store.get(unique("proj"), "u1")
            with pytest.raises(aerospike_errors.TimeoutError):
                await store.get_many(unique("proj"), ["u1", "u2"])
        finally:
            await store.close()
