"""Hypothesis-generated hostile payloads, sent signed through the real app: only those
that really fit the schema reach Kafka (checked by reading the topic back)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from app.schemas.event import USER_ID_PATTERN, EventMessage
from tests.conftest import unique
from tests.runtime.ingestion.conftest import IngestApp, deploy_pipeline
from tests.runtime.ingestion.helpers import TYPED_FIELDS
from tests.runtime.ingestion.test_validator import PIPELINE, any_envelope, fits

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.mongodb]

_USER_ID = re.compile(USER_ID_PATTERN)


def generated_payloads(count: int) -> list[Any]:
    """Draws `count` payloads from the hostile strategy (boundary cases included)."""
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(any_envelope)
    def collect(payload: Any) -> None:
        drawn.append(payload)

    collect()
    return drawn


def _strict_json(payload: Any) -> bool:
    try:
        json.dumps(payload, allow_nan=False)
    except ValueError:
        return False
    return True


def message_fits(message: EventMessage) -> bool:
    if message.event not in ("add_to_cart", "page_view") or not _USER_ID.fullmatch(message.user_id):
        return False
    return "sku" in message.properties and set(message.properties) <= set(TYPED_FIELDS)


async def test_hostile_payloads_reach_kafka_only_when_they_fit(ingest: IngestApp) -> None:
    pipe = await deploy_pipeline(ingest, unique("hostile"))
    payloads = generated_payloads(150)
    produced = 0
    accepted_payloads: list[Any] = []
    for payload in payloads:
        response = await pipe.post(payload)
        assert response.status_code in (200, 202, 422), response.text
        if response.status_code in (200, 202):
            assert fits(payload, PIPELINE), payload
            accepted_payloads.append(payload)
            produced += response.json()["accepted"]
    # One NaN anywhere makes a whole batch body malformed, so the batch carries the
    # payloads that strict JSON can express.
    items = [p for p in payloads if _strict_json(p)]
    batch = await pipe.post({"events": items}, batch=True)
    assert batch.status_code == 202, batch.text
    body = batch.json()
    assert body["accepted"] + body["duplicates"] + len(body["rejected"]) == len(items)
    rejected = {r["index"] for r in body["rejected"]}
    for index, payload in enumerate(items):
        assert index in rejected or fits(payload, PIPELINE), payload
    produced += body["accepted"]

    messages = await pipe.messages()
    assert len(messages) == produced
    assert all(message_fits(m) for m in messages)
    # Both sides happened: the strategy produced payloads that fit and ones that did not.
    assert accepted_payloads
    assert len(accepted_payloads) < len(payloads)
