"""Validating events against the DEPLOYED config: pure functions, no I/O.

A deployed snapshot is compiled once per (project, version) into dict lookups and one
checker function per property, so the hot path never walks the snapshot's lists nor builds
a pydantic model per event.

Rules (DESIGN.md "Events in"):
- pipeline unknown → PipelineNotFound (404); not `active` → PipelineInactive (409);
- event unknown or disabled → UnknownEvent (422);
- timestamp more than `max_future_ms` ahead of the receive time → EventInFuture (422);
  old events are accepted (compute decides what still counts);
- properties: required ones present and not null; `number` = int or float, not bool,
  finite, integers within ±(2^53-1); `string` = Unicode text; `boolean`; `timestamp` =
  RFC 3339 or epoch ms (normalised to epoch ms); `object` = a JSON object at most
  MAX_OBJECT_DEPTH deep whose numbers and strings obey the same rules; unknown
  properties are rejected or dropped (`INGEST_UNKNOWN_PROPERTIES`); `null` for an
  optional property means absent → InvalidEvent (422) listing every field path;
- an entity key (a field with `entity`): a `string` one takes 1-128 printable
  characters, a `number` one safe integers only (`entity_id_problem`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.core.errors import (
    EventInFuture,
    FieldError,
    PipelineInactive,
    PipelineNotFound,
    UnknownEvent,
)
from app.schemas.deployment import ConfigSnapshot
from app.schemas.event import (
    Envelope,
    check_json_value,
    check_number,
    entity_id_problem,
    field_error,
    invalid,
    is_clean_text,
    loc_key,
    parse_timestamp,
    shown,
)
from app.schemas.pipeline import FieldType
from runtime.ingestion.lateness import EventLateness, compile_lateness

UnknownPolicy = Literal["reject", "drop"]


class _Bad(Exception):
    """A property value that does not fit its declared type (internal control flow)."""

    def __init__(self, error: FieldError) -> None:
        self.error = error


# A checker returns the value to store (maybe normalised) or raises _Bad.
Checker = Callable[[Any, list[str | int]], Any]


def _number(value: Any, loc: list[str | int]) -> Any:
    why = check_number(value)
    if why is not None:
        raise _Bad(
            field_error(loc, why, "wrong_type" if why == "must be a number" else "out_of_range")
        )
    return value


def _string(value: Any, loc: list[str | int]) -> Any:
    if type(value) is not str:
        raise _Bad(field_error(loc, "must be a string", "wrong_type"))
    if not is_clean_text(value):
        raise _Bad(field_error(loc, "is not valid Unicode text (lone surrogate)", "invalid_text"))
    return value


def _boolean(value: Any, loc: list[str | int]) -> Any:
    if type(value) is not bool:
        raise _Bad(field_error(loc, "must be a boolean", "wrong_type"))
    return value


def _timestamp(value: Any, loc: list[str | int]) -> Any:
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise _Bad(field_error(loc, str(exc), "wrong_type")) from None


def _object(value: Any, loc: list[str | int]) -> Any:
    if type(value) is not dict:
        raise _Bad(field_error(loc, "must be an object", "wrong_type"))
    problem = check_json_value(value, loc, 1)
    if problem is not None:
        raise _Bad(problem)
    return value


def _entity_id(value: Any, loc: list[str | int]) -> Any:
    # An entity key's value becomes a record's id: checked here, so compute never meets
    # one it cannot key (a float, an empty or control-character string).
    why = entity_id_problem(value)
    if why is not None:
        raise _Bad(field_error(loc, why, "invalid_entity_id"))
    return value


def _entity_text(value: Any, loc: list[str | int]) -> Any:
    return _entity_id(_string(value, loc), loc)


def _entity_integer(value: Any, loc: list[str | int]) -> Any:
    if type(value) is not int:
        raise _Bad(field_error(loc, "must be an integer (an entity key)", "wrong_type"))
    return _entity_id(value, loc)


# The checker of an entity key, by the field's type (only these two can be keys).
ENTITY_CHECKERS: dict[str, Checker] = {"string": _entity_text, "number": _entity_integer}


CHECKERS: dict[FieldType, Checker] = {
    "number": _number,
    "string": _string,
    "boolean": _boolean,
    "timestamp": _timestamp,
    "object": _object,
}


@dataclass(frozen=True, slots=True)
class CompiledEvent:
    name: str
    enabled: bool
    checkers: dict[str, Checker]
    required: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledPipeline:
    id: str
    name: str
    status: str
    events: dict[str, CompiledEvent]


@dataclass(frozen=True, slots=True)
class CompiledConfig:
    project_id: str
    version: int
    pipelines: dict[str, CompiledPipeline]
    # Which accepted events count in no feature (built with the rest, once per version).
    lateness: EventLateness

    def pipeline(self, pipeline_id: str) -> CompiledPipeline:
        """Returns the active pipeline; raises PipelineNotFound or PipelineInactive."""
        pipeline = self.pipelines.get(pipeline_id)
        if pipeline is None:
            raise PipelineNotFound(
                f"Pipeline {pipeline_id!r} is not in project {self.project_id!r}'s deployed "
                f"config (version {self.version})"
            )
        if pipeline.status != "active":
            raise PipelineInactive(
                f"Pipeline {pipeline_id!r} is {pipeline.status} in the deployed config "
                f"(version {self.version}); activate it and deploy to ingest events"
            )
        return pipeline


def compile_snapshot(snapshot: ConfigSnapshot) -> CompiledConfig:
    """Returns the lookup tables validation needs for one deployed snapshot."""
    pipelines: dict[str, CompiledPipeline] = {}
    for p in snapshot.pipelines:
        events = {
            e.name: CompiledEvent(
                name=e.name,
                enabled=e.enabled,
                checkers={
                    f.name: CHECKERS[f.type] if f.entity is None else ENTITY_CHECKERS[f.type]
                    for f in e.fields
                },
                required=tuple(f.name for f in e.fields if f.required),
            )
            for e in p.events
        }
        pipelines[p.id] = CompiledPipeline(id=p.id, name=p.name, status=p.status, events=events)
    return CompiledConfig(
        snapshot.project_id, snapshot.version, pipelines, compile_lateness(snapshot)
    )


class CompiledCache:
    """Compiled configs per project, recompiled when the deployed version changes."""

    def __init__(self) -> None:
        self._by_project: dict[str, CompiledConfig] = {}

    def get(self, snapshot: ConfigSnapshot) -> CompiledConfig:
        """Returns the compiled form of `snapshot` (compiled at most once per version)."""
        compiled = self._by_project.get(snapshot.project_id)
        if compiled is None or compiled.version != snapshot.version:
            compiled = compile_snapshot(snapshot)
            self._by_project[snapshot.project_id] = compiled
        return compiled


@dataclass(frozen=True, slots=True)
class ValidEvent:
    """An event that fits the deployed schema, ready to become an EventMessage."""

    event: str
    user_id: str
    event_id: str | None
    event_time_ms: int
    properties: dict[str, Any]


def validate_event(
    pipeline: CompiledPipeline,
    envelope: Envelope,
    *,
    now_ms: int,
    max_future_ms: int,
    unknown_properties: UnknownPolicy,
) -> ValidEvent:
    """Returns the event with its properties checked (timestamps normalised, nulls and, with
    the `drop` policy, unknown properties removed).

    Raises UnknownEvent, EventInFuture, or InvalidEvent listing every bad property.
    """
    spec = pipeline.events.get(envelope.event)
    if spec is None:
        raise UnknownEvent(
            f"Event {shown(envelope.event)} is not defined in pipeline {pipeline.name!r}",
            fields=[field_error(["event"], "is not a deployed event", "unknown")],
        )
    if not spec.enabled:
        raise UnknownEvent(
            f"Event {envelope.event!r} is disabled in pipeline {pipeline.name!r}",
            fields=[field_error(["event"], "is disabled", "disabled")],
        )

    event_time_ms = envelope.timestamp_ms if envelope.timestamp_ms is not None else now_ms
    if event_time_ms > now_ms + max_future_ms:
        ahead = (event_time_ms - now_ms) // 1000
        raise EventInFuture(
            f"timestamp is {ahead} s in the future; at most {max_future_ms // 1000} s is "
            "allowed (check the sender's clock)",
            fields=[field_error(["timestamp"], "is in the future", "in_future")],
        )

    properties, errors = _check_properties(spec, envelope.properties, unknown_properties)
    if errors:
        raise invalid(errors)
    return ValidEvent(
        envelope.event, envelope.user_id, envelope.event_id, event_time_ms, properties
    )


def _check_properties(
    spec: CompiledEvent, given: dict[str, Any], unknown: UnknownPolicy
) -> tuple[dict[str, Any], list[FieldError]]:
    checkers = spec.checkers
    out: dict[str, Any] = {}
    errors: list[FieldError] = []
    for key, value in given.items():
        check = checkers.get(key)
        if check is None:
            if unknown == "reject":
                errors.append(
                    field_error(
                        ["properties", loc_key(key)], "is not a field of this event", "unknown"
                    )
                )
            continue
        if value is None:
            continue  # null = absent; a required one is reported below
        try:
            out[key] = check(value, ["properties", key])
        except _Bad as bad:
            errors.append(bad.error)
    for name in spec.required:
        if name not in out and given.get(name) is None:
            errors.append(field_error(["properties", name], "is required", "missing"))
    return out, errors
