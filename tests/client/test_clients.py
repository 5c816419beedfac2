"""dps_client against the real standalone platform: events signed and sent (one, a batch,
retries with the same event id), features read (one, many, async), and the retry policy
on real refusals (429 with Retry-After from a tiny rate limit, a port nobody listens on)."""

from __future__ import annotations

import uuid

import pytest

from dps_client import (
    ApiError,
    AsyncEventsClient,
    AsyncFeaturesClient,
    ConnectionFailed,
    Event,
    EventsClient,
    FeaturesClient,
    RetryPolicy,
)
from tests.client.helpers import Deployed, deploy_behavioral, eventually
from tests.support.own_redis import free_port
from tests.support.standalone import RunningStandalone, standalone_process

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)


def cart(user: str, quantity: int = 1, timestamp: int | None = None) -> Event:
    return Event("add_to_cart", user, {"product_id": "sku-1", "quantity": quantity}, timestamp)


@pytest.fixture
def shop(platform: RunningStandalone, project: str) -> Deployed:
    return deploy_behavioral(platform, project)


@pytest.fixture
def features(platform: RunningStandalone, shop: Deployed):
    with FeaturesClient(platform.base_url, platform.token, shop.project) as client:
        yield client


class TestSendingEvents:
    def test_an_event_without_id_gets_one_and_its_resend_is_a_duplicate(self, shop: Deployed):
        event = cart("u-1")
        with EventsClient(shop.ingest_url, shop.secret) as events:
            first = events.send(event)
            again = events.send(event)
        assert uuid.UUID(first.event_id)
        assert (first.duplicate, again.duplicate) == (False, True)
        assert again.event_id == first.event_id

    def test_send_by_parts_keeps_the_given_event_id(self, shop: Deployed):
        with EventsClient(shop.ingest_url, shop.secret) as events:
            sent = events.send("page_view", "u-2", {"page_type": "home"}, event_id="ev-42")
        assert (sent.event_id, sent.duplicate, sent.late) == ("ev-42", False, False)

    def test_a_refused_event_raises_the_platforms_envelope(self, shop: Deployed):
        with EventsClient(shop.ingest_url, shop.secret) as events, pytest.raises(ApiError) as err:
            events.send("add_to_cart", "u-3", {"quantity": 1})
        assert (err.value.status_code, err.value.error) == (422, "InvalidEvent")
        assert err.value.fields[0]["loc"] == ["properties", "product_id"]

    def test_a_wrong_secret_is_refused_without_retrying(self, shop: Deployed):
        with (
            EventsClient(shop.ingest_url, "whsec_" + "A" * 44) as events,
            pytest.raises(ApiError) as err,
        ):
            events.send(cart("u-4"))
        assert err.value.error == "InvalidSignature"

    def test_batch_is_split_and_reports_rejected_items_by_the_callers_index(self, shop: Deployed):
        batch = [cart(f"u-b{i}") for i in range(5)]
        batch[3] = Event("add_to_cart", "u-b3", {"quantity": 1})  # no product_id
        batch.append(cart("u-b9", timestamp=0))  # 1970: accepted, counted late
        with EventsClient(shop.ingest_url, shop.secret, max_batch_events=2) as events:
            result = events.send_batch(batch)
            again = events.send_batch(batch)
        assert (result.accepted, result.duplicates, result.late) == (5, 0, 1)
        assert [(r.index, r.error, r.event_id) for r in result.rejected] == [
            (3, "InvalidEvent", batch[3].event_id)
        ]
        assert (again.accepted, again.duplicates) == (0, 5)

    async def test_async_sender_sends_one_and_a_batch(self, shop: Deployed):
        async with AsyncEventsClient(shop.ingest_url, shop.secret) as events:
            one = await events.send(cart("u-a1"))
            many = await events.send_batch([cart("u-a2"), cart("u-a3")])
        assert not one.duplicate
        assert (many.accepted, many.rejected) == (2, [])


class TestReadingFeatures:
    def test_a_users_features_count_what_was_sent(self, shop: Deployed, features):
        with EventsClient(shop.ingest_url, shop.secret) as events:
            events.send_batch([cart("reader-1"), cart("reader-1")])
        vector = eventually(
            lambda: features.get("reader-1", features=["cart_adds_5m"]),
            lambda v: v.features["cart_adds_5m"] == 2,
        )
        assert vector.entity_id == "reader-1"
        assert vector.features == {"cart_adds_5m": 2}
        assert vector.version == 1
        # Freshness: compute has written this user, after the events it counted.
        assert vector.last_event_at is not None
        assert vector.updated_at is not None
        assert vector.last_event_at <= vector.updated_at <= str(vector.as_of)

    def test_get_many_keeps_order_and_duplicates_across_chunks(
        self, platform: RunningStandalone, shop: Deployed
    ):
        with EventsClient(shop.ingest_url, shop.secret) as events:
            events.send(cart("many-1"))
        ids = ["many-1", "nobody", "many-1", "nobody-2", "nobody-3"]
        with FeaturesClient(platform.base_url, platform.token, shop.project, batch_size=2) as f:
            vectors = eventually(
                lambda: f.get_many(ids, features=["cart_adds_1h"]),
                lambda vs: vs[0].features["cart_adds_1h"] == 1,
            )
        assert [v.entity_id for v in vectors] == ids
        assert [v.features["cart_adds_1h"] for v in vectors] == [1, 0, 1, 0, 0]
        assert [v.updated_at is None for v in vectors] == [False, True, False, True, True]

    async def test_async_reader_gets_one_and_many(self, platform: RunningStandalone, shop):
        async with AsyncFeaturesClient(
            platform.base_url, platform.token, shop.project, batch_size=1
        ) as f:
            one = await f.get("nobody", features=["page_views_1h"])
            many = await f.get_many(["a", "b", "c"], features=["page_views_1h"])
        assert one.features == {"page_views_1h": 0}
        assert [v.entity_id for v in many] == ["a", "b", "c"]

    def test_an_unknown_feature_key_is_raised_not_retried(self, features):
        with pytest.raises(ApiError) as err:
            features.get("u", features=["no_such_feature_1h"])
        assert (err.value.status_code, err.value.error) == (422, "UnknownFeature")


