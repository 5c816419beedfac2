"""The pure pipeline rules: status after edits, event list edits, features an edit breaks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.core.errors import EventInUse, EventNameTaken, EventNotFound, FieldInUse, PipelineNotReady
from app.schemas.feature import AggregateFeatureRead
from app.schemas.pipeline import EventDefinition, EventField
from app.services import pipeline_rules as rules


def event(name: str, *fields: tuple[str, str], enabled: bool = True) -> EventDefinition:
    return EventDefinition(
        name=name,
        enabled=enabled,
        fields=[EventField(name=n, type=t) for n, t in fields],
    )


def feature(
    name: str, source: str, aggregation: str = "COUNT", field: str | None = None
) -> AggregateFeatureRead:
    now = datetime.now(UTC)
    return AggregateFeatureRead(
        id="0" * 24,
        project_id="p",
        pipeline_id="1" * 24,
        name=name,
        description="",
        source_event=source,
        aggregation=aggregation,
        field=field,
        time_windows=["1h"],
        enabled=True,
        revision=1,
        created_at=now,
        updated_at=now,
    )


CART = event("add_to_cart", ("price", "number"))
PURCHASE = event("purchase", ("revenue", "number"))


class TestStatus:
    @pytest.mark.parametrize(
        ("status", "events", "expected"),
        [
            ("configuring", [CART], "inactive"),
            ("active", [CART], "active"),
            ("inactive", [CART], "inactive"),
            ("active", [], "configuring"),
        ],
    )
    def test_settle(self, status: str, events: list[EventDefinition], expected: str) -> None:
        assert rules.settle_status(status, events) == expected  # type: ignore[arg-type]

    def test_activation_needs_an_enabled_event(self) -> None:
        assert rules.activated([CART]) == "active"
        with pytest.raises(PipelineNotReady):
            rules.activated([event("x", enabled=False)])


class TestEventEdits:
    def test_add_refuses_a_taken_name(self) -> None:
        assert rules.with_event_added([CART], PURCHASE) == [CART, PURCHASE]
        with pytest.raises(EventNameTaken):
            rules.with_event_added([CART], CART)

    def test_replace_keeps_the_position_and_refuses_a_taken_name(self) -> None:
        renamed = event("cart_add")
        assert rules.with_event_replaced([CART, PURCHASE], "add_to_cart", renamed) == [
            renamed,
            PURCHASE,
        ]
        with pytest.raises(EventNameTaken):
            rules.with_event_replaced([CART, PURCHASE], "add_to_cart", event("purchase"))
        with pytest.raises(EventNotFound):
            rules.with_event_replaced([CART], "search", renamed)

    def test_remove(self) -> None:
        assert rules.with_event_removed([CART, PURCHASE], "add_to_cart") == [PURCHASE]
        with pytest.raises(EventNotFound):
            rules.with_event_removed([CART], "search")


class TestFeaturesStillFit:
    def test_removing_a_source_event_is_refused(self) -> None:
        with pytest.raises(EventInUse, match="cart_adds"):
            rules.check_features_still_fit([feature("cart_adds", "add_to_cart")], [CART], [])

    def test_retyping_an_aggregated_field_is_refused(self) -> None:
        spend = feature("spend", "purchase", "SUM", "revenue")
        with pytest.raises(FieldInUse, match="spend"):
            rules.check_features_still_fit(
                [spend], [PURCHASE], [event("purchase", ("revenue", "string"))]
            )

    def test_a_rename_is_judged_on_the_new_name(self) -> None:
        adds = feature("cart_adds", "add_to_cart")
        renamed = [event("cart_add", ("price", "number"))]
        rules.check_features_still_fit([adds], [CART], renamed, ("add_to_cart", "cart_add"))
        with pytest.raises(EventInUse):
            rules.check_features_still_fit([adds], [CART], renamed)

    def test_a_feature_broken_before_the_edit_does_not_block_it(self) -> None:
        broken = feature("ghost", "page_view")
        rules.check_features_still_fit([broken], [CART], [CART, PURCHASE])
