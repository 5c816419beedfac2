"""The client's pure parts: its signatures verify with the platform's own verifier, the
retry waits honour Retry-After within the cap, and batches split within both limits."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.core.errors import InvalidSignature
from app.schemas.deployment import BackfillProgress, DeploymentRead
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import generate_secret
from dps_client import Event, RetryPolicy, signed_headers
from dps_client.cli import deployment_lines
from dps_client.events import _chunks
from runtime.ingestion.signature import verify_signature


class TestSigning:
    @given(body=st.binary(max_size=2000).map(lambda b: b.hex().encode()))
    def test_the_platform_verifies_what_the_client_signs(self, body: bytes):
        secret = generate_secret()
        headers = signed_headers(secret, body)
        webhook_id = verify_signature(
            body, headers, WebhookSecrets(current=secret), tolerance_s=300
        )
        assert webhook_id == headers["webhook-id"]

    def test_every_delivery_gets_a_new_webhook_id(self):
        secret = generate_secret()
        assert (
            signed_headers(secret, b"{}")["webhook-id"]
            != signed_headers(secret, b"{}")["webhook-id"]
        )

    def test_a_changed_body_no_longer_verifies(self):
        secret = generate_secret()
        headers = signed_headers(secret, b'{"a":1}')
        with pytest.raises(InvalidSignature):
            verify_signature(b'{"a":2}', headers, WebhookSecrets(current=secret), tolerance_s=300)


class TestRetryDelay:
    def test_retry_after_is_honoured_up_to_the_cap(self):
        policy = RetryPolicy(max_delay=5.0)
        assert policy.delay(0, 2.0) == 2.0
        assert policy.delay(0, 60.0) == 5.0

    @given(attempt=st.integers(min_value=0, max_value=30))
    def test_backoff_without_retry_after_stays_within_its_exponential_bound(self, attempt: int):
        policy = RetryPolicy(base_delay=0.1, max_delay=10.0)
        assert 0 <= policy.delay(attempt, None) <= min(10.0, 0.1 * 2**attempt)


class TestBatchSplitting:
    @given(
        sizes=st.lists(st.integers(min_value=0, max_value=300), max_size=60),
        max_events=st.integers(min_value=1, max_value=10),
    )
    def test_chunks_keep_order_and_both_limits(self, sizes: list[int], max_events: int):
        events = [Event("e", "u", {"p": "x" * n}) for n in sizes]
        chunks = _chunks(events, max_events, max_bytes=1000)
        assert [i for chunk in chunks for i in chunk] == list(range(len(events)))
        for chunk in chunks:
            assert len(chunk) <= max_events
            if len(chunk) > 1:
                assert (
                    sum(
                        len(json.dumps(events[i].envelope(), separators=(",", ":"))) + 1
                        for i in chunk
                    )
                    <= 1000
                )


class TestDeploymentLines:
    def test_a_backfilling_deployment_shows_its_progress_and_a_failed_one_its_reason(self):
        read = DeploymentRead(
            id="a" * 24,
            project_id="shop",
            version=7,
            status="backfilling",
            changes=[],
            deployed_by="alice",
            deployed_at=None,
            created_at="2026-12-02T06:00:00Z",
            backfill=BackfillProgress(
                features=["carts_30d", "spend"], phase="filling", users_done=40, users_total=90
            ),
        )
        lines = deployment_lines(read.model_dump(mode="json"))
        assert lines[0].startswith("v7    backfilling  2026-12-02T06:00:00  alice")
        assert lines[1] == "      backfilling carts_30d, spend: filling, 40/90 users"
        failed = read.model_copy(update={"status": "failed", "error": "backfill failed: x"})
        assert deployment_lines(failed.model_dump(mode="json"))[1] == "      backfill failed: x"
        live = read.model_copy(update={"status": "success"})
        assert len(deployment_lines(live.model_dump(mode="json"))) == 1
