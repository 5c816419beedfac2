"""The rules a feature definition must pass against its pipeline. Pure: no I/O.

The feature service applies them on create/update, the pipeline service re-applies them
to the features of a pipeline being edited (so an edit cannot silently break a feature),
and a test applies them to every template's suggested features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.core.errors import FieldError
from app.schemas.common import USER_ENTITY
from app.schemas.deployment import AggregateFeatureSnapshot, DerivedFeatureSnapshot
from app.schemas.feature import (
    FIELDLESS_AGGREGATIONS,
    MAX_IN_VALUES,
    MAX_SIZE,
    NUMERIC_AGGREGATIONS,
    SIZED_AGGREGATIONS,
    AggregateFeatureBase,
    AggregateFeatureRead,
    Aggregation,
    DerivedFeatureBase,
    DerivedFeatureRead,
    FeatureFilter,
    FilterCondition,
)
from app.schemas.pipeline import EventDefinition, EventField
from app.schemas.template import SuggestedAggregateFeature, SuggestedDerivedFeature
from app.tiles.windows import parse_window

AggregateDefinition = (
    AggregateFeatureBase
    | AggregateFeatureRead
    | AggregateFeatureSnapshot
    | SuggestedAggregateFeature
)
"""An aggregate feature as a request body, a stored document, a snapshot or a template
suggestion."""
AnyDefinition = (
    AggregateDefinition
    | DerivedFeatureBase
    | DerivedFeatureRead
    | DerivedFeatureSnapshot
    | SuggestedDerivedFeature
)


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The parts of a feature the rules read (a request body, a document or a template)."""

    name: str
    source_event: str
    aggregation: Aggregation
    field: str | None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: str | list[str] = USER_ENTITY


def spec_of(feature: AggregateDefinition) -> FeatureSpec:
    """Returns the rule-relevant parts of a feature body, document, deployed snapshot or
    template suggestion."""
    return FeatureSpec(
        name=feature.name,
        source_event=feature.source_event,
        aggregation=feature.aggregation,
        field=feature.field,
        time_windows=list(feature.time_windows),
        size=getattr(feature, "size", None),
        filter=getattr(feature, "filter", None),
        entity=getattr(feature, "entity", USER_ENTITY),
    )


def normalize_windows(windows: Iterable[str]) -> tuple[list[str], list[FieldError]]:
    """Returns the window labels deduplicated and sorted by duration (ties by label), and
    one error per window that does not parse as `<n><m|h|d>` between 1m and 90d.

    Labels are canonical ("05m" → "5m"), so "5m" and "05m" count as one window. "60m" and
    "1h" stay two windows: they are two served keys.
    """
    parsed: dict[str, int] = {}
    errors: list[FieldError] = []
    for i, text in enumerate(windows):
        try:
            window = parse_window(text)
        except ValueError as exc:
            errors.append(FieldError(loc=["body", "time_windows", i], msg=str(exc), type="window"))
            continue
        parsed[window.label] = window.seconds
    labels = sorted(parsed, key=lambda label: (parsed[label], label))
    return labels, errors


def event_problems(spec: FeatureSpec, events: Iterable[EventDefinition]) -> list[FieldError]:
    """Returns why `spec` does not fit the pipeline's `events` (empty if it does).

    The source event must exist; COUNT and RECENCY take no field; every other
    aggregation needs a field of the source event, of type `number` for SUM/AVG/MIN/MAX;
    LAST_N and TOP_K need a `size` (1..50) and no other aggregation takes one; a filter's
    conditions name fields of the event, with values of their types (`filter_problems`);
    an entity other than the user is one the event declares (`entity_problems`).
    """
    event = next((e for e in events if e.name == spec.source_event), None)
    if event is None:
        msg = f"event {spec.source_event!r} does not exist in the pipeline"
        return [FieldError(loc=["body", "source_event"], msg=msg, type="event_missing")]
    problems = _size_problems(spec) + entity_problems(spec.entity, event)
    if spec.filter is not None:
        problems += filter_problems(spec.filter, event)
    return problems + _field_problems(spec, event)


def _size_problems(spec: FeatureSpec) -> list[FieldError]:
    loc: list[str | int] = ["body", "size"]
    if spec.aggregation in SIZED_AGGREGATIONS:
        if spec.size is None or not 1 <= spec.size <= MAX_SIZE:
            msg = f"{spec.aggregation} needs a size between 1 and {MAX_SIZE}"
            return [FieldError(loc=loc, msg=msg, type="size_required")]
    elif spec.size is not None:
        msg = f"{spec.aggregation} takes no size (only LAST_N and TOP_K do)"
        return [FieldError(loc=loc, msg=msg, type="size_not_allowed")]
    return []


