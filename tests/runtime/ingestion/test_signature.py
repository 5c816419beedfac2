"""Standard Webhooks verification: precise 401 details, rotation, tolerance (pure), and
the same verdicts as the `standardwebhooks` package on generated requests (the oracle)."""

from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.core.errors import InvalidSignature
from app.schemas.pipeline import WebhookSecrets
from app.services.webhook_secrets import generate_secret
from app.services.webhook_secrets import sign as config_api_sign
from runtime.ingestion.signature import check_headers, sign, verify_signature
from tests.runtime.ingestion.helpers import new_secrets

BODY = b'{"event":"add_to_cart","user_id":"u","properties":{}}'


def headers_for(secret: str, *, body: bytes = BODY, ts: int | None = None) -> dict[str, str]:
    return sign(secret, "msg_1", int(time.time()) if ts is None else ts, body)


def verify(headers: dict[str, str], secrets: object, body: bytes = BODY) -> str:
    return verify_signature(body, headers, secrets, tolerance_s=300)  # type: ignore[arg-type]


class TestHeaders:
    @pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
    def test_each_missing_header_is_named(self, missing: str) -> None:
        headers = headers_for(generate_secret())
        del headers[missing]
        with pytest.raises(InvalidSignature, match=f"Missing header.*{missing}"):
            check_headers(headers, now_s=time.time(), tolerance_s=300)

    @pytest.mark.parametrize("ts", ["abc", "1.5", "-5", "", " 1", "1" * 13])
    def test_malformed_timestamp_is_refused(self, ts: str) -> None:
        headers = {**headers_for(generate_secret()), "webhook-timestamp": ts}
        with pytest.raises(InvalidSignature, match=r"Missing|whole seconds"):
            check_headers(headers, now_s=time.time(), tolerance_s=300)

    def test_timestamp_older_than_the_tolerance_is_refused(self) -> None:
        headers = headers_for(generate_secret(), ts=1000)
        with pytest.raises(InvalidSignature, match="301 s old; the tolerance is 300 s"):
            check_headers(headers, now_s=1301, tolerance_s=300)

    def test_timestamp_ahead_of_the_tolerance_is_refused(self) -> None:
        headers = headers_for(generate_secret(), ts=2000)
        with pytest.raises(InvalidSignature, match="in the future"):
            check_headers(headers, now_s=1699, tolerance_s=300)

    def test_timestamp_at_the_edge_of_the_tolerance_passes(self) -> None:
        headers = headers_for(generate_secret(), ts=1000)
        assert check_headers(headers, now_s=1300, tolerance_s=300) == "msg_1"

    @pytest.mark.parametrize("signature", ["v1", "v2,abc=", "v1,not base64!", "abc"])
    def test_no_wellformed_v1_signature_is_refused(self, signature: str) -> None:
        headers = {**headers_for(generate_secret()), "webhook-signature": signature}
        with pytest.raises(InvalidSignature, match="no well-formed v1"):
            check_headers(headers, now_s=time.time(), tolerance_s=300)

    @pytest.mark.parametrize("webhook_id", ["a b", "é", "x" * 257])
    def test_malformed_webhook_id_is_refused(self, webhook_id: str) -> None:
        headers = {**headers_for(generate_secret()), "webhook-id": webhook_id}
        with pytest.raises(InvalidSignature, match="webhook-id"):
            check_headers(headers, now_s=time.time(), tolerance_s=300)


