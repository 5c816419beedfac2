"""The pure core of deployments: draft → snapshot, snapshot diff, whole-config validation.

No I/O here, so every rule is cheap to test exhaustively.

What a snapshot holds: **everything** in the draft, inactive pipelines, disabled events
and disabled features included, each with its `status` / `enabled` flag. The diff can
then say "pipeline storefront: status active → inactive" instead of "deleted", and a
rollback restores a paused pipeline as paused. What *runs* is the live subset: active
pipelines, their enabled events, enabled features whose pipeline is live
(`app.core.config_loader.live_pipelines` / `live_features`). Validation only checks
what would run: a disabled feature may point at anything.

Change descriptions are one line per resource, the aspects that changed joined by "; ",
e.g. "feature cart_adds: windows 1h,24h → 5m,1h,24h; aggregation COUNT → SUM".
List order never matters: pipelines, features, events, fields and windows are compared
as keyed sets, and the change list comes out in one stable order (pipelines by name then
id, each followed by its events by name; then features by name then id).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from app.core.errors import FieldError
from app.schemas.common import USER_ENTITY
from app.schemas.deployment import (
    AggregateFeatureSnapshot,
    Change,
    ChangeType,
    ConfigSnapshot,
    DerivedFeatureSnapshot,
    FeatureSnapshot,
    PipelineSnapshot,
    ResourceType,
)
from app.schemas.feature import FeatureFilter, FeatureRead
from app.schemas.pipeline import EventDefinition, EventField, PipelineRead
from app.services.derived_rules import ServedValue, catalogue, expression_problems
from app.services.feature_rules import event_problems, spec_of
from app.tiles.windows import parse_window

ARROW = "→"


# -- draft → snapshot ------------------------------------------------------------------
def pipeline_snapshot(pipeline: PipelineRead) -> PipelineSnapshot:
    """Returns the deployable part of a pipeline (never its webhook secrets)."""
    return PipelineSnapshot(
        id=pipeline.id,
        name=pipeline.name,
        description=pipeline.description,
        category=pipeline.category,
        status=pipeline.status,
        events=[e.model_copy(deep=True) for e in pipeline.events],
    )


def feature_snapshot(feature: FeatureRead) -> FeatureSnapshot:
    """Returns the deployable part of a feature."""
    if feature.kind == "derived":
        return DerivedFeatureSnapshot(
            id=feature.id,
            name=feature.name,
            description=feature.description,
            pipeline_id=feature.pipeline_id,
            expression=feature.expression,
            enabled=feature.enabled,
        )
    return AggregateFeatureSnapshot(
        id=feature.id,
        name=feature.name,
        description=feature.description,
        pipeline_id=feature.pipeline_id,
        source_event=feature.source_event,
        aggregation=feature.aggregation,
        field=feature.field,
        time_windows=list(feature.time_windows),
        size=feature.size,
        filter=feature.filter.model_copy(deep=True) if feature.filter else None,
        entity=_entity_copy(feature.entity),
        enabled=feature.enabled,
    )


def _entity_copy(entity: str | list[str]) -> str | list[str]:
    return entity if isinstance(entity, str) else list(entity)


def entity_text(entity: str | list[str]) -> str:
    """e.g. `user`, `product`, `user x category`."""
    return entity if isinstance(entity, str) else " x ".join(entity)


def snapshot_from_draft(
    project_id: str,
    version: int,
    pipelines: Iterable[PipelineRead],
    features: Iterable[FeatureRead],
) -> ConfigSnapshot:
    """Returns the full snapshot of a draft (every pipeline and feature, ordered by id so
    one draft always gives one snapshot whatever order the store listed it in)."""
    return ConfigSnapshot(
        project_id=project_id,
        version=version,
        pipelines=sorted((pipeline_snapshot(p) for p in pipelines), key=lambda p: p.id),
        features=sorted((feature_snapshot(f) for f in features), key=lambda f: f.id),
    )


# -- diff ------------------------------------------------------------------------------
def _window_order(label: str) -> tuple[int, int, str]:
    try:
        return (0, parse_window(label).seconds, label)
    except ValueError:
        # An unparsable window cannot be ordered by length; it sorts last, by text,
        # so the description stays deterministic (validation reports it anyway).
        return (1, 0, label)


def _windows(windows: Sequence[str]) -> str:
    return ",".join(sorted(set(windows), key=_window_order)) or "none"


def _text(value: object) -> str:
    return "none" if value is None or value == "" else str(value)


def _field_changes(old: EventField, new: EventField) -> list[str]:
    parts: list[str] = []
    if old.type != new.type:
        parts.append(f"field {new.name} type {old.type} {ARROW} {new.type}")
    if old.required != new.required:
        parts.append(f"field {new.name} {'now required' if new.required else 'now optional'}")
    if old.description != new.description:
        parts.append(f"field {new.name} description changed")
    if old.entity != new.entity:
        parts.append(f"field {new.name} entity key {_text(old.entity)} {ARROW} {_text(new.entity)}")
    return parts


def _event_changes(old: EventDefinition, new: EventDefinition) -> list[str]:
    parts: list[str] = []
    if old.enabled != new.enabled:
        parts.append("enabled" if new.enabled else "disabled")
    if old.description != new.description:
        parts.append("description changed")
    old_fields = {f.name: f for f in old.fields}
    new_fields = {f.name: f for f in new.fields}
    for name in sorted(old_fields.keys() | new_fields.keys()):
        before, after = old_fields.get(name), new_fields.get(name)
        if before is None and after is not None:
            parts.append(
                f"field {name} added ({after.type}{', required' if after.required else ''})"
            )
        elif after is None:
            parts.append(f"field {name} removed")
        elif before is not None:
            parts.extend(_field_changes(before, after))
    return parts


def _pipeline_changes(old: PipelineSnapshot, new: PipelineSnapshot) -> list[str]:
    parts: list[str] = []
    if old.name != new.name:
        parts.append(f"name {old.name} {ARROW} {new.name}")
    if old.status != new.status:
        parts.append(f"status {old.status} {ARROW} {new.status}")
    if old.category != new.category:
        parts.append(f"category {old.category} {ARROW} {new.category}")
    if old.description != new.description:
        parts.append("description changed")
    return parts


def _feature_changes(
    old: FeatureSnapshot, new: FeatureSnapshot, pipeline_names: dict[str, str]
) -> list[str]:
    parts: list[str] = []
    if old.name != new.name:
        parts.append(f"name {old.name} {ARROW} {new.name}")
    if old.enabled != new.enabled:
        parts.append("enabled" if new.enabled else "disabled")
    if old.pipeline_id != new.pipeline_id:
        before = pipeline_names.get(old.pipeline_id, old.pipeline_id)
        after = pipeline_names.get(new.pipeline_id, new.pipeline_id)
        parts.append(f"pipeline {before} {ARROW} {after}")
    if old.kind == "aggregate" and new.kind == "aggregate":
        parts.extend(_aggregate_changes(old, new))
    elif old.kind == "derived" and new.kind == "derived":
        if old.expression != new.expression:
            parts.append(f"expression {old.expression} {ARROW} {new.expression}")
    else:
        before = _definition(old, pipeline_names)
        parts.append(f"{before} {ARROW} {_definition(new, pipeline_names)}")
    if old.description != new.description:
        parts.append("description changed")
    return parts


def _aggregate_changes(old: AggregateFeatureSnapshot, new: AggregateFeatureSnapshot) -> list[str]:
    parts: list[str] = []
    if old.source_event != new.source_event:
        parts.append(f"source event {old.source_event} {ARROW} {new.source_event}")
    if old.aggregation != new.aggregation:
        parts.append(f"aggregation {old.aggregation} {ARROW} {new.aggregation}")
    if old.field != new.field:
        parts.append(f"field {_text(old.field)} {ARROW} {_text(new.field)}")
    if set(old.time_windows) != set(new.time_windows):
        parts.append(f"windows {_windows(old.time_windows)} {ARROW} {_windows(new.time_windows)}")
    if old.size != new.size:
        parts.append(f"size {_text(old.size)} {ARROW} {_text(new.size)}")
    if old.filter != new.filter:
        parts.append(f"filter {_filter_text(old.filter)} {ARROW} {_filter_text(new.filter)}")
    if old.entity != new.entity:
        parts.append(f"entity {entity_text(old.entity)} {ARROW} {entity_text(new.entity)}")
    return parts


def _change(kind: ChangeType, resource: ResourceType, rid: str, label: str, what: str) -> Change:
    return Change(
        type=kind,
        resource_type=resource,
        resource_id=rid,
        description=f"{resource} {label}: {what}",
    )


def _filter_text(f: FeatureFilter | None) -> str:
    """e.g. `category eq "shoes" and price gte 50`; `none` without a filter."""
    if f is None:
        return "none"
    joiner = " and " if f.mode == "all" else " or "
    return joiner.join(
        f"{c.field} {c.op}" + ("" if c.value is None else f" {json.dumps(c.value)}")
        for c in f.conditions
    )


def _definition(f: FeatureSnapshot, pipeline_names: dict[str, str]) -> str:
    """e.g. `SUM of price over storefront/add_to_cart, windows 1h,24h`, or
    `derived cart_adds_1h / page_views_1h`."""
    if f.kind == "derived":
        return f"derived {f.expression}"
    of = f" of {f.field}" if f.field else ""
    if f.size is not None:
        of = f" {f.size}{of}"
    if f.filter is not None:
        of = f"{of} where {_filter_text(f.filter)}"
    if f.entity != USER_ENTITY:
        of = f"{of} per {entity_text(f.entity)}"
    pipeline = pipeline_names.get(f.pipeline_id, f.pipeline_id)
    return (
        f"{f.aggregation}{of} over {pipeline}/{f.source_event}, windows {_windows(f.time_windows)}"
    )


def _feature_summary(f: FeatureSnapshot, pipeline_names: dict[str, str]) -> str:
    state = "" if f.enabled else ", disabled"
    return f"{_definition(f, pipeline_names)}{state}"


def _event_diff(
    pipeline_id: str,
    pipeline_label: str,
    old: Sequence[EventDefinition],
    new: Sequence[EventDefinition],
) -> list[Change]:
    before = {e.name: e for e in old}
    after = {e.name: e for e in new}
    changes: list[Change] = []
    for name in sorted(before.keys() | after.keys()):
        rid = f"{pipeline_id}/{name}"
        b, a = before.get(name), after.get(name)
        if b is None and a is not None:
            fields = ", ".join(f.name for f in a.fields) or "no fields"
            state = "" if a.enabled else ", disabled"
            what = f"added to pipeline {pipeline_label} ({fields}{state})"
            changes.append(_change("create", "event", rid, name, what))
        elif a is None:
            what = f"removed from pipeline {pipeline_label}"
            changes.append(_change("delete", "event", rid, name, what))
        elif b is not None:
            parts = _event_changes(b, a)
            if parts:
                changes.append(_change("update", "event", rid, name, "; ".join(parts)))
    return changes


def diff(base: ConfigSnapshot | None, draft: ConfigSnapshot) -> list[Change]:
    """Returns what deploying `draft` over `base` (None: nothing deployed yet) changes.

    One `Change` per created, updated or deleted pipeline, event (`resource_id`
    `{pipeline_id}/{event}`) and feature; empty when the two configs are the same.
    Versions and list orders are ignored.
    """
    old_p = {p.id: p for p in base.pipelines} if base else {}
    new_p = {p.id: p for p in draft.pipelines}
    old_f = {f.id: f for f in base.features} if base else {}
    new_f = {f.id: f for f in draft.features}
    # Names for descriptions: the draft's name wins, a deleted pipeline keeps its last one.
    names = {pid: p.name for pid, p in old_p.items()} | {pid: p.name for pid, p in new_p.items()}

    changes: list[Change] = []
    for pid in sorted(old_p.keys() | new_p.keys(), key=lambda i: (names[i], i)):
        b, a = old_p.get(pid), new_p.get(pid)
        label = names[pid]
        if b is None and a is not None:
            events = ", ".join(e.name for e in a.events) or "no events"
            what = f"created ({a.category}, {a.status}; events: {events})"
            changes.append(_change("create", "pipeline", pid, label, what))
        elif a is None and b is not None:
            changes.append(_change("delete", "pipeline", pid, label, "deleted"))
        elif a is not None and b is not None:
            parts = _pipeline_changes(b, a)
            if parts:
                changes.append(_change("update", "pipeline", pid, label, "; ".join(parts)))
        changes.extend(_event_diff(pid, label, b.events if b else [], a.events if a else []))

    f_names = {fid: f.name for fid, f in old_f.items()} | {fid: f.name for fid, f in new_f.items()}
    for fid in sorted(old_f.keys() | new_f.keys(), key=lambda i: (f_names[i], i)):
        bf, af = old_f.get(fid), new_f.get(fid)
        label = f_names[fid]
        if bf is None and af is not None:
            what = f"created ({_feature_summary(af, names)})"
            changes.append(_change("create", "feature", fid, label, what))
        elif af is None:
            changes.append(_change("delete", "feature", fid, label, "deleted"))
        elif bf is not None:
            parts = _feature_changes(bf, af, names)
            if parts:
                changes.append(_change("update", "feature", fid, label, "; ".join(parts)))
    return changes


# -- validation ------------------------------------------------------------------------
def _problem(feature: FeatureSnapshot, attr: str, kind: str, msg: str) -> FieldError:
    return FieldError(
        loc=["features", feature.id, attr], msg=f"feature {feature.name}: {msg}", type=kind
    )


def _check_feature(
    f: FeatureSnapshot,
    pipelines: dict[str, PipelineSnapshot],
    served: dict[str, str],
    keys: dict[str, ServedValue],
) -> list[FieldError]:
    problems: list[FieldError] = []
    pipeline = pipelines.get(f.pipeline_id)
    if pipeline is None:
        return [
            _problem(
                f, "pipeline_id", "pipeline_missing", f"pipeline {f.pipeline_id} does not exist"
            )
        ]
    if pipeline.status != "active":
        msg = f"pipeline {pipeline.name} is {pipeline.status}; activate it or disable the feature"
        problems.append(_problem(f, "pipeline_id", "pipeline_inactive", msg))
    if f.kind == "derived":
        _, found = expression_problems(f.expression, keys, ["expression"])
        problems.extend(_problem(f, "expression", p.type, p.msg) for p in found)
        owner = served.get(f.name)
        if owner is not None:
            msg = f"served key {f.name} is also produced by feature {owner}"
            problems.append(_problem(f, "name", "duplicate_key", msg))
        else:
            served[f.name] = f.name
        return problems
    event = next((e for e in pipeline.events if e.name == f.source_event), None)
    if event is None:
        msg = f"event {f.source_event} does not exist in pipeline {pipeline.name}"
        problems.append(_problem(f, "source_event", "event_missing", msg))
    else:
        if not event.enabled:
            msg = f"event {f.source_event} is disabled in pipeline {pipeline.name}"
            problems.append(_problem(f, "source_event", "event_disabled", msg))
        # The field rules are the ones the feature API applies on write; only the
        # location moves from the request body to the snapshot.
        for p in event_problems(spec_of(f), [event]):
            # ["body", "filter", "all", 0, "value"] -> "filter.all.0.value"
            problems.append(_problem(f, ".".join(map(str, p.loc[1:])), p.type, p.msg))
    for window in f.time_windows:
        try:
            label = parse_window(window).label
        except ValueError as exc:
            problems.append(_problem(f, "time_windows", "window_invalid", str(exc)))
            continue
        key = f"{f.name}_{label}"
        owner = served.get(key)
        if owner is not None:
            msg = f"served key {key} is also produced by feature {owner}"
            problems.append(_problem(f, "time_windows", "duplicate_key", msg))
        else:
            served[key] = f.name
    return problems


def _live_keys(
    snapshot: ConfigSnapshot, pipelines: dict[str, PipelineSnapshot]
) -> dict[str, ServedValue]:
    """The keys a derived feature may read once deployed: those of the enabled
    aggregates whose pipeline is active and source event enabled."""
    events = {
        (p.id, e.name): e
        for p in pipelines.values()
        if p.status == "active"
        for e in p.events
        if e.enabled
    }
    live = [
        f
        for f in snapshot.features
        if f.kind == "aggregate" and f.enabled and (f.pipeline_id, f.source_event) in events
    ]
    derived = [f.name for f in snapshot.features if f.kind == "derived" and f.enabled]
    return catalogue(live, derived, lambda f: events.get((f.pipeline_id, f.source_event)))


def validate_draft(snapshot: ConfigSnapshot) -> list[FieldError]:
    """Returns every reason the snapshot cannot go live (empty if it can).

    Only enabled features are checked: each needs an existing, active pipeline. An
    aggregate needs an existing, enabled source event; a field for every aggregation
    but COUNT, present in the event and of type `number` for SUM/AVG/MIN/MAX; windows
    that parse. A derived feature's expression parses and reads only number-valued keys
    of live aggregates (`derived_rules`). Served keys (`{name}_{window}`, a derived
    feature's `{name}`) are produced by one enabled feature only.
    Each problem's `loc` is `["features", feature_id, attribute]`.
    """
    pipelines = {p.id: p for p in snapshot.pipelines}
    keys = _live_keys(snapshot, pipelines)
    served: dict[str, str] = {}
    problems: list[FieldError] = []
    for feature in sorted(snapshot.features, key=lambda f: (f.name, f.id)):
        if feature.enabled:
            problems.extend(_check_feature(feature, pipelines, served, keys))
    return problems
