"""The envelope parser, JSON loading and the Kafka message encoding (pure)."""

from __future__ import annotations

import json

import pytest

from app.core.errors import InvalidEvent, MalformedJSON
from app.schemas.event import (
    MAX_TIMESTAMP_MS,
    EventMessage,
    check_json_value,
    loads_json,
    parse_envelope,
    parse_timestamp,
    record_key,
)


def envelope(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {"event": "add_to_cart", "user_id": "u-1", "properties": {}}
    body.update(overrides)
    return body


def locs(exc: pytest.ExceptionInfo[InvalidEvent]) -> list[list[str | int]]:
    return [f.loc for f in exc.value.fields or []]


class TestLoadsJson:
    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
    def test_non_finite_literals_are_malformed_json(self, literal: str) -> None:
        with pytest.raises(MalformedJSON, match="not a JSON number"):
            loads_json(f'{{"properties": {{"price": {literal}}}}}')

    def test_syntax_error_names_line_and_column(self) -> None:
        with pytest.raises(MalformedJSON, match="line 2 column 1"):
            loads_json('{"event": "x",\n}')

    def test_nesting_past_the_parser_limit_is_malformed_json(self) -> None:
        with pytest.raises(MalformedJSON, match="too deep"):
            loads_json("[" * 100_000 + "]" * 100_000)

    def test_integer_with_thousands_of_digits_is_malformed_json(self) -> None:
        with pytest.raises(MalformedJSON):
            loads_json("1" * 5000)

    def test_overflowing_float_parses_to_infinity_for_the_validators_to_reject(self) -> None:
        assert loads_json("1e400") == float("inf")


class TestParseEnvelope:
    def test_minimal_envelope_parses(self) -> None:
        parsed = parse_envelope(envelope())
        assert (parsed.event, parsed.user_id, parsed.timestamp_ms, parsed.event_id) == (
            "add_to_cart",
            "u-1",
            None,
            None,
        )

    @pytest.mark.parametrize(
        "user_id",
        ["$where", "../x", ".hidden", "", "a" * 129, "a b", "a/b", "ü", "{}", "a\x00"],
    )
    def test_hostile_user_ids_are_rejected_with_their_path(self, user_id: str) -> None:
        with pytest.raises(InvalidEvent) as exc:
            parse_envelope(envelope(user_id=user_id))
        assert locs(exc) == [["user_id"]]

    @pytest.mark.parametrize("user_id", ["u", "user@example.com", "a:b=c+d-e_f.g", "9" * 128])
    def test_reasonable_user_ids_are_accepted(self, user_id: str) -> None:
        assert parse_envelope(envelope(user_id=user_id)).user_id == user_id

    @pytest.mark.parametrize("user_id", [42, None, ["u"], {"$gt": ""}])
    def test_user_id_must_be_a_string(self, user_id: object) -> None:
        with pytest.raises(InvalidEvent) as exc:
            parse_envelope(envelope(user_id=user_id))
        assert locs(exc) == [["user_id"]]

    def test_every_structural_problem_is_listed(self) -> None:
        with pytest.raises(InvalidEvent) as exc:
            parse_envelope({"event": 1, "user_id": "$x", "properties": [], "$where": "1"})
        assert sorted(map(str, locs(exc))) == sorted(
            map(str, [["$where"], ["event"], ["user_id"], ["properties"]])
        )
        assert "(and 3 more)" in exc.value.detail

    def test_missing_properties_is_required(self) -> None:
        with pytest.raises(InvalidEvent) as exc:
            parse_envelope({"event": "x", "user_id": "u"})
        assert exc.value.fields
        assert exc.value.fields[0].type == "missing"

    def test_non_object_is_rejected(self) -> None:
        with pytest.raises(InvalidEvent, match="JSON object"):
            parse_envelope(["event"])

    @pytest.mark.parametrize("event_id", ["", "x" * 129, "a\nb", 7, True])
    def test_bad_event_ids_are_rejected(self, event_id: object) -> None:
        with pytest.raises(InvalidEvent) as exc:
            parse_envelope(envelope(event_id=event_id))
        assert locs(exc) == [["event_id"]]

    def test_null_event_id_and_timestamp_mean_absent(self) -> None:
        parsed = parse_envelope(envelope(event_id=None, timestamp=None))
        assert parsed.event_id is None
        assert parsed.timestamp_ms is None


class TestParseTimestamp:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-01-01T00:00:00Z", 1_704_067_200_000),
            ("2024-01-01t01:00:00+01:00", 1_704_067_200_000),
            ("2024-01-01 00:00:00.123456789z", 1_704_067_200_123),
            (1_704_067_200_000, 1_704_067_200_000),
            (0, 0),
        ],
    )
    def test_rfc3339_and_epoch_ms_are_normalised_to_epoch_ms(
        self, value: object, expected: int
    ) -> None:
        assert parse_timestamp(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            "2024-01-01T00:00:00",  # no offset
            "2024-01-01",
            "20240101T000000Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:60Z",
            "1969-12-31T23:59:59Z",
            1.7e12,
            True,
            -1,
            MAX_TIMESTAMP_MS + 1,
            None,
        ],
    )
    def test_other_forms_are_rejected(self, value: object) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - the message is the detail shown
            parse_timestamp(value)


class TestCheckJsonValue:
    def test_lone_surrogate_inside_an_object_is_reported_with_its_path(self) -> None:
        value = json.loads('{"a": [1, {"b": "\\ud800"}]}')
        problem = check_json_value(value, ["properties", "meta"])
        assert problem is not None
        assert problem.loc == ["properties", "meta", "a", 1, "b"]

    def test_paired_surrogate_escape_is_valid_text(self) -> None:
        assert check_json_value(json.loads('{"e": "\\ud83d\\ude00"}'), ["m"]) is None

    def test_nesting_beyond_the_limit_is_reported(self) -> None:
        deep: object = 1
        for _ in range(20):
            deep = {"x": deep}
        problem = check_json_value(deep, ["m"])
        assert problem is not None
        assert problem.type == "too_deep"

    @pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan"), 2**53])
    def test_unsafe_numbers_are_reported(self, number: float) -> None:
        problem = check_json_value({"n": [number]}, ["m"])
        assert problem is not None
        assert problem.loc == ["m", "n", 0]


class TestEventMessage:
    def test_encoding_is_compact_utf8_json_and_round_trips(self) -> None:
        message = EventMessage(
            project_id="shop",
            pipeline_id="a" * 24,
            event="add_to_cart",
            user_id="u-1",
            event_id="e-1",
            event_time_ms=1,
            received_at_ms=2,
            version=3,
            properties={"name": "café", "n": 1.5},
        )
        encoded = message.encode()
        assert b" " not in encoded.replace(b"caf\xc3\xa9", b"")
        assert "café".encode() in encoded
        assert EventMessage.decode(encoded) == message

    def test_record_key_is_project_and_user(self) -> None:
        assert record_key("shop", "u-1") == b"shop:u-1"
