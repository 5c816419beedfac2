"""Events: the storefront's envelope (what ingestion parses) and the Kafka message (what
compute decodes).

Inbound envelope, one JSON object per event:

    {"event": "add_to_cart", "user_id": "u-42", "timestamp": "2025-05-01T12:00:00Z",
     "event_id": "evt-1", "properties": {"price": 9.5}}

`timestamp` (RFC 3339 with an offset, or epoch milliseconds as an integer) and `event_id`
are optional; `null` means absent. Any other top-level key is an error.

The envelope is parsed by hand from `json.loads` output instead of a pydantic model: the
body was already size-checked as raw bytes, error messages must carry a precise field path,
and this is the hot path of ingestion.

The Kafka value (`EventMessage`) is compact JSON (no whitespace, UTF-8) with the full field
names below; `EventMessage.decode` validates it back.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field

from app.core.errors import FieldError, InvalidEvent, MalformedJSON

# User ids become Kafka keys, Aerospike keys and log fields: a conservative alphabet, and
# never a leading `.` or `$` (path tricks, MongoDB operators).
USER_ID_PATTERN = r"^[A-Za-z0-9_:@+=-][A-Za-z0-9._:@+=-]{0,127}$"
_USER_ID_RE = re.compile(USER_ID_PATTERN)
MAX_EVENT_ID_LENGTH = 128
# Entity ids (a `product_id` property's values) come from catalogues, so they are free
# text: 1-128 printable characters, or safe integers (read back as their decimal text).
# They never reach a store key as written: `app/tiles/entities.py` percent-encodes them.
MAX_ENTITY_ID_LENGTH = 128
# Integers outside ±(2^53 - 1) do not survive a trip through a double (I-JSON, RFC 7493).
MAX_SAFE_INTEGER = 2**53 - 1
# Epoch milliseconds up to 9999-12-31T23:59:59.999Z.
MAX_TIMESTAMP_MS = 253_402_300_799_999
# Nesting allowed inside an `object` property (the property itself is level 1).
MAX_OBJECT_DEPTH = 16

_RFC3339_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$"
)
_ENVELOPE_KEYS = frozenset({"event", "user_id", "timestamp", "event_id", "properties"})
_SHOWN_CHARS = 64


def shown(value: object) -> str:
    """Returns a short, escaped rendering of untrusted input for error details."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def loc_key(key: str) -> str:
    """Returns a dict key as it appears in a field path: itself if it is printable and of
    reasonable length, else its escaped, truncated rendering."""
    return key if len(key) <= _SHOWN_CHARS and key.isprintable() else shown(key)


def field_error(loc: list[str | int], msg: str, kind: str) -> FieldError:
    """Returns one FieldError (a shorthand used by the parsers)."""
    return FieldError(loc=loc, msg=msg, type=kind)


def invalid(errors: list[FieldError], prefix: str = "") -> InvalidEvent:
    """Returns an InvalidEvent whose detail names the first problem and counts the rest."""
    first = errors[0]
    where = ".".join(str(p) for p in first.loc)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return InvalidEvent(f"{prefix}{where}: {first.msg}{more}", fields=errors)


# -- JSON ------------------------------------------------------------------------------------
def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str) -> Any:
    """Returns the parsed document.

    Raises MalformedJSON for a syntax error (with line and column), NaN/Infinity literals,
    integers too long for Python to parse, and nesting deeper than the parser's recursion
    limit. Numbers that overflow to infinity (`1e400`) parse; the validators reject them
    wherever they sit.
    """
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise MalformedJSON(
            f"Body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise MalformedJSON("Body is not accepted: JSON nesting is too deep") from None
    except ValueError as exc:  # NaN/Infinity, or an integer with thousands of digits
        raise MalformedJSON(f"Body is not accepted: {exc}") from None


# -- values ------------------------------------------------------------------------------------
def parse_timestamp(value: object) -> int:
    """Returns epoch milliseconds for an RFC 3339 string (with offset) or an epoch-ms integer.

    Raises ValueError with a human message for anything else (bools, floats, naive times,
    out-of-range values).
    """
    if type(value) is int:
        if 0 <= value <= MAX_TIMESTAMP_MS:
            return value
        raise ValueError("must be epoch milliseconds between 0 and year 9999")
    if type(value) is str:
        if not _RFC3339_RE.fullmatch(value):
            raise ValueError(
                "must be an RFC 3339 date-time with an offset (e.g. 2025-05-01T12:00:00Z) "
                "or epoch milliseconds"
            )
        try:
            parsed = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"is not a valid date-time: {exc}") from None
        ms = math.floor(parsed.astimezone(UTC).timestamp() * 1000)
        if not 0 <= ms <= MAX_TIMESTAMP_MS:
            raise ValueError("must be after 1970-01-01T00:00:00Z")
        return ms
    raise ValueError("must be an RFC 3339 string or epoch milliseconds (integer)")


