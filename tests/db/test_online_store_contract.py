"""Online store contract: Redis (real), SQLite, and Aerospike when AEROSPIKE_HOSTS is set.

Every test uses its own project id, so tests never see each other's records (and
Aerospike's records, in the one `records` set, expire by their TTL). Aerospike-only
behaviour (key layout, start-up, batch results) is in test_aerospike_store.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aerospike
import pytest
import redis.asyncio as aioredis
from aerospike import exception as aerospike_errors
from aerospike_helpers.batch.records import BatchRecords, Write

from app.core.settings import BackendSettings
from app.db.aerospike import (
    RECORD_SET,
    AerospikeOnlineStore,
    parse_hosts,
    write_arguments,
)
from app.db.aerospike import record_key as aerospike_key
from app.db.factory import make_online_store
from app.db.online_store import OnlineStore, RecordWrite, StoredRecord, WriteConflict
from app.db.redis_online import record_key
from app.db.sqlite_online import store_path
from app.tiles.aggregations import NUMERIC_AGGREGATIONS, Aggregation
from app.tiles.entities import PairApplier, entity_scope, read_pairs, store_id
from app.tiles.features import FeatureSpec
from app.tiles.filters import Condition, FeatureFilter
from app.tiles.merge import Merger
from app.tiles.record import AppliedEvent, apply_batch, serve
from app.tiles.windows import parse_window
from runtime.compute.entity_writer import EntityWriter
from runtime.compute.specs import EntitySpecs, ProjectSpecs
from tests.conftest import AEROSPIKE_HOSTS, REDIS_URL, requires_aerospike, unique
from tests.support.online import DelegatingStore

TTL = 3600
EXPIRY_BOUND_S = 15.0  # turns "never expires" into a failure; not a timing assertion

KINDS = [
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("aerospike", id="aerospike", marks=[pytest.mark.aerospike, requires_aerospike]),
]


class Kit:
    """A store of one kind plus the kind-specific look at a record's remaining TTL."""

    def __init__(self, kind: str, settings: BackendSettings, store: OnlineStore) -> None:
        self.kind = kind
        self.settings = settings
        self.store = store
        self.project = unique("proj")

    async def remaining_ttl_s(self, user_id: str) -> float:
        if self.kind == "redis":
            client = aioredis.Redis.from_url(REDIS_URL)
            try:
                return float(await client.pttl(record_key(self.project, user_id))) / 1000
            finally:
                await client.aclose()
        if self.kind == "sqlite":
            with sqlite3.connect(store_path(self.settings)) as conn:
                (expires_at_ms,) = conn.execute(
                    "SELECT expires_at_ms FROM online_records WHERE project_id = ? AND user_id = ?",
                    (self.project, user_id),
                ).fetchone()
            return (expires_at_ms - time.time() * 1000) / 1000

        def read_ttl() -> float:
            client = aerospike.client({"hosts": parse_hosts(AEROSPIKE_HOSTS or "")})
            try:
                namespace = self.settings.aerospike_namespace
                key = (namespace, RECORD_SET, aerospike_key(self.project, user_id))
                _, meta = client.exists(key)
                return float(meta["ttl"])
            finally:
                client.close()

        return await asyncio.to_thread(read_ttl)


@pytest.fixture(params=KINDS)
async def kit(
    request: pytest.FixtureRequest, backend_settings: BackendSettings
) -> AsyncIterator[Kit]:
    settings = backend_settings.model_copy(update={"online_store": request.param})
    store = make_online_store(settings)
    await store.initialize()
    try:
        yield Kit(request.param, settings, store)
    finally:
        await store.close()


def a_record(seed: int = 1) -> dict[str, Any]:
    return {
        "features": {"views": {"fp": "f1", "w": {"5m": {"1700000000000": {"c": seed}}}}},
        "offsets": {"3": 100 + seed},
        "updated_ms": 1_700_000_000_000 + seed,
    }