def entity_problems(entity: str | list[str], event: EventDefinition) -> list[FieldError]:
    """Returns why `entity` (a feature's) does not fit `event`: every entity but the user
    must be declared by one of the event's fields (`"entity": "<name>"` on the field)."""
    loc: list[str | int]
    if isinstance(entity, str):
        name, loc = entity, ["body", "entity"]
    else:
        name, loc = entity[-1], ["body", "entity", len(entity) - 1]
    if name == USER_ENTITY or any(f.entity == name for f in event.fields):
        return []
    declared = sorted(f.entity for f in event.fields if f.entity is not None)
    msg = (
        f"entity {name!r} is not declared by event {event.name!r} "
        f"(its entity keys: {', '.join(declared) or 'none'}; declare one with "
        '`"entity": "<name>"` on a string or number field)'
    )
    return [FieldError(loc=loc, msg=msg, type="entity_missing")]


def _field_problems(spec: FeatureSpec, event: EventDefinition) -> list[FieldError]:
    if spec.aggregation in FIELDLESS_AGGREGATIONS:
        if spec.field is not None:
            msg = (
                f"{spec.aggregation} counts events and takes no field; omit `field` "
                "or use another aggregation"
            )
            return [FieldError(loc=["body", "field"], msg=msg, type="field_not_allowed")]
        return []
    if spec.field is None:
        msg = f"{spec.aggregation} needs a field of event {spec.source_event!r}"
        return [FieldError(loc=["body", "field"], msg=msg, type="field_required")]
    field = next((f for f in event.fields if f.name == spec.field), None)
    if field is None:
        msg = f"field {spec.field!r} does not exist in event {spec.source_event!r}"
        return [FieldError(loc=["body", "field"], msg=msg, type="field_missing")]
    if spec.aggregation in NUMERIC_AGGREGATIONS and field.type != "number":
        msg = f"{spec.aggregation} needs a number field; {spec.field!r} is {field.type}"
        return [FieldError(loc=["body", "field"], msg=msg, type="field_not_numeric")]
    return []


def _fits(value: object, field: EventField) -> bool:
    """Whether `value` is of the field's type (a timestamp compares as RFC 3339 text)."""
    match field.type:
        case "string" | "timestamp":
            return isinstance(value, str)
        case "number":
            return isinstance(value, int | float) and not isinstance(value, bool)
        case "boolean":
            return isinstance(value, bool)
    return False  # objects are not comparable


def filter_problems(f: FeatureFilter, event: EventDefinition) -> list[FieldError]:
    """Returns why the filter does not fit `event`'s schema: each condition names a field
    of the event, and its value has the field's type (a list of them for in/not_in, a
    boolean or nothing for exists); gt/gte/lt/lte need a number or timestamp field."""
    fields = {x.name: x for x in event.fields}
    problems: list[FieldError] = []
    for i, c in enumerate(f.conditions):
        where: list[str | int] = ["body", "filter", f.mode, i]
        field = fields.get(c.field)
        if field is None:
            msg = f"field {c.field!r} does not exist in event {event.name!r}"
            problems.append(FieldError(loc=[*where, "field"], msg=msg, type="field_missing"))
            continue
        wrong = _condition_problem(c, field)
        if wrong is not None:
            problems.append(FieldError(loc=[*where, "value"], msg=wrong, type="filter_value"))
    return problems


def _condition_problem(c: FilterCondition, field: EventField) -> str | None:
    if c.op == "exists":
        return (
            None if c.value is None or isinstance(c.value, bool) else "exists takes true or false"
        )
    if field.type == "object":
        return f"{c.field!r} is an object: only exists applies to it"
    if c.op in ("in", "not_in"):
        if not isinstance(c.value, list) or not 1 <= len(c.value) <= MAX_IN_VALUES:
            return f"{c.op} takes a list of 1 to {MAX_IN_VALUES} values"
        if not all(_fits(v, field) for v in c.value):
            return f"every value of {c.op} must be a {field.type}, as {c.field!r} is"
        return None
    if c.op in ("gt", "gte", "lt", "lte") and field.type not in ("number", "timestamp"):
        return f"{c.op} compares numbers or timestamps; {c.field!r} is {field.type}"
    if not _fits(c.value, field):
        return f"{c.op} needs a {field.type} value, as {c.field!r} is"
    return None


def served_keys(name: str, windows: Iterable[str]) -> list[str]:
    """Returns the keys serving answers with for this aggregate: `{name}_{window}`."""
    return [f"{name}_{window}" for window in windows]


def served_keys_of(feature: AnyDefinition) -> list[str]:
    """Returns the keys serving answers with for `feature`: `{name}_{window}` of an
    aggregate, `{name}` of a derived feature."""
    if feature.kind == "derived":
        return [feature.name]
    return served_keys(feature.name, feature.time_windows)


def served_key_clashes(
    keys: Iterable[str], others: Iterable[AnyDefinition]
) -> list[tuple[str, str]]:
    """Returns `(key, other feature's name)` for every key of `keys` that another
    feature also serves.

    Aggregates cannot clash with each other while names are unique and windows hold no
    `_`; a derived feature named `cart_adds_5m` would clash with `cart_adds`' 5m window,
    and the check also keeps a wider grammar from making two features overwrite each
    other's values unnoticed.
    """
    owners = {key: other.name for other in others for key in served_keys_of(other)}
    return [(key, owners[key]) for key in keys if key in owners]
