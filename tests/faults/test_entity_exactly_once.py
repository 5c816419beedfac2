"""Per-entity features (a hot product) and user x category features written by two
compute processes in one group on a topic of 12 partitions: a product's events come
from users on every partition, one compute is killed with SIGKILL mid-stream and comes
back, and second copies of event ids are put in the log (as an ingestion killed between
the Kafka ack and its claim confirm leaves them). The case ends with every product's
and every user's served features equal to the oracle over the acknowledged events, one
per event id.

On the package's platform (conftest.py), with a project of its own.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import unique
from tests.faults.conftest import until
from tests.faults.platform import START_BOUND_S, ProcessPlatform, Tenant
from tests.faults.test_process_crashes import committing
from tests.runtime.ingestion.helpers import read_topic
from tests.support.apps import bearer

pytestmark = [
    pytest.mark.faults,
    pytest.mark.slow,
    pytest.mark.kafka,
    pytest.mark.redis,
    pytest.mark.mongodb,
]

CONVERGE_BOUND_S = 150.0
ORDER = {
    "name": "order",
    "fields": [
        {"name": "product_id", "type": "string", "required": True, "entity": "product"},
        {"name": "category", "type": "string", "required": True, "entity": "category"},
        {"name": "price", "type": "number", "required": True},
    ],
}
FEATURES: list[dict[str, Any]] = [
    {"name": "orders", "aggregation": "COUNT"},
    {"name": "product_buys", "aggregation": "COUNT", "entity": "product"},
    {"name": "product_revenue", "aggregation": "SUM", "field": "price", "entity": "product"},
    {"name": "category_spend", "aggregation": "SUM", "field": "price",
     "entity": ["user", "category"]},
]  # fmt: skip
CATEGORIES = ["shoes", "hats", "bags/$where"]


@dataclass(frozen=True)
class Order:
    event_id: str
    user_id: str
    t_ms: int
    product_id: str
    category: str
    price: float

    def envelope(self) -> dict[str, Any]:
        return {
            "event": "order",
            "user_id": self.user_id,
            "timestamp": self.t_ms,
            "event_id": self.event_id,
            "properties": {
                "product_id": self.product_id,
                "category": self.category,
                "price": self.price,
            },
        }


def make_orders(count: int, users: int, now_ms: int) -> list[Order]:
    """Half of them for one hot product, bought by every user; prices in quarters."""
    rng = random.Random("entities")
    return [
        Order(
            event_id=f"evt-entity-{i}",
            user_id=f"user-{rng.randrange(users)}",
            t_ms=now_ms - 1_000 - (i * 97) % 120_000,
            product_id="hot" if rng.random() < 0.5 else f"sku-{rng.randrange(8)}",
            category=rng.choice(CATEGORIES),
            price=rng.randrange(1, 400) / 4,
        )
        for i in range(count)
    ]


def product_oracle(orders: list[Order]) -> dict[str, dict[str, Any]]:
    prices: dict[str, list[float]] = defaultdict(list)
    for o in orders:
        prices[o.product_id].append(o.price)
    return {
        p: {"product_buys_24h": len(v), "product_revenue_24h": math.fsum(v)}
        for p, v in prices.items()
    }


def user_oracle(orders: list[Order]) -> dict[str, dict[str, Any]]:
    spend: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for o in orders:
        spend[o.user_id][o.category].append(o.price)
    return {
        u: {
            "orders_24h": sum(len(v) for v in by_cat.values()),
            "category_spend_24h": {c: math.fsum(v) for c, v in by_cat.items()},
        }
        for u, by_cat in spend.items()
    }


async def entity_tenant(platform: ProcessPlatform) -> Tenant:
    """A project with the `order` event and FEATURES, configured and deployed."""
    project_id = unique("shop")
    headers = bearer(platform.auth, "faults", [project_id])
    base = f"{platform.api.url}/api/v1/projects/{project_id}"
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as api:
        created = await api.post(
            f"{base}/pipelines",
            json={"name": "storefront", "category": "transaction", "events": [ORDER]},
        )
        assert created.status_code == 201, created.text
        pipeline_id = created.json()["id"]
        assert (await api.post(f"{base}/pipelines/{pipeline_id}/activate")).status_code == 200
        for feature in FEATURES:
            body = {"pipeline_id": pipeline_id, "source_event": "order", "time_windows": ["24h"]}
            made = await api.post(f"{base}/features", json={**body, **feature})
            assert made.status_code == 201, made.text
        deployed = await api.post(f"{base}/deployments")
        assert deployed.status_code == 201, deployed.text
        secret = (await api.get(f"{base}/pipelines/{pipeline_id}/webhook")).json()["secret"]
    return Tenant(project_id, pipeline_id, secret, headers)


async def produce_copies(platform: ProcessPlatform, project_id: str, count: int) -> int:
    """Produces second copies of `count` of the project's messages (same key, same
    value) at new offsets; returns how many it produced."""
    bootstrap = platform.env["KAFKA_BOOTSTRAP"]
    raw = await read_topic(bootstrap, platform.topic)
    mine = [m for m in raw if m.project_id == project_id and m.event_id.startswith("evt-entity")]
    chosen = random.Random("copies").sample(mine, min(count, len(mine)))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for message in chosen:
            key = f"{message.project_id}:{message.user_id}".encode()
            await producer.send_and_wait(platform.topic, message.encode(), key=key)
    finally:
        await producer.stop()
    return len(chosen)


async def served(
    platform: ProcessPlatform, tenant: Tenant, entity: str, key: str, ids: list[str]
) -> list[dict[str, Any]]:
    path = "users" if entity == "users" else entity
    response = await platform.http.post(
        f"{platform.serving.url}/features/{tenant.project_id}/{path}/batch",
        json={key: ids},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    items = response.json()["users" if entity == "users" else "entities"]
    return [item["features"] for item in items]


# Two computes started, one killed and started again, two converges: more than the
# suite's 300 s on a loaded machine (282 s measured alone at load 16).
@pytest.mark.timeout(600)
async def test_a_hot_product_from_every_partition_with_copies_and_a_killed_compute_is_exact(
    platform: ProcessPlatform,
) -> None:
    tenant = await entity_tenant(platform)
    probe = Order(f"evt-probe-{tenant.project_id}", "probe", int(time.time() * 1000), "p", "x", 1)
    async with asyncio.timeout(90):
        await platform.sender(tenant).probe(probe)  # type: ignore[arg-type]
    second = platform.add_compute()
    sender = platform.sender(tenant)
    sending: asyncio.Task[None] | None = None
    try:
        second.start()
        await second.wait_healthy(platform.http, START_BOUND_S)
        orders = make_orders(2000, users=30, now_ms=int(time.time() * 1000))
        sending = asyncio.create_task(
            sender.send_all(orders, concurrency=2, batch_size=5, pause_s=0.02)  # type: ignore[arg-type]
        )
        first = platform.computes[0]
        for member in (first, second):
            await until(committing(platform, member, 2), f"{member.name} committing")
        second.kill()  # SIGKILL, mid-stream: its last batch was written, perhaps not committed
        killed_at = len(sender.acknowledged)
        await until(lambda: len(sender.acknowledged) >= killed_at + 150, "stream after the kill")
        second.start()  # back in the group: two writers again for the copies and the rest
        await second.wait_healthy(platform.http, START_BOUND_S)
        copies = await produce_copies(platform, tenant.project_id, 100)
        await until(lambda: len(sender.acknowledged) >= killed_at + 300, "stream after the copies")
        sender.stop()
        await sending
        accepted = [o for o in orders if o.event_id in sender.acknowledged]
        products = product_oracle(accepted)
        users = user_oracle(accepted)
        product_ids, user_ids = sorted(products), sorted(users)
        want_products = [products[p] for p in product_ids]
        want_users = [users[u] for u in user_ids]
        got_products: list[dict[str, Any]] = []
        got_users: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(CONVERGE_BOUND_S):
                while True:
                    got_products = await served(platform, tenant, "product", "ids", product_ids)
                    got_users = await served(platform, tenant, "users", "user_ids", user_ids)
                    if got_products == want_products and got_users == want_users:
                        break
                    await asyncio.sleep(0.5)
        except TimeoutError:
            pass
        hot = got_products[product_ids.index("hot")] if got_products else {}
        print(
            f"\n[faults] entities: {len(accepted)} events acknowledged, {copies} copies in "
            f"the log, hot product expected {products['hot']['product_buys_24h']}, "
            f"counted {hot.get('product_buys_24h')}"
        )
        assert got_products == want_products, platform.log_tails()
        assert got_users == want_users, platform.log_tails()
    finally:
        # Whatever failed, the next case finds one compute and no stream of this one.
        if sending is not None and not sending.done():
            sender.stop()
            sending.cancel()
        second.terminate()
        platform.computes.remove(second)