def is_clean_text(value: str) -> bool:
    """Returns False if the string holds a lone surrogate (a `\\ud800` escape with no pair),
    which is not Unicode text and cannot be written as UTF-8 downstream."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_number(value: object) -> str | None:
    """Returns None if `value` is a finite JSON number in the safe range, else why not."""
    kind = type(value)
    if kind is float:
        return None if math.isfinite(value) else "must be a finite number"  # type: ignore[arg-type]
    if kind is int:
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:  # type: ignore[operator]
            return None
        return "is outside the safe integer range ±(2^53-1)"
    return "must be a number"


def check_json_value(value: object, loc: list[str | int], depth: int = 1) -> FieldError | None:
    """Returns the first problem inside a free-form JSON value (an `object` property), or
    None: nesting deeper than MAX_OBJECT_DEPTH, non-finite or unsafe numbers, lone
    surrogates in strings or keys. `loc` is the value's own path, `depth` its level."""
    found = _first_problem(value, depth)
    if found is None:
        return None
    path, msg, kind = found
    path.reverse()  # built from the innermost value outwards
    return field_error([*loc, *path], msg, kind)


def _first_problem(value: object, depth: int) -> tuple[list[str | int], str, str] | None:
    if isinstance(value, str):
        if is_clean_text(value):
            return None
        return [], "is not valid Unicode text (lone surrogate)", "invalid_text"
    if isinstance(value, int | float) and not isinstance(value, bool):
        why = check_number(value)
        return ([], why, "out_of_range") if why else None
    if isinstance(value, dict | list):
        if depth > MAX_OBJECT_DEPTH:
            return [], f"nests deeper than {MAX_OBJECT_DEPTH} levels", "too_deep"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and not is_clean_text(key):
                return [loc_key(key)], "key is not valid Unicode text", "invalid_text"
            found = _first_problem(item, depth + 1)
            if found is not None:
                found[0].append(loc_key(key) if isinstance(key, str) else key)
                return found
    return None  # bool or None


def entity_id_problem(value: object) -> str | None:
    """Returns why `value` cannot be an entity id (None when it can): a string of 1-128
    printable characters (Unicode text), or an integer in the safe range."""
    if type(value) is int:
        return check_number(value)
    if type(value) is not str:
        return "must be a string or an integer (an entity key)"
    if not 0 < len(value) <= MAX_ENTITY_ID_LENGTH or not value.isprintable():
        return f"must be 1-{MAX_ENTITY_ID_LENGTH} printable characters (an entity key)"
    if not is_clean_text(value):
        return "is not valid Unicode text (lone surrogate)"
    return None


# -- envelope ----------------------------------------------------------------------------------
@dataclass(slots=True)
class Envelope:
    """One inbound event after its structure was checked (not yet its schema)."""

    event: str
    user_id: str
    timestamp_ms: int | None
    event_id: str | None
    properties: dict[str, Any]


def parse_envelope(obj: object) -> Envelope:
    """Returns the envelope; raises InvalidEvent listing every structural problem.

    Checks: an object with only the known keys; `event` a string; `user_id` matching
    USER_ID_PATTERN; `timestamp` parseable; `event_id` 1..128 printable characters;
    `properties` an object. Schema rules (which events and properties) are the validator's.
    """
    if type(obj) is not dict:
        raise InvalidEvent(
            "An event must be a JSON object",
            fields=[field_error([], "must be an object", "wrong_type")],
        )
    errors: list[FieldError] = []
    for key in obj:
        if key not in _ENVELOPE_KEYS:
            errors.append(field_error([loc_key(key)], "is not an envelope field", "unknown"))

    event = obj.get("event")
    if type(event) is not str:
        errors.append(_missing_or_wrong("event", event, "must be a string"))

    user_id = obj.get("user_id")
    if type(user_id) is not str:
        errors.append(_missing_or_wrong("user_id", user_id, "must be a string"))
    elif not _USER_ID_RE.fullmatch(user_id):
        errors.append(
            field_error(
                ["user_id"],
                "must be 1-128 characters of A-Z a-z 0-9 . _ : @ + = - not starting with '.'",
                "invalid_format",
            )
        )

    timestamp_ms: int | None = None
    raw_ts = obj.get("timestamp")
    if raw_ts is not None:
        try:
            timestamp_ms = parse_timestamp(raw_ts)
        except ValueError as exc:
            errors.append(field_error(["timestamp"], str(exc), "invalid_format"))

    event_id = obj.get("event_id")
    if event_id is not None and (
        type(event_id) is not str
        or not 0 < len(event_id) <= MAX_EVENT_ID_LENGTH
        or not event_id.isprintable()
    ):
        errors.append(
            field_error(
                ["event_id"],
                f"must be a string of 1-{MAX_EVENT_ID_LENGTH} printable characters",
                "invalid_format",
            )
        )

    properties = obj.get("properties")
    if type(properties) is not dict:
        errors.append(_missing_or_wrong("properties", properties, "must be an object"))

    if errors:
        raise invalid(errors)
    return Envelope(event, user_id, timestamp_ms, event_id, properties)  # type: ignore[arg-type]


