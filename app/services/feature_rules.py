"""The rules a feature definition must pass against its pipeline. Pure: no I/O.

The feature service applies them on create/update, the pipeline service re-applies them
to the features of a pipeline being edited (so an edit cannot silently break a feature),
and a test applies them to every template's suggested features.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from app.core.errors import FieldError
from app.schemas.deployment import FeatureSnapshot
from app.schemas.feature import NUMERIC_AGGREGATIONS, Aggregation, FeatureBase, FeatureRead
from app.schemas.pipeline import EventDefinition
from app.schemas.template import SuggestedFeature
from app.tiles.windows import parse_window


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """The parts of a feature the rules read (a request body, a document or a template)."""

    name: str
    source_event: str
    aggregation: Aggregation
    field: str | None
    time_windows: list[str]


def spec_of(
    feature: FeatureBase | FeatureRead | FeatureSnapshot | SuggestedFeature,
) -> FeatureSpec:
    """Returns the rule-relevant parts of a feature body, document, deployed snapshot or
    template suggestion."""
    return FeatureSpec(
        name=feature.name,
        source_event=feature.source_event,
        aggregation=feature.aggregation,
        field=feature.field,
        time_windows=list(feature.time_windows),
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

    The source event must exist; COUNT takes no field; every other aggregation needs a
    field of the source event, of type `number` for SUM/AVG/MIN/MAX.
    """
    event = next((e for e in events if e.name == spec.source_event), None)
    if event is None:
        msg = f"event {spec.source_event!r} does not exist in the pipeline"
        return [FieldError(loc=["body", "source_event"], msg=msg, type="event_missing")]
    if spec.aggregation == "COUNT":
        if spec.field is not None:
            msg = "COUNT counts events and takes no field; omit `field` or use another aggregation"
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


def served_keys(name: str, windows: Iterable[str]) -> list[str]:
    """Returns the keys serving answers with for this feature: `{name}_{window}`."""
    return [f"{name}_{window}" for window in windows]


def served_key_clashes(
    name: str, windows: Iterable[str], others: Iterable[FeatureSpec]
) -> list[tuple[str, str]]:
    """Returns `(key, other feature's name)` for every served key of `name`/`windows` that
    another feature also produces.

    With unique feature names and windows that hold no `_`, two features cannot produce
    the same key today; the check stays so that a wider window or name grammar can never
    make two features overwrite each other's values unnoticed.
    """
    owners = {
        key: other.name for other in others for key in served_keys(other.name, other.time_windows)
    }
    return [(key, owners[key]) for key in served_keys(name, windows) if key in owners]
