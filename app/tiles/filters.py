"""Feature filters: which events of the source event a feature counts. Pure, no I/O.

A filter is a list of conditions on the event's properties, all of which (`mode`
"all") or any of which ("any") must hold. One condition is `field op value`:

    eq, ne            the property equals / differs from `value` (1 and 1.0 are equal;
                      a number never equals a string or a boolean)
    in, not_in        the property is / is not one of `value` (a list)
    gt, gte, lt, lte  numbers compare as numbers, strings (timestamps) as text; a
                      number never compares with a string
    exists            the property is present and not null (`value` false: absent)

A property that is absent (or null) satisfies only `exists: false`: every other
condition on it is false, `ne` and `not_in` included, as a missing value is not known to
differ. The config API checks each condition against the event's schema (known field,
a value of the field's type) on write and at deploy, so a running filter never meets a
type it was not written for; the rules here still never raise on any input.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Op = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists"]
OPS: tuple[Op, ...] = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists")
ORDERED_OPS = frozenset({"gt", "gte", "lt", "lte"})

Properties = Mapping[str, Any]
Predicate = Callable[[Properties], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: Op
    value: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.value, list):  # hashable, so a filter can key a cache
            object.__setattr__(self, "value", tuple(self.value))


@dataclass(frozen=True, slots=True)
class FeatureFilter:
    """Conditions combined with AND (`mode` "all") or OR ("any")."""

    conditions: tuple[Condition, ...]
    mode: Literal["all", "any"] = "all"

    @property
    def canonical(self) -> str:
        """A stable text of the filter: part of the feature's fingerprint, so a feature
        whose filter changes restarts empty instead of mixing two meanings."""
        return json.dumps(
            [self.mode, [[c.field, c.op, _plain(c.value)] for c in self.conditions]],
            sort_keys=True,
            separators=(",", ":"),
        )

    def compile(self) -> Predicate:
        """Returns the predicate an event's properties must pass (built once per filter)."""
        # Keyed by the canonical text, not the filter: dataclass equality holds 0 == False
        # and 1 == 1.0 == True, so `price gte 0` found `flag gte false`'s compiled test
        # (found by tests/tiles/test_filters.py).
        return _compiled(self.canonical, self)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@functools.lru_cache(maxsize=4096)  # filters of the deployed configs, built once
def _compiled(canonical: str, f: FeatureFilter) -> Predicate:
    tests = [_test(c) for c in f.conditions]
    if len(tests) == 1:
        return tests[0]  # the usual filter: no `all`/`any` and generator per event
    if f.mode == "any":
        return lambda props: any(t(props) for t in tests)
    return lambda props: all(t(props) for t in tests)


def _kind(value: Any) -> str:
    """The comparison family of a value: numbers with numbers, text with text."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"


def _same(a: Any, b: Any) -> bool:
    return _kind(a) == _kind(b) and a == b


def _test(c: Condition) -> Predicate:
    field, op, value = c.field, c.op, c.value
    if op == "exists":
        wanted = value is not False
        return lambda props: (props.get(field) is not None) == wanted
    if op in ("in", "not_in"):
        options: Sequence[Any] = value if isinstance(value, list | tuple) else [value]
        inside = op == "in"

        def member(props: Properties) -> bool:
            got = props.get(field)
            if got is None:
                return False
            return any(_same(got, o) for o in options) == inside

        return member
    if op in ("eq", "ne"):
        equal = op == "eq"

        def compare_eq(props: Properties) -> bool:
            got = props.get(field)
            if got is None:
                return False
            return _same(got, value) == equal

        return compare_eq
    kind = _kind(value)
    check: Callable[[Any, Any], bool] = {
        "gt": operator.gt,
        "gte": operator.ge,
        "lt": operator.lt,
        "lte": operator.le,
    }[op]
    if kind not in ("number", "text"):
        return lambda props: False
    # The exact types JSON gives, told apart without `_kind`'s isinstance chain (bool is
    # its own type, so True never passes as a number); any other type goes through it.
    fast = (int, float) if kind == "number" else (str,)

    def ordered(props: Properties) -> bool:
        got = props.get(field)
        if type(got) in fast:
            return check(got, value)
        if got is None or _kind(got) != kind:
            return False
        return check(got, value)

    return ordered