def _missing_or_wrong(name: str, value: object, msg: str) -> FieldError:
    if value is None:
        return field_error([name], "is required", "missing")
    return field_error([name], msg, "wrong_type")


# -- HTTP shapes (documentation and clients) --------------------------------------------------
class EventEnvelopeDoc(BaseModel):
    """One event as a storefront sends it (documents the raw body parsed by hand above)."""

    model_config = ConfigDict(extra="forbid", title="EventEnvelope")

    event: str = Field(description="Event name, as deployed", examples=["add_to_cart"])
    user_id: str = Field(pattern=USER_ID_PATTERN, examples=["u-42"])
    timestamp: str | int | None = Field(
        default=None,
        description="Event time: RFC 3339 with offset, or epoch milliseconds; defaults to "
        "the receive time; at most 5 minutes in the future",
        examples=["2025-05-01T12:00:00Z"],
    )
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EVENT_ID_LENGTH,
        description="Dedup key: an id seen in the last 24 h is acknowledged, not produced",
    )
    properties: dict[str, Any] = Field(
        description="Checked against the deployed event's fields", examples=[{"price": 9.5}]
    )


_LATE = (
    "Of the accepted events, those older than every window of the deployed features they "
    "feed (the longest window plus at most one tile of 1/60 of it): archived, but counted "
    "in no feature"
)


class SingleIngestResponse(BaseModel):
    accepted: int = Field(description="1 if produced now, 0 if a duplicate")
    duplicates: int = Field(description="1 if the event id was seen in the last 24 h")
    late: int = Field(description=_LATE)
    event_id: str = Field(description="The event's id (the webhook-id when none was given)")


class BatchRejection(BaseModel):
    index: int = Field(description="Position of the event in `events`")
    error: str = Field(
        description="The error name; all are permanent except `EventInFlight` (another "
        "request is producing this event id: resend it later, in a new delivery)",
        examples=["InvalidEvent"],
    )
    detail: str
    fields: list[FieldError] | None = None


class BatchIngestResponse(BaseModel):
    accepted: int = Field(description="Events produced by this request")
    duplicates: int = Field(description="Events already seen (24 h) or repeated in the batch")
    late: int = Field(description=_LATE)
    rejected: list[BatchRejection]


# -- Kafka message -----------------------------------------------------------------------------
class EventMessage(BaseModel):
    """The Kafka record value for one accepted event (key: `{project_id}:{user_id}`).

    `event_id` is the envelope's, else the webhook-id (single event), else
    `{webhook-id}:{index}` (batch item): always set, so consumers can dedup. Timestamp
    properties are normalised to epoch milliseconds. `version` is the deployment version
    the event was validated against.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    project_id: str
    pipeline_id: str
    event: str
    user_id: str
    event_id: str
    event_time_ms: int = Field(description="Event time (envelope timestamp or receive time)")
    received_at_ms: int
    version: int = Field(description="Deployment version used to validate the event")
    properties: dict[str, Any]

    def encode(self) -> bytes:
        """Returns the compact UTF-8 JSON value written to Kafka."""
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, value: bytes) -> EventMessage:
        """Returns the message; raises pydantic.ValidationError if `value` is not one."""
        return cls.model_validate_json(value)


def record_key(project_id: str, user_id: str) -> bytes:
    """Returns the Kafka key that keeps one user's events in one partition, in order."""
    return f"{project_id}:{user_id}".encode()