class TestVerify:
    def test_current_secret_verifies(self) -> None:
        secrets = new_secrets()
        assert verify(headers_for(secrets.current), secrets) == "msg_1"

    def test_signature_made_by_the_config_api_helper_verifies(self) -> None:
        secrets = new_secrets()
        ts = int(time.time())
        headers = {
            "webhook-id": "msg_9",
            "webhook-timestamp": str(ts),
            "webhook-signature": config_api_sign(secrets.current, "msg_9", ts, BODY),
        }
        assert verify(headers, secrets) == "msg_9"

    def test_one_matching_signature_among_several_verifies(self) -> None:
        secrets = new_secrets()
        good = headers_for(secrets.current)
        other = headers_for(generate_secret())["webhook-signature"]
        headers = {**good, "webhook-signature": f"{other} {good['webhook-signature']}"}
        assert verify(headers, secrets) == "msg_1"

    def test_other_secret_does_not_verify(self) -> None:
        with pytest.raises(InvalidSignature, match="does not match"):
            verify(headers_for(generate_secret()), new_secrets())

    def test_tampered_body_does_not_verify(self) -> None:
        secrets = new_secrets()
        with pytest.raises(InvalidSignature, match="does not match"):
            verify(headers_for(secrets.current), secrets, body=BODY + b" ")

    def test_previous_secret_verifies_during_its_grace_period(self) -> None:
        old = generate_secret()
        secrets = new_secrets(previous=old, previous_expires_in_s=3600)
        assert verify(headers_for(old), secrets) == "msg_1"

    def test_previous_secret_is_refused_once_expired(self) -> None:
        old = generate_secret()
        secrets = new_secrets(previous=old, previous_expires_in_s=-1)
        with pytest.raises(InvalidSignature, match="previous secret has expired"):
            verify(headers_for(old), secrets)

    def test_previous_secret_without_expiry_is_refused(self) -> None:
        old = generate_secret()
        with pytest.raises(InvalidSignature):
            verify(headers_for(old), new_secrets(previous=old))

    def test_pipeline_without_secret_is_refused(self) -> None:
        with pytest.raises(InvalidSignature, match="no signing secret"):
            verify(headers_for(generate_secret()), None)

    def test_body_that_is_not_utf8_is_refused(self) -> None:
        secrets = new_secrets()
        headers = headers_for(secrets.current)
        with pytest.raises(InvalidSignature, match="not UTF-8"):
            verify(headers, secrets, body=b"\xff\xfe")

    def test_malformed_entry_next_to_a_bad_signature_is_a_mismatch_not_a_crash(self) -> None:
        secrets = new_secrets()
        wrong = headers_for(generate_secret())["webhook-signature"]
        headers = {**headers_for(secrets.current), "webhook-signature": f"{wrong} v1,a,b"}
        with pytest.raises(InvalidSignature, match="does not match"):
            verify(headers, secrets)


class TestAgainstTheLibrary:
    """Our HMAC check against `standardwebhooks`' verify, on requests whose signature
    entries are well formed (`check_headers` refuses the others before either runs)."""

    @staticmethod
    def library_accepts(secret: str, body: bytes, headers: dict[str, str]) -> bool:
        try:
            Webhook(secret).verify(body.decode(), headers, json_parse=False)
        except WebhookVerificationError:
            return False
        return True

    @settings(max_examples=300, deadline=None)
    @given(
        webhook_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
        body=st.text(max_size=200).map(str.encode),
        skew=st.integers(-250, 250),
        entries=st.lists(
            st.sampled_from(["right", "other_secret", "other_body", "other_id", "v2", "noise"]),
            min_size=1,
            max_size=4,
        ),
        noise=st.binary(min_size=1, max_size=40),
    )
    def test_both_accept_exactly_the_same_requests(
        self, webhook_id: str, body: bytes, skew: int, entries: list[str], noise: bytes
    ) -> None:
        webhook_id = webhook_id or "msg"
        secret, other = generate_secret(), generate_secret()
        ts = int(time.time()) + skew

        def v1(key: str, msg_id: str, data: bytes) -> str:
            return sign(key, msg_id, ts, data)["webhook-signature"]

        made = {
            "right": v1(secret, webhook_id, body),
            "other_secret": v1(other, webhook_id, body),
            "other_body": v1(secret, webhook_id, body + b" "),
            "other_id": v1(secret, webhook_id + "x", body),
            "v2": "v2," + v1(secret, webhook_id, body).partition(",")[2],
            "noise": "v1," + base64.b64encode(noise).decode(),
        }
        headers = {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": " ".join(made[e] for e in entries),
        }
        secrets = WebhookSecrets(current=secret)
        try:
            verify(headers, secrets, body)
            ours = True
        except InvalidSignature:
            ours = False
        assert ours == self.library_accepts(secret, body, headers)
        assert ours == ("right" in entries)