def a_large_record() -> dict[str, Any]:
    """100 features x 5 windows x 61 tiles, the size a busy user reaches."""
    windows = ["5m", "1h", "24h", "7d", "30d"]
    return {
        "features": {
            f"feature_{f:03d}": {
                "fp": f"fp{f}",
                "w": {
                    w: {
                        str(1_700_000_000_000 + t * 60_000): {"c": t, "s": t * 1.5}
                        for t in range(61)
                    }
                    for w in windows
                },
            }
            for f in range(100)
        },
        "offsets": {str(p): 10_000 + p for p in range(12)},
        "updated_ms": 1_700_000_000_000,
    }


NOW = 1_767_225_600_000


def compute_record() -> tuple[list[FeatureSpec], dict[str, Any]]:
    """A record as compute writes it: one feature per aggregation over two windows, a
    filter on one of them, events with ids, values of every JSON kind."""
    windows = (parse_window("1h"), parse_window("7d"))
    specs: list[FeatureSpec] = []
    for n, kind in enumerate(Aggregation):
        fieldless = kind in (Aggregation.COUNT, Aggregation.RECENCY)
        size = 3 if kind in (Aggregation.LAST_N, Aggregation.TOP_K) else None
        only_eur = FeatureFilter((Condition("currency", "eq", "EUR"),)) if n % 2 else None
        field = None if fieldless else ("price" if kind in NUMERIC_AGGREGATIONS else "sku")
        specs.append(FeatureSpec(f"f{n}", kind, field, windows, size=size, filter=only_eur))
    events = [
        AppliedEvent(
            0,
            i,
            "cart",
            NOW - i * 97_000,
            {"price": i * 1.25, "sku": f"sku-{i % 7}", "currency": ["EUR", "USD"][i % 2]},
            f"evt-{i}",
        )
        for i in range(80)
    ]
    return specs, apply_batch(None, {"cart": specs}, events, NOW).record


async def created(kit: Kit, user_id: str, record: dict[str, Any], ttl: int = TTL) -> StoredRecord:
    await kit.store.put(kit.project, user_id, record, ttl, expected_generation=None)
    stored = await kit.store.get(kit.project, user_id)
    assert stored is not None
    return stored


async def wait_until_absent(kit: Kit, user_id: str) -> None:
    for _ in range(int(EXPIRY_BOUND_S / 0.25)):
        if await kit.store.get(kit.project, user_id) is None:
            return
        await asyncio.sleep(0.25)
    pytest.fail(f"{user_id} did not expire")


class TestReadWrite:
    async def test_get_of_an_absent_record_returns_none(self, kit: Kit) -> None:
        assert await kit.store.get(kit.project, "nobody") is None

    async def test_a_created_record_reads_back_equal_with_a_generation(self, kit: Kit) -> None:
        stored = await created(kit, "u1", a_record())
        assert stored.record == a_record()
        assert isinstance(stored.generation, int)

    async def test_an_update_with_the_read_generation_replaces_the_record(self, kit: Kit) -> None:
        first = await created(kit, "u1", a_record(1))
        await kit.store.put(kit.project, "u1", a_record(2), TTL, first.generation)
        second = await kit.store.get(kit.project, "u1")
        assert second is not None
        assert second.record == a_record(2)
        assert second.generation != first.generation

    async def test_a_large_record_round_trips(self, kit: Kit) -> None:
        stored = await created(kit, "busy", a_large_record())
        assert stored.record == a_large_record()

    async def test_every_aggregation_filter_and_event_id_state_round_trips_and_serves_the_same(
        self, kit: Kit
    ) -> None:
        # The record compute writes for every aggregation (sized, filtered, fieldless),
        # with remembered event ids: each store must hand back what serving merges.
        specs, record = compute_record()
        stored = await created(kit, "every-kind", record)
        assert stored.record == record
        assert serve(stored.record, specs, NOW) == serve(record, specs, NOW)

    async def test_ping_answers(self, kit: Kit) -> None:
        await kit.store.ping()

    async def test_a_non_positive_ttl_is_refused(self, kit: Kit) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await kit.store.put(kit.project, "u1", a_record(), 0, None)


