"""Pure rules for pipeline edits: status, event list changes, and what an edit would
break in the features built on the pipeline. No I/O."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from app.core.errors import (
    EventInUse,
    EventNameTaken,
    EventNotFound,
    FieldInUse,
    PipelineNotReady,
    ValidationFailed,
)
from app.schemas.feature import FeatureRead
from app.schemas.pipeline import MAX_EVENTS_PER_PIPELINE, EventDefinition, PipelineStatus
from app.services.feature_rules import event_problems, spec_of


def settle_status(status: PipelineStatus, events: Sequence[EventDefinition]) -> PipelineStatus:
    """Returns the status after an edit.

    `configuring` means "no events yet": a pipeline without events is always
    configuring, and one that gains its first event becomes `inactive` (never active
    without an explicit activate). `active`/`inactive` are otherwise kept.
    """
    if not events:
        return "configuring"
    return "inactive" if status == "configuring" else status


def activated(events: Sequence[EventDefinition]) -> PipelineStatus:
    """Returns `active`; raises PipelineNotReady if no event is enabled."""
    if not any(e.enabled for e in events):
        raise PipelineNotReady("A pipeline needs at least one enabled event before activation")
    return "active"


def with_event_added(
    events: Sequence[EventDefinition], event: EventDefinition
) -> list[EventDefinition]:
    """Returns the events plus `event`; raises EventNameTaken or ValidationFailed (too many)."""
    if any(e.name == event.name for e in events):
        raise EventNameTaken(f"The pipeline already has an event named {event.name!r}")
    if len(events) >= MAX_EVENTS_PER_PIPELINE:
        raise ValidationFailed(f"A pipeline holds at most {MAX_EVENTS_PER_PIPELINE} events")
    return [*events, event]


def with_event_replaced(
    events: Sequence[EventDefinition], name: str, event: EventDefinition
) -> list[EventDefinition]:
    """Returns the events with `name` replaced by `event` (same position; a rename if the
    names differ); raises EventNotFound or EventNameTaken."""
    index = find_event(events, name)
    if event.name != name and any(e.name == event.name for e in events):
        raise EventNameTaken(f"The pipeline already has an event named {event.name!r}")
    return [*events[:index], event, *events[index + 1 :]]


def with_event_removed(events: Sequence[EventDefinition], name: str) -> list[EventDefinition]:
    """Returns the events without `name`; raises EventNotFound."""
    index = find_event(events, name)
    return [*events[:index], *events[index + 1 :]]


def find_event(events: Sequence[EventDefinition], name: str) -> int:
    """Returns the position of event `name`; raises EventNotFound."""
    for i, event in enumerate(events):
        if event.name == name:
            return i
    raise EventNotFound(f"Event {name!r} not found in this pipeline")


def check_features_still_fit(
    features: Iterable[FeatureRead],
    before: Sequence[EventDefinition],
    after: Sequence[EventDefinition],
    renamed: tuple[str, str] | None = None,
) -> None:
    """Raises EventInUse or FieldInUse if changing the events from `before` to `after`
    would break a feature that fits `before`.

    `renamed` is `(old, new)` for an event rename: features on `old` are judged as if
    they already pointed at `new` (the service moves them along).
    """
    lost_event: list[str] = []
    lost_field: list[str] = []
    for feature in features:
        if feature.kind == "derived":
            continue  # reads served keys, not events (the deploy checks those still exist)
        spec = spec_of(feature)
        if event_problems(spec, before):
            continue  # already broken: not this edit's doing
        if renamed is not None and spec.source_event == renamed[0]:
            spec = replace(spec, source_event=renamed[1])
        problems = event_problems(spec, after)
        if any(p.type == "event_missing" for p in problems):
            lost_event.append(f"{feature.name} (event {feature.source_event})")
        elif problems:
            lost_field.append(f"{feature.name} ({problems[0].msg})")
    if lost_event:
        raise EventInUse(
            "Features use this event as source_event: "
            + ", ".join(sorted(lost_event))
            + ". Delete those features or point them at another event first."
        )
    if lost_field:
        raise FieldInUse(
            "The change breaks features that aggregate these fields: "
            + ", ".join(sorted(lost_field))
        )
