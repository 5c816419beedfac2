"""The rules a derived feature's expression must pass. Pure: no I/O.

An expression reads served keys of per-user aggregate features of the same project
(the user's answer it is evaluated in), each a single number: COUNT, SUM, AVG, MIN,
MAX, COUNT_DISTINCT, RECENCY, and LAST/FIRST of a `number` field (LAST_N and TOP_K
serve lists). A derived feature never reads another
derived feature: depth is one, so there is no cycle to look for, and evaluation order
does not matter (a longer formula is written out in one expression, up to the limits of
`app.tiles.derived`). The feature API applies these rules on write (against the draft),
the deploy validation again against what would run, and a delete or update that would
break a derived feature is refused (409 FeatureInUse).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.core.errors import FieldError
from app.schemas.common import USER_ENTITY
from app.schemas.feature import NUMBER_VALUED_AGGREGATIONS
from app.schemas.pipeline import EventDefinition
from app.tiles.derived import Expression, ExpressionError, parse, references


@dataclass(frozen=True, slots=True)
class ServedValue:
    """What serves one key: its feature, and why an expression may not read it (None:
    it may)."""

    feature: str
    refused: str | None


class AggregateLike(Protocol):
    """The parts of an aggregate feature the catalogue reads (a body, a document, a
    snapshot or a template suggestion all have them)."""

    @property
    def name(self) -> str: ...
    @property
    def source_event(self) -> str: ...
    @property
    def aggregation(self) -> str: ...
    @property
    def field(self) -> str | None: ...
    @property
    def time_windows(self) -> list[str]: ...
    @property
    def entity(self) -> str | list[str]: ...


A = TypeVar("A", bound=AggregateLike)


def _refusal(feature: A, event_of: Callable[[A], EventDefinition | None]) -> str | None:
    aggregation = feature.aggregation
    if feature.entity != USER_ENTITY:
        # The user's answer holds per-user values only; a derived feature of another
        # entity would read that entity's answer, which serving does not evaluate yet.
        return f"it is aggregated per {feature.entity}, not per user"
    if aggregation not in NUMBER_VALUED_AGGREGATIONS:
        return f"{aggregation} serves a list, not a number"
    if aggregation in ("LAST", "FIRST"):
        event = event_of(feature)
        field = next((f for f in event.fields if f.name == feature.field), None) if event else None
        if field is None or field.type != "number":
            kind = field.type if field else "unknown"
            return f"{aggregation} of {feature.field!r} serves a {kind}, not a number"
    return None


def catalogue(
    aggregates: Iterable[A],
    derived: Iterable[str],
    event_of: Callable[[A], EventDefinition | None],
) -> dict[str, ServedValue]:
    """Returns every served key of the given features: `{name}_{window}` of each
    aggregate (windows as written; they are canonical once saved), `{name}` of each
    derived feature (refused: derived features read aggregates only). `event_of` finds
    an aggregate's source event (for the type of a LAST/FIRST field)."""
    keys: dict[str, ServedValue] = {}
    for f in aggregates:
        refused = _refusal(f, event_of)
        for window in f.time_windows:
            keys[f"{f.name}_{window}"] = ServedValue(f.name, refused)
    for name in derived:
        keys[name] = ServedValue(name, "it is a derived feature (derived features read aggregates)")
    return keys


def expression_problems(
    text: str, keys: Mapping[str, ServedValue], loc: list[str | int]
) -> tuple[Expression | None, list[FieldError]]:
    """Returns (the parsed expression, []) when `text` parses and reads only served
    number-valued keys of `keys`; else (None or the expression, one error per problem,
    each naming the position in `text`)."""
    try:
        expression = parse(text)
    except ExpressionError as exc:
        msg = f"{exc.message} at position {exc.position}"
        return None, [FieldError(loc=loc, msg=msg, type="expression_syntax")]
    problems: list[FieldError] = []
    seen: set[str] = set()
    for ref in references(expression.tree):
        if ref.key in seen:
            continue
        seen.add(ref.key)
        served = keys.get(ref.key)
        where = f"{ref.key!r} at position {ref.position}"
        if served is None:
            msg = f"{where} is not a served key of this project (`<feature>_<window>`)"
            problems.append(FieldError(loc=loc, msg=msg, type="reference_missing"))
        elif served.refused is not None:
            msg = f"{where} cannot be read: {served.refused}"
            problems.append(FieldError(loc=loc, msg=msg, type="reference_not_number"))
    return expression, problems


def dependents(
    derived: Iterable[tuple[str, str]], keys: Iterable[str]
) -> list[tuple[str, list[str]]]:
    """Returns (derived feature name, the keys among `keys` it reads) for each
    `(name, expression)` in `derived` that reads any of `keys` (an unparsable
    expression reads nothing)."""
    wanted = set(keys)
    out: list[tuple[str, list[str]]] = []
    for name, text in derived:
        try:
            read = [k for k in parse(text).keys if k in wanted]
        except ExpressionError:
            continue
        if read:
            out.append((name, read))
    return out