class TestCompareAndSet:
    async def test_a_stale_generation_is_a_write_conflict_and_changes_nothing(
        self, kit: Kit
    ) -> None:
        first = await created(kit, "u1", a_record(1))
        await kit.store.put(kit.project, "u1", a_record(2), TTL, first.generation)
        with pytest.raises(WriteConflict):
            await kit.store.put(kit.project, "u1", a_record(3), TTL, first.generation)
        current = await kit.store.get(kit.project, "u1")
        assert current is not None
        assert current.record == a_record(2)

    async def test_creating_a_record_that_exists_is_a_write_conflict(self, kit: Kit) -> None:
        await created(kit, "u1", a_record(1))
        with pytest.raises(WriteConflict):
            await kit.store.put(kit.project, "u1", a_record(2), TTL, expected_generation=None)

    async def test_updating_a_record_that_does_not_exist_is_a_write_conflict(
        self, kit: Kit
    ) -> None:
        with pytest.raises(WriteConflict):
            await kit.store.put(kit.project, "ghost", a_record(), TTL, expected_generation=1)
        assert await kit.store.get(kit.project, "ghost") is None

    async def test_concurrent_writers_from_one_generation_have_exactly_one_winner(
        self, kit: Kit
    ) -> None:
        base = await created(kit, "u1", a_record(0))

        async def attempt(seed: int) -> bool:
            try:
                await kit.store.put(kit.project, "u1", a_record(seed), TTL, base.generation)
            except WriteConflict:
                return False
            return True

        results = await asyncio.gather(*(attempt(seed) for seed in range(1, 9)))
        assert results.count(True) == 1
        winner = results.index(True) + 1
        current = await kit.store.get(kit.project, "u1")
        assert current is not None
        assert current.record == a_record(winner)


class TestTtl:
    async def test_a_write_sets_the_ttl(self, kit: Kit) -> None:
        await created(kit, "u1", a_record(), ttl=TTL)
        assert 0 < await kit.remaining_ttl_s("u1") <= TTL

    async def test_an_update_resets_the_ttl_to_the_new_one(self, kit: Kit) -> None:
        first = await created(kit, "u1", a_record(), ttl=100)
        await kit.store.put(kit.project, "u1", a_record(2), TTL, first.generation)
        assert 100 < await kit.remaining_ttl_s("u1") <= TTL

    async def test_an_expired_record_reads_as_absent_and_can_be_created_again(
        self, kit: Kit
    ) -> None:
        await created(kit, "u1", a_record(1), ttl=1)
        await wait_until_absent(kit, "u1")
        assert await kit.store.get_many(kit.project, ["u1"]) == [None]
        again = await created(kit, "u1", a_record(2))
        assert again.record == a_record(2)


class TestGetMany:
    async def test_results_follow_the_request_order_with_gaps(self, kit: Kit) -> None:
        await created(kit, "u1", a_record(1))
        await created(kit, "u2", a_record(2))
        got = await kit.store.get_many(kit.project, ["u2", "missing", "u1", "u2"])
        assert [None if r is None else r.record for r in got] == [
            a_record(2),
            None,
            a_record(1),
            a_record(2),
        ]

    async def test_no_ids_give_no_records(self, kit: Kit) -> None:
        assert await kit.store.get_many(kit.project, []) == []

    async def test_projects_do_not_see_each_others_users(self, kit: Kit) -> None:
        other = unique("proj")
        await created(kit, "u1", a_record(1))
        assert await kit.store.get(other, "u1") is None
        await kit.store.put(other, "u1", a_record(2), TTL, expected_generation=None)
        mine = await kit.store.get(kit.project, "u1")
        theirs = await kit.store.get(other, "u1")
        assert mine is not None
        assert mine.record == a_record(1)
        assert theirs is not None
        assert theirs.record == a_record(2)


