"""A feature filter (`app/tiles/filters.py`) as a ClickHouse condition on the archive's
`properties` JSON text, so rebuilds and training sets filter where the events are.

`app/tiles/filters.py` is the definition; this is its translation, condition by
condition, and `tests/db/test_filter_sql.py` proves with hypothesis (against the pure
predicate, on chDB) that both accept the same events. The one difference left: numbers
compare as 64-bit floats here, as Python compares them exactly, so integers beyond
2**53 may compare differently (JSON numbers past that are not exact in most senders
either).

A property that is absent or JSON null has `JSONType` 'Null', which is Python's
`props.get(field) is None`; kinds map as `_kind` does: 'Bool' is bool, 'Int64',
'UInt64' and 'Double' are numbers, 'String' is text, the rest never compares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.tiles.filters import Condition, FeatureFilter
from app.tiles.filters import _kind as _kind  # the same comparison families

_NUMBER_TYPES = "('Int64', 'UInt64', 'Double')"
_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class FilterSql:
    """Builds the condition of one or more filters, collecting their bound parameters;
    `prefix` keeps the parameter names of two builders in one query apart."""

    def __init__(self, prefix: str = "flt", properties: str = "properties") -> None:
        self._prefix = prefix
        self._properties = properties
        self.params: dict[str, Any] = {}

    def condition(self, feature_filter: FeatureFilter | None) -> str:
        """Returns the SQL that is true for the events `feature_filter` accepts ("1"
        when None)."""
        if feature_filter is None:
            return "1"
        parts = [self._condition(c) for c in feature_filter.conditions]
        if not parts:
            return "1" if feature_filter.mode == "all" else "0"
        joiner = " AND " if feature_filter.mode == "all" else " OR "
        return f"({joiner.join(parts)})"

    def _bind(self, value: Any, kind: str) -> str:
        name = f"{self._prefix}{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{kind}}}"

    def _condition(self, c: Condition) -> str:
        field = self._bind(c.field, "String")
        typ = f"JSONType({self._properties}, {field})"
        present = f"{typ} != 'Null'"
        if c.op == "exists":
            return f"({present})" if c.value is not False else f"({typ} = 'Null')"
        if c.op in ("eq", "ne"):
            same = self._same(typ, field, c.value)
            return f"({present} AND {'' if c.op == 'eq' else 'NOT '}{same})"
        if c.op in ("in", "not_in"):
            options: Sequence[Any] = c.value if isinstance(c.value, list | tuple) else [c.value]
            member = " OR ".join(self._same(typ, field, o) for o in options) or "0"
            return f"({present} AND {'' if c.op == 'in' else 'NOT '}({member}))"
        sign = _COMPARE[c.op]
        kind = _kind(c.value)
        if kind == "number":
            number = self._bind(float(c.value), "Float64")
            extracted = f"JSONExtractFloat({self._properties}, {field})"
            return f"({typ} IN {_NUMBER_TYPES} AND {extracted} {sign} {number})"
        if kind == "text":
            text = self._bind(c.value, "String")
            extracted = f"JSONExtractString({self._properties}, {field})"
            return f"({typ} = 'String' AND {extracted} {sign} {text})"
        return "0"  # `_test`: a bool or null bound never orders anything

    def _same(self, typ: str, field: str, value: Any) -> str:
        """`_same(got, value)` for a present `got`."""
        kind = _kind(value)
        if kind == "bool":
            return (
                f"({typ} = 'Bool' AND JSONExtractBool({self._properties}, {field}) = {int(value)})"
            )
        if kind == "number":
            number = self._bind(float(value), "Float64")
            extracted = f"JSONExtractFloat({self._properties}, {field})"
            return f"({typ} IN {_NUMBER_TYPES} AND {extracted} = {number})"
        if kind == "text":
            text = self._bind(value, "String")
            return f"({typ} = 'String' AND JSONExtractString({self._properties}, {field}) = {text})"
        return "0"
