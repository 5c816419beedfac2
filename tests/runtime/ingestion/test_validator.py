"""Validation against the deployed snapshot (pure), including hostile payloads."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.errors import (
    DPSError,
    EventInFuture,
    InvalidEvent,
    PipelineInactive,
    PipelineNotFound,
    UnknownEvent,
)
from app.schemas.event import USER_ID_PATTERN, parse_envelope
from app.schemas.pipeline import EventDefinition, EventField
from runtime.ingestion.validator import (
    CompiledCache,
    CompiledPipeline,
    UnknownPolicy,
    ValidEvent,
    compile_snapshot,
    validate_event,
)
from tests.runtime.ingestion.helpers import (
    TYPED_FIELDS,
    config_snapshot,
    event,
    pipeline_id,
    pipeline_snapshot,
)

NOW_MS = 1_750_000_000_000
PID = pipeline_id()
CONFIG = compile_snapshot(config_snapshot("shop", [pipeline_snapshot(PID)], version=7))
PIPELINE = CONFIG.pipeline(PID)


def check(payload: Any, *, unknown: UnknownPolicy = "reject") -> ValidEvent:
    return validate_event(
        PIPELINE,
        parse_envelope(payload),
        now_ms=NOW_MS,
        max_future_ms=300_000,
        unknown_properties=unknown,
    )


def field_locs(exc: pytest.ExceptionInfo[Any]) -> list[list[str | int]]:
    return [f.loc for f in exc.value.fields or []]


class TestPipelineLookup:
    def test_unknown_pipeline_is_not_found(self) -> None:
        with pytest.raises(PipelineNotFound, match="version 7"):
            CONFIG.pipeline(pipeline_id())

    @pytest.mark.parametrize("status", ["inactive", "configuring"])
    def test_pipeline_that_is_not_active_is_a_conflict(self, status: str) -> None:
        pid = pipeline_id()
        config = compile_snapshot(config_snapshot("shop", [pipeline_snapshot(pid, status=status)]))
        with pytest.raises(PipelineInactive, match=status):
            config.pipeline(pid)

    def test_compiled_cache_recompiles_only_when_the_version_changes(self) -> None:
        cache = CompiledCache()
        v1 = config_snapshot("shop", [pipeline_snapshot(PID)], version=1)
        first = cache.get(v1)
        assert cache.get(v1.model_copy()) is first
        assert cache.get(v1.model_copy(update={"version": 2})) is not first


class TestEvents:
    def test_valid_event_keeps_its_fields(self) -> None:
        valid = check(event(event_id="e-1", timestamp=NOW_MS - 1000))
        assert valid == ValidEvent(
            "add_to_cart", "user-1", "e-1", NOW_MS - 1000, {"sku": "sku-1", "price": 9.5}
        )

    def test_missing_timestamp_defaults_to_receive_time(self) -> None:
        assert check(event()).event_time_ms == NOW_MS

    def test_unknown_event_is_rejected(self) -> None:
        with pytest.raises(UnknownEvent, match="not defined") as exc:
            check(event(event="$where"))
        assert field_locs(exc) == [["event"]]

    def test_disabled_event_is_rejected(self) -> None:
        with pytest.raises(UnknownEvent, match="disabled"):
            check(event(event="old_event"))

    def test_event_more_than_five_minutes_ahead_is_rejected(self) -> None:
        with pytest.raises(EventInFuture, match="301 s in the future") as exc:
            check(event(timestamp=NOW_MS + 301_000))
        assert field_locs(exc) == [["timestamp"]]

    def test_event_up_to_five_minutes_ahead_is_accepted(self) -> None:
        assert check(event(timestamp=NOW_MS + 300_000)).event_time_ms == NOW_MS + 300_000

    def test_year_old_event_is_accepted(self) -> None:
        old = NOW_MS - 365 * 86_400_000
        assert check(event(timestamp=old)).event_time_ms == old


class TestProperties:
    def test_missing_required_property_names_its_path(self) -> None:
        with pytest.raises(InvalidEvent, match=r"properties\.sku: is required") as exc:
            check(event(properties={"price": 1}))
        assert field_locs(exc) == [["properties", "sku"]]

    def test_null_required_property_counts_as_missing(self) -> None:
        with pytest.raises(InvalidEvent) as exc:
            check(event(properties={"sku": None}))
        assert [f.type for f in exc.value.fields or []] == ["missing"]

    def test_null_optional_property_is_dropped(self) -> None:
        assert check(event(properties={"sku": "s", "price": None})).properties == {"sku": "s"}

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("price", "9.5"),
            ("price", True),
            ("price", float("inf")),
            ("price", float("nan")),
            ("price", 2**53),
            ("price", [1]),
            ("sku", 5),
            ("sku", "\ud800"),
            ("gift", 1),
            ("gift", "true"),
            ("seen_at", "yesterday"),
            ("seen_at", 1.5),
            ("meta", []),
            ("meta", "{}"),
            ("meta", {"x": float("inf")}),
        ],
    )
    def test_wrong_type_names_the_field(self, name: str, value: object) -> None:
        properties: dict[str, object] = {"sku": "s", name: value}
        with pytest.raises(InvalidEvent) as exc:
            check(event(properties=properties))
        assert field_locs(exc)[0][:2] == ["properties", name]

    def test_every_bad_property_is_listed(self) -> None:
        with pytest.raises(InvalidEvent) as exc:
            check(event(properties={"price": "x", "gift": "y", "extra": 1}))
        assert sorted(loc[1] for loc in field_locs(exc)) == ["extra", "gift", "price", "sku"]

    def test_values_of_every_type_are_accepted(self) -> None:
        properties = {
            "sku": "s-1",
            "price": -3,
            "gift": False,
            "seen_at": "2024-01-01T00:00:00Z",
            "meta": {"tags": ["a", {"b": None}], "n": 1.5},
        }
        valid = check(event(properties=properties))
        assert valid.properties == {**properties, "seen_at": 1_704_067_200_000}

    def test_unknown_property_is_rejected_by_default(self) -> None:
        with pytest.raises(InvalidEvent) as exc:
            check(event(properties={"sku": "s", "$where": "1"}))
        assert field_locs(exc) == [["properties", "$where"]]

    def test_unknown_property_is_dropped_with_the_drop_policy(self) -> None:
        valid = check(event(properties={"sku": "s", "$where": "1"}), unknown="drop")
        assert valid.properties == {"sku": "s"}


# -- hostile payloads -------------------------------------------------------------------------
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["$where", "../x", ".x", "\ud800", "add_to_cart", "sku", "user-1"])
)
json_value = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(max_size=8) | st.sampled_from(["$where", "sku"]), children, max_size=4
        )
    ),
    max_leaves=30,
)
keys = st.sampled_from(["event", "user_id", "timestamp", "event_id", "properties", "$where"])
property_keys = st.sampled_from([*TYPED_FIELDS, "$where", "__proto__", "extra"])
hostile_envelope = (
    st.fixed_dictionaries(
        {},
        optional={
            "event": st.sampled_from(["add_to_cart", "old_event", "$where"]) | json_value,
            "user_id": st.from_regex(USER_ID_PATTERN, fullmatch=True) | json_value,
            "timestamp": st.integers(NOW_MS - 10**9, NOW_MS + 10**9) | json_value,
            "event_id": st.text(min_size=1, max_size=130) | json_value,
            "properties": st.dictionaries(property_keys, json_value, max_size=6) | json_value,
        },
    )
    | st.dictionaries(keys, json_value, max_size=6)
    | json_value
)

fitting_properties = st.fixed_dictionaries(
    {"sku": st.text(max_size=20)},
    optional={
        "price": st.integers(-(2**53) + 1, 2**53 - 1)
        | st.floats(allow_nan=False, allow_infinity=False),
        "gift": st.booleans(),
        "seen_at": st.integers(0, NOW_MS),
        "meta": st.dictionaries(st.text(max_size=5), st.text(max_size=5) | st.integers(-9, 9)),
    },
)
fitting_envelope = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["add_to_cart", "page_view"]),
        "user_id": st.from_regex(USER_ID_PATTERN, fullmatch=True),
        "properties": fitting_properties,
    },
    optional={"timestamp": st.integers(0, NOW_MS + 300_000), "event_id": st.uuids().map(str)},
)


@st.composite
def mutated_envelope(draw: st.DrawFn) -> Any:
    """A fitting envelope with one key (top level or in properties) set to a hostile value:
    the cases closest to the boundary between accepted and rejected."""
    payload: dict[str, Any] = draw(fitting_envelope)
    target: dict[str, Any] = payload if draw(st.booleans()) else payload["properties"]
    key = draw(keys if target is payload else property_keys)
    target[key] = draw(json_value)
    return payload


any_envelope = hostile_envelope | fitting_envelope | mutated_envelope()
_USER_ID = re.compile(USER_ID_PATTERN)


def fits(payload: Any, pipeline: CompiledPipeline) -> bool:
    """An independent oracle: does the payload really fit the typed schema?"""
    if not isinstance(payload, dict) or not set(payload) <= {
        "event",
        "user_id",
        "timestamp",
        "event_id",
        "properties",
    }:
        return False
    if payload.get("event") not in ("add_to_cart", "page_view"):
        return False
    user_id = payload.get("user_id")
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        return False
    props = payload.get("properties")
    if not isinstance(props, dict) or not set(props) <= set(TYPED_FIELDS):
        return False
    if props.get("sku") is None:
        return False
    for name, value in props.items():
        if value is not None and not _fits_type(TYPED_FIELDS[name][0], value):
            return False
    return True


def _fits_type(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str) and "\ud800" not in value
    if kind == "number":
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (isinstance(value, float) or abs(value) <= 2**53 - 1)
        )
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)  # contents checked by check_json_value's own tests
    return isinstance(value, str | int) and not isinstance(value, bool)  # timestamp


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(payload=any_envelope)
def test_hostile_payloads_pass_only_if_they_fit_the_schema(payload: Any) -> None:
    outcome: ValidEvent | DPSError
    try:
        outcome = check(payload)
    except DPSError as exc:
        outcome = exc
    if isinstance(outcome, DPSError):
        assert outcome.status_code == 422, outcome
        return
    valid = outcome
    assert fits(payload, PIPELINE), payload
    assert valid.user_id == payload["user_id"]
    assert set(valid.properties) <= set(TYPED_FIELDS)
    for value in valid.properties.values():
        assert value is not None


@settings(max_examples=200)
@given(payload=fitting_envelope)
def test_payloads_that_fit_the_schema_are_accepted_unchanged(payload: Any) -> None:
    valid = check(payload)
    assert fits(payload, PIPELINE)
    assert valid.properties == payload["properties"]


class TestEntityKeys:
    """An entity key's values become record ids: text or safe integers, checked here."""

    KEYED = compile_snapshot(
        config_snapshot(
            "shop",
            [
                pipeline_snapshot(
                    PID,
                    events=[
                        EventDefinition(
                            name="order",
                            fields=[
                                EventField(name="sku", type="string", entity="product"),
                                EventField(name="store", type="number", entity="store"),
                            ],
                        )
                    ],
                )
            ],
        )
    ).pipeline(PID)

    def check(self, properties: dict[str, Any]) -> ValidEvent:
        return validate_event(
            self.KEYED,
            parse_envelope(event(event="order", properties=properties)),
            now_ms=NOW_MS,
            max_future_ms=300_000,
            unknown_properties="reject",
        )

    @pytest.mark.parametrize(
        "properties",
        [{"sku": "$where"}, {"sku": "../etc/passwd"}, {"sku": "Men's shoes / 42"}, {"store": 7}],
        ids=["operator", "path", "free-text", "integer"],
    )
    def test_ids_of_text_or_integers_are_accepted_as_given(
        self, properties: dict[str, Any]
    ) -> None:
        assert self.check(properties).properties == properties

    @pytest.mark.parametrize(
        ("name", "value"),
        [("sku", ""), ("sku", "x" * 129), ("sku", "a\nb"), ("sku", "\ud800"), ("sku", 1.5),
         ("sku", True), ("store", 7.5), ("store", 2**60), ("store", "7")],
        ids=["empty", "long", "control", "surrogate", "float-in-text", "bool", "float",
             "unsafe-int", "text-in-number"],
    )  # fmt: skip
    def test_values_that_cannot_be_an_entity_id_are_refused_naming_the_property(
        self, name: str, value: object
    ) -> None:
        with pytest.raises(InvalidEvent) as exc:
            self.check({name: value})
        assert field_locs(exc) == [["properties", name]]