class _PutOnly(DelegatingStore):
    """The store with the interface's defaults for `put_many` (one `put` per record)
    and `get_many_mapped` (`get_many`, then the conversion)."""


@pytest.fixture(params=["own", "default"])
def many(request: pytest.FixtureRequest, kit: Kit) -> OnlineStore:
    """The store's own batch methods (put_many, get_many_mapped), or the interface's
    defaults over its put and get_many."""
    return kit.store if request.param == "own" else _PutOnly(kit.store)


class TestPutMany:
    async def test_every_record_is_written_and_reported_as_none(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        old = await created(kit, "u1", a_record(1))
        writes = [
            RecordWrite("u1", a_record(2), old.generation),
            RecordWrite("u2", a_record(3), None),
        ]

        assert await many.put_many(kit.project, writes, TTL) == [None, None]

        got = await kit.store.get_many(kit.project, ["u1", "u2"])
        assert [r.record if r else None for r in got] == [a_record(2), a_record(3)]
        assert got[0] is not None
        assert got[0].generation != old.generation

    async def test_each_refused_write_gets_its_conflict_and_the_others_are_written(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        stale = await created(kit, "stale", a_record(1))
        await kit.store.put(kit.project, "stale", a_record(2), TTL, stale.generation)
        await created(kit, "exists", a_record(3))
        writes = [
            RecordWrite("stale", a_record(10), stale.generation),
            RecordWrite("exists", a_record(11), None),
            RecordWrite("new", a_record(12), None),
            RecordWrite("ghost", a_record(13), 1),
        ]

        results = await many.put_many(kit.project, writes, TTL)

        assert [type(r) for r in results] == [
            WriteConflict,
            WriteConflict,
            type(None),
            WriteConflict,
        ]
        got = await kit.store.get_many(kit.project, ["stale", "exists", "new", "ghost"])
        assert [r.record if r else None for r in got] == [
            a_record(2),
            a_record(3),
            a_record(12),
            None,
        ]

    async def test_concurrent_calls_from_one_generation_have_one_winner_per_user(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        base = [await created(kit, f"u{i}", a_record(0)) for i in range(3)]

        async def attempt(seed: int) -> list[bool]:
            writes = [
                RecordWrite(f"u{i}", a_record(seed), b.generation) for i, b in enumerate(base)
            ]
            return [r is None for r in await many.put_many(kit.project, writes, TTL)]

        outcomes = await asyncio.gather(*(attempt(seed) for seed in range(1, 6)))
        for i in range(3):
            won = [seed for seed, wins in enumerate(outcomes, start=1) if wins[i]]
            assert len(won) == 1
            current = await kit.store.get(kit.project, f"u{i}")
            assert current is not None
            assert current.record == a_record(won[0])

    async def test_every_record_gets_the_ttl(self, kit: Kit, many: OnlineStore) -> None:
        writes = [RecordWrite(f"u{i}", a_record(i), None) for i in range(3)]
        await many.put_many(kit.project, writes, TTL)
        for i in range(3):
            assert 0 < await kit.remaining_ttl_s(f"u{i}") <= TTL

    async def test_no_writes_give_no_results(self, kit: Kit, many: OnlineStore) -> None:
        assert await many.put_many(kit.project, [], TTL) == []

    async def test_a_non_positive_ttl_is_refused(self, kit: Kit, many: OnlineStore) -> None:
        with pytest.raises(ValueError, match="ttl"):
            await many.put_many(kit.project, [RecordWrite("u1", a_record(), None)], 0)
        assert await kit.store.get(kit.project, "u1") is None


class TestGetManyMapped:
    async def test_each_record_is_converted_in_request_order_with_gaps(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        await created(kit, "u1", a_record(1))
        await created(kit, "u2", a_record(2))

        got = await many.get_many_mapped(
            kit.project, ["u2", "missing", "u1", "u2"], lambda record: record["offsets"]
        )

        assert got == [{"3": 102}, None, {"3": 101}, {"3": 102}]

    async def test_no_ids_give_no_values(self, kit: Kit, many: OnlineStore) -> None:
        assert await many.get_many_mapped(kit.project, [], lambda record: record) == []

    async def test_an_error_of_the_conversion_propagates(self, kit: Kit, many: OnlineStore) -> None:
        await created(kit, "u1", a_record(1))

        def fail(record: dict[str, Any]) -> None:
            raise LookupError("conversion failed")

        with pytest.raises(LookupError, match="conversion failed"):
            await many.get_many_mapped(kit.project, ["u1"], fail)


class TestEventIdsApart:
    """The remembered event ids are written with the tiles but read only by compute."""

    async def test_serving_reads_get_the_tiles_without_the_event_ids(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        specs, record = compute_record()
        assert record["ids"]
        await created(kit, "u1", record)
        without = {k: v for k, v in record.items() if k != "ids"}

        one = await kit.store.get(kit.project, "u1", with_ids=False)
        mapped = await many.get_many_mapped(kit.project, ["u1"], lambda r: r)

        assert one is not None
        assert one.record == without
        assert mapped == [without]
        assert serve(one.record, specs, NOW) == serve(record, specs, NOW)

    async def test_compute_reads_get_the_event_ids_written_in_the_same_write(
        self, kit: Kit
    ) -> None:
        _, record = compute_record()
        first = await created(kit, "u1", record)
        assert first.record["ids"] == record["ids"]
        changed = {**record, "ids": {"1": "AAAAAAAAAAE="}, "updated_ms": 1}
        await kit.store.put(kit.project, "u1", changed, TTL, first.generation)

        (again,) = await kit.store.get_many(kit.project, ["u1"])

        assert again is not None
        assert again.record == changed

    async def test_a_record_whose_ids_are_gone_forgets_the_stored_ones(self, kit: Kit) -> None:
        _, record = compute_record()
        first = await created(kit, "u1", record)
        without = {k: v for k, v in record.items() if k != "ids"}
        await kit.store.put(kit.project, "u1", without, TTL, first.generation)
        stored = await kit.store.get(kit.project, "u1")
        assert stored is not None
        assert stored.record == without


class TestRecordsStoredBeforeTheUpgrade:
    """Records written as one JSON value (ids inside) by the version before still read
    through every call, and the next compare-and-set stores them in the current form."""

    async def test_a_json_record_reads_through_every_call_and_updates(
        self, kit: Kit, many: OnlineStore
    ) -> None:
        specs, record = compute_record()
        await store_as_json(kit, "old", record)

        stored = await kit.store.get(kit.project, "old")
        served = await kit.store.get(kit.project, "old", with_ids=False)
        (listed,) = await kit.store.get_many(kit.project, ["old"])
        (mapped,) = await many.get_many_mapped(kit.project, ["old"], lambda r: serve(r, specs, NOW))

        assert stored is not None
        assert served is not None
        assert listed is not None
        assert stored.record == record == listed.record
        assert serve(served.record, specs, NOW) == serve(record, specs, NOW) == mapped
        later = {**record, "updated_ms": NOW + 1}
        await kit.store.put(kit.project, "old", later, TTL, stored.generation)
        again = await kit.store.get(kit.project, "old")
        assert again is not None
        assert again.record == later


class TestSQLiteFileOfTheVersionBefore:
    async def test_a_file_without_the_ids_column_gains_it_and_its_records_read(
        self, backend_settings: BackendSettings
    ) -> None:
        settings = backend_settings.model_copy(update={"online_store": "sqlite"})
        path = store_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        _, record = compute_record()
        with sqlite3.connect(path) as conn:
            conn.execute(
                "CREATE TABLE online_records (project_id TEXT NOT NULL, user_id TEXT NOT NULL,"
                " record TEXT NOT NULL, generation INTEGER NOT NULL,"
                " expires_at_ms INTEGER NOT NULL, PRIMARY KEY (project_id, user_id))"
                " WITHOUT ROWID"
            )
            conn.execute(
                "INSERT INTO online_records VALUES ('p', 'u1', ?, 3, ?)",
                (json.dumps(record), int(time.time() * 1000) + TTL * 1000),
            )
        store = make_online_store(settings)
        await store.initialize()
        try:
            stored = await store.get("p", "u1")
            assert stored is not None
            assert stored.record == record
            assert stored.generation == 3
            await store.put("p", "u1", record, TTL, 3)
            again = await store.get("p", "u1")
            assert again is not None
            assert again.record == record
        finally:
            await store.close()


async def store_as_json(kit: Kit, user_id: str, record: dict[str, Any]) -> None:
    """Writes `record` as the version before the codec did: one compact JSON value."""
    raw = json.dumps(record, separators=(",", ":")).encode()
    if kit.kind == "redis":
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            key = record_key(kit.project, user_id)
            await client.hset(key, mapping={"rec": raw, "gen": 1})
            await client.expire(key, TTL)
        finally:
            await client.aclose()
    elif kit.kind == "sqlite":
        with sqlite3.connect(store_path(kit.settings)) as conn:
            conn.execute(
                "INSERT INTO online_records (project_id, user_id, record, generation,"
                " expires_at_ms) VALUES (?, ?, ?, 1, ?)",
                (kit.project, user_id, raw.decode(), int(time.time() * 1000) + TTL * 1000),
            )
    else:

        def put() -> None:
            client = aerospike.client({"hosts": parse_hosts(AEROSPIKE_HOSTS or "")})
            try:
                key = (
                    kit.settings.aerospike_namespace,
                    RECORD_SET,
                    aerospike_key(kit.project, user_id),
                )
                client.put(key, {"record": bytearray(raw)}, policy={"ttl": TTL})
            finally:
                client.close()

        await asyncio.to_thread(put)


class TestKeys:
    @pytest.mark.redis
    def test_redis_keys_cannot_collide_through_separators(self) -> None:
        assert record_key("a:b", "c") != record_key("a", "b:c")
        assert record_key("p1", "u1") == "dps:f:p1:u1"

    def test_aerospike_hosts_parse_with_a_default_port(self) -> None:
        assert parse_hosts("a:3100, b") == [("a", 3100), ("b", 3000)]


class TestAerospikeCallsAgainstTheInstalledClient:
    """Runs without a server: a client with no cluster validates every argument before
    it looks for a node, so a ParamError (misspelt policy key) or a ClientError (e.g.
    the `meta["ttl"]` that client 19.1 deprecated) fails these tests; "no node for the
    namespace" means the call was well formed."""

    @pytest.fixture
    def offline_client(self, backend_settings: BackendSettings) -> Iterator[Any]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        settings = backend_settings.model_copy(update={"aerospike_hosts": f"127.0.0.1:{port}"})
        config = AerospikeOnlineStore(settings).client_config()
        client = aerospike.client(
            {**config, "fail_if_not_connected": False, "connect_timeout": 200}
        )
        try:
            yield client
        finally:
            client.close()

    @pytest.mark.parametrize("expected_generation", [None, 7], ids=["create", "update"])
    def test_compare_and_set_arguments_are_well_formed(
        self, offline_client: Any, expected_generation: int | None
    ) -> None:
        ops, meta, policy = write_arguments(a_record(), 60, expected_generation)
        key = ("features", "proj", "u1")
        extra = {} if meta is None else {"meta": meta}
        with pytest.raises(aerospike_errors.AerospikeError) as raised:
            offline_client.operate(key, ops, policy=policy, **extra)
        assert not isinstance(raised.value, aerospike_errors.ClientError), raised.value

    @pytest.mark.parametrize("expected_generation", [None, 7], ids=["create", "update"])
    def test_batch_write_arguments_are_well_formed(
        self, offline_client: Any, expected_generation: int | None
    ) -> None:
        # A batch call with no node does not raise: it reports the failure in the
        # batch's own result (the store raises on it), after checking every policy.
        ops, meta, policy = write_arguments(a_record(), 60, expected_generation)
        key = ("features", RECORD_SET, aerospike_key("proj", "u1"))
        done = offline_client.batch_write(BatchRecords([Write(key, ops, meta=meta, policy=policy)]))
        assert done.result != 0


class TestEntityRecords:
    """Per-entity records (`app/tiles/entities.py`) and user x entity state, on every store."""

    HOSTILE = ["$where", "../x", "a:b", "sku/1?x=%2F", "é ü", "42"]

    async def test_entity_records_keep_hostile_ids_apart_from_each_other_and_from_users(
        self, kit: Kit
    ) -> None:
        scope = entity_scope(kit.project, "product")
        for n, entity_id in enumerate(self.HOSTILE):
            await kit.store.put(scope, store_id(entity_id), a_record(n), TTL, None)
        # A user whose id spells the entity's key must not meet it.
        await created(kit, "product:42", a_record(99))
        got = await kit.store.get_many(scope, [store_id(i) for i in self.HOSTILE])
        assert [None if r is None else r.record for r in got] == [
            a_record(n) for n in range(len(self.HOSTILE))
        ]
        user = await kit.store.get(kit.project, "product:42")
        assert user is not None
        assert user.record == a_record(99)
        assert await kit.store.get(kit.project, store_id("42")) is None

    async def test_concurrent_workers_writing_one_hot_entity_lose_no_event(self, kit: Kit) -> None:
        # Two workers, one partition each, write one product at once, batch after batch:
        # compare-and-set makes the loser re-read and re-apply; nothing is lost or twice.
        spec = FeatureSpec("buys", Aggregation.COUNT, None, (parse_window("1h"),))
        entity = EntitySpecs("product", {"order": (spec,)}, {"order": "sku"}, (spec,), TTL)
        specs = ProjectSpecs("p", 1, {}, (), TTL, entities={"product": entity})
        now = int(time.time() * 1000)

        def events(partition: int, start: int) -> list[AppliedEvent]:
            return [
                AppliedEvent(partition, start + i, "order", now - 1000, {"sku": "hot"}, None)
                for i in range(25)
            ]

        writers = [EntityWriter(kit.store, now_ms=lambda: now) for _ in range(2)]
        for round_ in range(4):
            await asyncio.gather(
                *(
                    w.write(kit.project, specs, events(p, round_ * 25))
                    for p, w in enumerate(writers)
                )
            )
        # A redelivery of a whole round changes nothing (offsets per partition).
        await writers[0].write(kit.project, specs, events(0, 50))
        stored = await kit.store.get(entity_scope(kit.project, "product"), store_id("hot"))
        assert stored is not None
        assert serve(stored.record, [spec], now) == {"buys_1h": 200}
        assert stored.record["offsets"] == {"0": 99, "1": 99}

    async def test_a_user_record_with_pairs_round_trips_and_serves_the_same(self, kit: Kit) -> None:
        spend = FeatureSpec("spend", Aggregation.SUM, "price", (parse_window("1d"),), key="cat")
        events = [
            AppliedEvent(0, i, "order", NOW - i * 60_000,
                         {"price": 1.5 * i, "cat": ["shoes", "$where", "a:b"][i % 3]}, f"e{i}")
            for i in range(30)
        ]  # fmt: skip
        record = apply_batch(None, {}, events, NOW).record
        record["pairs"] = PairApplier({"order": (spend,)}, NOW).apply(None, events, NOW).pairs
        stored = await created(kit, "pairs", record)
        assert stored.record == record
        merged = Merger([spend], NOW)(stored.record)
        assert merged == read_pairs(record["pairs"], spend, NOW)
        assert set(merged["spend_1d"]) == {"shoes", "$where", "a:b"}
