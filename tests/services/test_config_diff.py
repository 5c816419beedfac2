"""The pure core of deployments: snapshot building, the diff and whole-config validation."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from app.schemas.deployment import AggregateFeatureSnapshot, ConfigSnapshot, PipelineSnapshot
from app.schemas.pipeline import EventDefinition, EventField
from app.services.config_diff import diff, snapshot_from_draft, validate_draft
from tests.factories import feature_document, new_id, pipeline_document

PROJECT = "proj_diff"


def event(name: str = "add_to_cart", **overrides: Any) -> EventDefinition:
    data: dict[str, Any] = {
        "name": name,
        "enabled": True,
        "fields": [
            EventField(name="product_id", type="string", required=True),
            EventField(name="price", type="number"),
            EventField(name="qty", type="string"),
        ],
    }
    data.update(overrides)
    return EventDefinition(**data)


def pipeline(**overrides: Any) -> PipelineSnapshot:
    data: dict[str, Any] = {
        "id": new_id(),
        "name": "storefront",
        "category": "behavioral",
        "status": "active",
        "events": [event()],
    }
    data.update(overrides)
    return PipelineSnapshot(**data)


def feature(pipeline_id: str, **overrides: Any) -> AggregateFeatureSnapshot:
    data: dict[str, Any] = {
        "id": new_id(),
        "name": "cart_adds",
        "pipeline_id": pipeline_id,
        "source_event": "add_to_cart",
        "aggregation": "COUNT",
        "field": None,
        "time_windows": ["1h", "24h"],
        "enabled": True,
    }
    data.update(overrides)
    return AggregateFeatureSnapshot(**data)


def snap(
    pipelines: list[PipelineSnapshot], features: list[AggregateFeatureSnapshot], version: int = 1
) -> ConfigSnapshot:
    return ConfigSnapshot(
        project_id=PROJECT, version=version, pipelines=pipelines, features=features
    )


def described(base: ConfigSnapshot | None, draft: ConfigSnapshot) -> list[tuple[str, str, str]]:
    return [(c.type, c.resource_type, c.description) for c in diff(base, draft)]


class TestSnapshotFromDraft:
    def test_snapshot_keeps_inactive_pipelines_and_disabled_features_without_secrets(self):
        p = pipeline_document(PROJECT, status="inactive")
        f = feature_document(PROJECT, p.id, enabled=False)
        s = snapshot_from_draft(PROJECT, 3, [p], [f])
        assert s.version == 3
        assert [x.status for x in s.pipelines] == ["inactive"]
        assert [x.enabled for x in s.features] == [False]
        assert "whsec_" not in s.model_dump_json()

    def test_snapshot_is_the_same_whatever_order_the_draft_is_listed_in(self):
        ps = [pipeline_document(PROJECT) for _ in range(4)]
        fs = [feature_document(PROJECT, ps[0].id) for _ in range(4)]
        a = snapshot_from_draft(PROJECT, 1, ps, fs)
        b = snapshot_from_draft(PROJECT, 1, list(reversed(ps)), list(reversed(fs)))
        assert a == b


class TestDiffPipelines:
    def test_new_pipeline_is_a_create_with_one_create_per_event(self):
        p = pipeline(events=[event("add_to_cart"), event("purchase")])
        changes = diff(None, snap([p], []))
        assert [(c.type, c.resource_type, c.resource_id) for c in changes] == [
            ("create", "pipeline", p.id),
            ("create", "event", f"{p.id}/add_to_cart"),
            ("create", "event", f"{p.id}/purchase"),
        ]
        assert changes[0].description.startswith("pipeline storefront: created")

    def test_status_change_reads_old_to_new(self):
        p = pipeline(status="inactive")
        after = p.model_copy(update={"status": "active"})
        assert described(snap([p], []), snap([after], [])) == [
            ("update", "pipeline", "pipeline storefront: status inactive → active")
        ]

    def test_rename_category_and_description_are_one_update(self):
        p = pipeline()
        after = p.model_copy(
            update={"name": "shop", "category": "transaction", "description": "new"}
        )
        assert described(snap([p], []), snap([after], [])) == [
            (
                "update",
                "pipeline",
                "pipeline shop: name storefront → shop; category behavioral → transaction; "
                "description changed",
            )
        ]

    def test_deleted_pipeline_is_a_delete_with_its_events(self):
        p = pipeline()
        changes = diff(snap([p], []), snap([], []))
        assert [(c.type, c.resource_type, c.resource_id) for c in changes] == [
            ("delete", "pipeline", p.id),
            ("delete", "event", f"{p.id}/add_to_cart"),
        ]
        assert changes[0].description == "pipeline storefront: deleted"


class TestDiffEvents:
    def test_field_added(self):
        p = pipeline(events=[event(fields=[EventField(name="product_id", type="string")])])
        after = p.model_copy(
            update={
                "events": [
                    event(
                        fields=[
                            EventField(name="product_id", type="string"),
                            EventField(name="price", type="number"),
                        ]
                    )
                ]
            }
        )
        changes = diff(snap([p], []), snap([after], []))
        assert [(c.type, c.resource_type, c.resource_id, c.description) for c in changes] == [
            (
                "update",
                "event",
                f"{p.id}/add_to_cart",
                "event add_to_cart: field price added (number)",
            )
        ]

    def test_field_type_change_reads_old_to_new(self):
        p = pipeline()
        fields = [f.model_copy() for f in p.events[0].fields]
        fields[2] = EventField(name="qty", type="number")
        after = p.model_copy(update={"events": [event(fields=fields)]})
        assert described(snap([p], []), snap([after], [])) == [
            ("update", "event", "event add_to_cart: field qty type string → number")
        ]

    def test_field_removed_required_flag_and_disable(self):
        p = pipeline()
        fields = [EventField(name="product_id", type="string", required=False)]
        after = p.model_copy(update={"events": [event(fields=fields, enabled=False)]})
        assert described(snap([p], []), snap([after], [])) == [
            (
                "update",
                "event",
                "event add_to_cart: disabled; field price removed; "
                "field product_id now optional; field qty removed",
            )
        ]

    def test_event_added_and_removed(self):
        p = pipeline(events=[event("add_to_cart")])
        after = p.model_copy(update={"events": [event("purchase")]})
        assert [(c.type, c.resource_id) for c in diff(snap([p], []), snap([after], []))] == [
            ("delete", f"{p.id}/add_to_cart"),
            ("create", f"{p.id}/purchase"),
        ]

    def test_reordering_events_or_fields_is_not_a_change(self):
        p = pipeline(events=[event("a_event"), event("b_event")])
        shuffled = [
            e.model_copy(update={"fields": list(reversed(e.fields))}) for e in reversed(p.events)
        ]
        assert diff(snap([p], []), snap([p.model_copy(update={"events": shuffled})], [])) == []


class TestDiffFeatures:
    def test_windows_change_reads_in_window_length_order(self):
        p = pipeline()
        f = feature(p.id, time_windows=["24h", "1h"])
        after = f.model_copy(update={"time_windows": ["1h", "5m", "24h"]})
        assert described(snap([p], [f]), snap([p], [after])) == [
            ("update", "feature", "feature cart_adds: windows 1h,24h → 5m,1h,24h")
        ]

    def test_every_feature_attribute_is_described(self):
        p, q = pipeline(), pipeline(name="checkout")
        f = feature(p.id)
        after = f.model_copy(
            update={
                "name": "cart_value",
                "enabled": False,
                "pipeline_id": q.id,
                "source_event": "purchase",
                "aggregation": "SUM",
                "field": "price",
                "description": "x",
            }
        )
        (change,) = diff(snap([p, q], [f]), snap([p, q], [after]))
        assert change.type == "update"
        assert change.resource_id == f.id
        assert change.description == (
            "feature cart_value: name cart_adds → cart_value; disabled; "
            "pipeline storefront → checkout; source event add_to_cart → purchase; "
            "aggregation COUNT → SUM; field none → price; description changed"
        )

    def test_created_and_deleted_features(self):
        p = pipeline()
        old, new = feature(p.id, name="old_one"), feature(p.id, name="new_one")
        changes = diff(snap([p], [old]), snap([p], [new]))
        assert [(c.type, c.resource_type, c.resource_id) for c in changes] == [
            ("create", "feature", new.id),
            ("delete", "feature", old.id),
        ]
        assert changes[0].description == (
            "feature new_one: created (COUNT over storefront/add_to_cart, windows 1h,24h)"
        )
        assert changes[1].description == "feature old_one: deleted"


# -- properties ------------------------------------------------------------------------
_names = st.sampled_from(["a_one", "b_two", "c_three", "d_four"])
_fields = st.lists(
    st.builds(
        EventField,
        name=st.sampled_from(["price", "qty", "sku", "ts"]),
        type=st.sampled_from(["string", "number", "boolean"]),
        required=st.booleans(),
    ),
    max_size=3,
    unique_by=lambda f: f.name,
)
_events = st.lists(
    st.builds(EventDefinition, name=_names, enabled=st.booleans(), fields=_fields),
    max_size=3,
    unique_by=lambda e: e.name,
)
_ids = [new_id() for _ in range(6)]


@st.composite
def snapshots(draw: st.DrawFn) -> ConfigSnapshot:
    pipeline_ids = draw(st.lists(st.sampled_from(_ids[:3]), unique=True, max_size=3))
    pipelines = [
        PipelineSnapshot(
            id=pid,
            name=draw(_names),
            category="behavioral",
            status=draw(st.sampled_from(["active", "inactive", "configuring"])),
            events=draw(_events),
        )
        for pid in pipeline_ids
    ]
    feature_ids = draw(st.lists(st.sampled_from(_ids[3:]), unique=True, max_size=3))
    features = [
        AggregateFeatureSnapshot(
            id=fid,
            name=draw(_names),
            pipeline_id=draw(st.sampled_from(_ids[:3])),
            source_event=draw(_names),
            aggregation=draw(st.sampled_from(["COUNT", "SUM", "LAST"])),
            field=draw(st.none() | st.sampled_from(["price", "sku"])),
            time_windows=draw(
                st.lists(st.sampled_from(["5m", "1h", "24h"]), min_size=1, unique=True)
            ),
            enabled=draw(st.booleans()),
        )
        for fid in feature_ids
    ]
    return snap(pipelines, features, version=draw(st.integers(1, 5)))


class TestDiffProperties:
    @settings(max_examples=150)
    @given(snapshots())
    def test_a_snapshot_has_no_diff_with_itself(self, s: ConfigSnapshot):
        assert diff(s, s) == []
        assert diff(s, s.model_copy(update={"version": s.version + 1})) == []

    @settings(max_examples=150)
    @given(snapshots())
    def test_diff_from_nothing_lists_only_creates(self, s: ConfigSnapshot):
        changes = diff(None, s)
        assert {c.type for c in changes} <= {"create"}
        events = sum(len(p.events) for p in s.pipelines)
        assert len(changes) == len(s.pipelines) + events + len(s.features)

    @settings(max_examples=150)
    @given(snapshots(), snapshots(), st.randoms(use_true_random=False))
    def test_diff_ignores_list_order(
        self, a: ConfigSnapshot, b: ConfigSnapshot, rnd: random.Random
    ):
        def shuffled(s: ConfigSnapshot) -> ConfigSnapshot:
            ps, fs = list(s.pipelines), list(s.features)
            rnd.shuffle(ps)
            rnd.shuffle(fs)
            return s.model_copy(update={"pipelines": ps, "features": fs})

        assert diff(shuffled(a), shuffled(b)) == diff(a, b)

    @settings(max_examples=150)
    @given(snapshots(), snapshots())
    def test_diff_backwards_mirrors_creates_and_deletes(self, a: ConfigSnapshot, b: ConfigSnapshot):
        forward = diff(a, b)
        backward = diff(b, a)
        flip = {"create": "delete", "delete": "create", "update": "update"}
        assert sorted((flip[c.type], c.resource_type, c.resource_id) for c in forward) == sorted(
            (c.type, c.resource_type, c.resource_id) for c in backward
        )


class TestValidateDraft:
    def test_a_sound_config_has_no_problems(self):
        p = pipeline()
        s = snap(
            [p],
            [
                feature(p.id),
                feature(p.id, name="cart_value", aggregation="SUM", field="price"),
                feature(p.id, name="last_sku", aggregation="LAST", field="product_id"),
            ],
        )
        assert validate_draft(s) == []

    def test_every_problem_is_reported_with_its_location(self):
        p = pipeline(
            events=[event(), event("viewed", enabled=False)],
        )
        q = pipeline(name="paused", status="inactive")
        bad = [
            feature(new_id(), name="no_pipeline"),
            feature(q.id, name="on_paused"),
            feature(p.id, name="no_event", source_event="missing"),
            feature(p.id, name="off_event", source_event="viewed"),
            feature(p.id, name="no_field", aggregation="SUM", field=None),
            feature(p.id, name="unknown_field", aggregation="AVG", field="nope"),
            feature(p.id, name="text_sum", aggregation="MAX", field="qty"),
            feature(p.id, name="bad_window", time_windows=["1h", "1w"]),
            feature(p.id, name="twice", time_windows=["5m", "05m"]),
        ]
        problems = validate_draft(snap([p, q], bad))
        by_feature = {(pr.loc[1], pr.type) for pr in problems}
        ids = {f.name: f.id for f in bad}
        assert by_feature == {
            (ids["no_pipeline"], "pipeline_missing"),
            (ids["on_paused"], "pipeline_inactive"),
            (ids["no_event"], "event_missing"),
            (ids["off_event"], "event_disabled"),
            (ids["no_field"], "field_required"),
            (ids["unknown_field"], "field_missing"),
            (ids["text_sum"], "field_not_numeric"),
            (ids["bad_window"], "window_invalid"),
            (ids["twice"], "duplicate_key"),
        }
        assert all(pr.loc[0] == "features" for pr in problems)
        text = next(pr for pr in problems if pr.type == "field_not_numeric").msg
        assert text == "feature text_sum: MAX needs a number field; 'qty' is string"

    def test_served_keys_must_be_unique_across_features(self):
        p = pipeline()
        a = feature(p.id, name="cart_adds", time_windows=["1h"])
        b = feature(p.id, name="cart_adds", time_windows=["24h", "1h"])
        problems = validate_draft(snap([p], [a, b]))
        assert [pr.type for pr in problems] == ["duplicate_key"]
        assert "cart_adds_1h" in problems[0].msg

    def test_disabled_features_and_inactive_pipelines_alone_are_not_checked(self):
        q = pipeline(status="inactive")
        s = snap([q], [feature(new_id(), enabled=False), feature(q.id, enabled=False)])
        assert validate_draft(s) == []


class TestEntitiesAtDeploy:
    def test_an_entity_the_deployed_event_does_not_declare_is_refused_naming_it(self):
        keyed = event(
            fields=[
                EventField(name="product_id", type="string", entity="product"),
                EventField(name="price", type="number"),
            ]
        )
        p = pipeline(events=[keyed])
        good = [
            feature(p.id, name="per_product", entity="product"),
            feature(p.id, name="per_pair", entity=["user", "product"]),
        ]
        assert validate_draft(snap([p], good)) == []
        bad = [
            feature(p.id, name="per_brand", entity="brand"),
            feature(p.id, name="per_pair", entity=["user", "brand"]),
        ]
        problems = validate_draft(snap([p], bad))
        assert [(pr.loc[2], pr.type) for pr in problems] == [
            ("entity", "entity_missing"),
            ("entity.1", "entity_missing"),
        ]
        assert problems[0].msg.startswith("feature per_brand: entity 'brand' is not declared")

    def test_the_diff_names_entity_keys_and_feature_entities(self):
        p = pipeline()
        keyed = p.model_copy(
            update={
                "events": [
                    event(
                        fields=[
                            EventField(name="product_id", type="string", entity="product"),
                            EventField(name="price", type="number"),
                            EventField(name="qty", type="string"),
                        ]
                    )
                ]
            }
        )
        f = feature(p.id)
        g = feature(p.id, id=f.id, entity="product")
        changes = described(snap([p], [f]), snap([keyed], [g], version=2))
        texts = [text for _, _, text in changes]
        assert any("field product_id entity key none → product" in t for t in texts), texts
        assert any("entity user → product" in t for t in texts), texts
