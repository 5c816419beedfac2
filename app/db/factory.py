"""Settings → backend implementation. Drivers are imported lazily, so a process only
loads the clients it was configured with (the Aerospike client is not needed to run
standalone, for instance)."""

from __future__ import annotations

import importlib
from typing import Any

from app.core.settings import BackendSettings
from app.db.analytics import AnalyticsSink
from app.db.cache import Cache
from app.db.config_store import ConfigStore
from app.db.event_log import EventLogConsumer, EventLogProducer
from app.db.online_store import OnlineStore

_CONFIG_STORES = {
    "mongodb": "app.db.mongodb:MongoConfigStore",
    "sqlite": "app.db.sqlite_config:SQLiteConfigStore",
}
_PRODUCERS = {
    "kafka": "app.db.kafka:KafkaEventProducer",
    "local": "app.db.local_log:LocalEventProducer",
}
_CONSUMERS = {
    "kafka": "app.db.kafka:KafkaEventConsumer",
    "local": "app.db.local_log:LocalEventConsumer",
}
_ONLINE_STORES = {
    "aerospike": "app.db.aerospike:AerospikeOnlineStore",
    "redis": "app.db.redis_online:RedisOnlineStore",
    "sqlite": "app.db.sqlite_online:SQLiteOnlineStore",
}
_CACHES = {
    "redis": "app.db.redis_cache:RedisCache",
    "memory": "app.db.memory_cache:MemoryCache",
}
_ANALYTICS = {
    "clickhouse": "app.db.clickhouse:ClickHouseSink",
    "chdb": "app.db.clickhouse:ChdbSink",
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def make_config_store(settings: BackendSettings) -> ConfigStore:
    store: ConfigStore = _load(_CONFIG_STORES[settings.config_store])(settings)
    return store


def make_producer(settings: BackendSettings) -> EventLogProducer:
    producer: EventLogProducer = _load(_PRODUCERS[settings.event_log])(settings)
    return producer


def make_dead_letter_producer(settings: BackendSettings) -> EventLogProducer:
    """Returns a producer to the dead-letter log: Kafka's `kafka_dead_letter_topic`, or
    a local log of its own under `data_dir/dead-letter`."""
    where = settings.model_copy(
        update={
            "kafka_topic": settings.kafka_dead_letter_topic,
            "data_dir": settings.data_dir / "dead-letter",
        }
    )
    return make_producer(where)


def make_consumer(settings: BackendSettings, group_id: str | None = None) -> EventLogConsumer:
    group = group_id or settings.kafka_consumer_group
    consumer: EventLogConsumer = _load(_CONSUMERS[settings.event_log])(settings, group)
    return consumer


def make_online_store(settings: BackendSettings) -> OnlineStore:
    store: OnlineStore = _load(_ONLINE_STORES[settings.online_store])(settings)
    return store


def make_cache(settings: BackendSettings) -> Cache:
    cache: Cache = _load(_CACHES[settings.cache])(settings)
    return cache


def make_analytics(settings: BackendSettings) -> AnalyticsSink | None:
    if settings.analytics == "none":
        return None
    sink: AnalyticsSink = _load(_ANALYTICS[settings.analytics])(settings)
    return sink