class TestReadingEntities:
    """Per-product features (the behavioral template's `product_cart_adds`), read by
    `entity="product"`: the client's paths and body key (`ids`) are the server's."""

    KEY = "product_cart_adds_1h"

    def test_a_products_features_are_read_one_and_many(self, shop: Deployed, features):
        with EventsClient(shop.ingest_url, shop.secret) as events:
            events.send_batch([cart("buyer-1"), cart("buyer-2"), cart("buyer-2")])
        vector = eventually(
            lambda: features.get("sku-1", entity="product", features=[self.KEY]),
            lambda v: v.features[self.KEY] == 3,
        )
        assert (vector.entity_id, vector.features, vector.version) == ("sku-1", {self.KEY: 3}, 1)
        assert vector.raw["entity"] == "product"
        assert vector.updated_at is not None
        ids = ["sku-1", "$where/../x", "sku-1"]
        many = features.get_many(ids, entity="product", features=[self.KEY])
        assert [(v.entity_id, v.features[self.KEY]) for v in many] == [
            ("sku-1", 3),
            ("$where/../x", 0),
            ("sku-1", 3),
        ]

    async def test_async_reader_gets_entities_one_and_many(self, platform: RunningStandalone, shop):
        async with AsyncFeaturesClient(
            platform.base_url, platform.token, shop.project, batch_size=1
        ) as f:
            one = await f.get("nothing-sold", entity="product")
            many = await f.get_many(["a", "b"], entity="product", features=[self.KEY])
        assert one.features == {"product_cart_adds_1h": 0, "product_cart_adds_24h": 0}
        assert [(v.entity_id, v.features) for v in many] == [
            ("a", {self.KEY: 0}),
            ("b", {self.KEY: 0}),
        ]

    def test_an_entity_without_features_is_raised_as_a_404_not_retried(self, features):
        with pytest.raises(ApiError) as err:
            features.get("sku-1", entity="brand")
        assert (err.value.status_code, err.value.error) == (404, "EntityNotFound")


class TestRetries:
    def test_nothing_listening_is_connection_failed_after_the_attempts(self):
        dead = f"http://127.0.0.1:{free_port()}"
        with FeaturesClient(dead, "t", "shop", retry=FAST) as f, pytest.raises(ConnectionFailed):
            f.get("u")

    def test_rate_limited_events_are_retried_after_retry_after_until_accepted(
        self, limited_platform: RunningStandalone
    ):
        shop = deploy_behavioral(limited_platform, LIMITED_PROJECT)
        patient = RetryPolicy(attempts=10, base_delay=0.05, max_delay=2.0)
        with EventsClient(shop.ingest_url, shop.secret, retry=patient) as events:
            results = [events.send(cart(f"r-{i}")) for i in range(4)]
        assert [r.duplicate for r in results] == [False] * 4

    def test_rate_limited_without_retries_raises_429_with_retry_after(
        self, limited_platform: RunningStandalone
    ):
        shop = deploy_behavioral(limited_platform, LIMITED_PROJECT_2)
        with EventsClient(shop.ingest_url, shop.secret, retry=RetryPolicy(attempts=1)) as events:
            events.send(cart("s-1"))
            events.send(cart("s-2"))
            with pytest.raises(ApiError) as err:
                events.send(cart("s-3"))
        assert (err.value.status_code, err.value.error) == (429, "RateLimited")
        assert err.value.retry_after is not None


LIMITED_PROJECT = "limited_a"
LIMITED_PROJECT_2 = "limited_b"


@pytest.fixture(scope="module")
def limited_platform(tmp_path_factory: pytest.TempPathFactory):
    """A second platform whose two `limited_` projects may ingest 2 events a second."""
    overrides = f'{{"{LIMITED_PROJECT}": "2/second", "{LIMITED_PROJECT_2}": "2/minute"}}'
    with standalone_process(
        tmp_path_factory.mktemp("limited"),
        ANALYTICS="none",
        INGEST_RATE_LIMIT_OVERRIDES=overrides,
    ) as running:
        yield running
