"""What serving precomputes once per deployed (project, version): the feature specs, the
empty answer, and the sub-specs of each feature selection.

Built once when a version is first read, so the hot path does no parsing, no pydantic
model construction and no per-key work beyond the tile merge itself. Derived features
are compiled here too (`app.tiles.derived`): a selection evaluates them after the merge,
in the same answer; selecting a derived feature alone merges the keys it reads and
leaves them out of the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.tiles.derived import DerivedSpec, with_derived
from app.tiles.features import FeatureSpec
from app.tiles.merge import Merger
from app.tiles.windows import Window

# Distinct `?features=` selections remembered per version. Callers use a handful of
# fixed selections; a client sending ever-new ones must not grow memory without bound
# (past the limit selections are still answered, just built on every request).
MAX_CACHED_SELECTIONS = 256


class UnknownFeatureKeys(ValueError):
    """A selection named keys the deployed config does not serve; `.keys` lists them."""

    def __init__(self, keys: Sequence[str]) -> None:
        super().__init__(", ".join(keys))
        self.keys = list(keys)


@dataclass(slots=True)
class Selection:
    """The specs to merge, the derived features to evaluate after, and the answer for a
    user without a record.

    `specs` hold only the selected windows of the selected features (plus those a
    selected derived feature reads, listed in `hidden`), so merging them, adding
    `derived` and dropping `hidden` yields exactly the keys of `empty`, in order.
    """

    specs: tuple[FeatureSpec, ...]
    empty: dict[str, Any]
    derived: tuple[DerivedSpec, ...] = ()
    hidden: tuple[str, ...] = ()
    _merger: Merger | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.empty)

    def merger(self, now_ms: int) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """Returns the merge of a record at `now_ms` (the Merger of these specs is
        reused while it covers `now_ms`), derived features evaluated."""
        merger = self._merger
        if merger is None or not merger.covers(now_ms):
            merger = self._merger = Merger(self.specs, now_ms)
        merge = merger.at(now_ms)
        if not self.derived:
            return merge
        derived, hidden = self.derived, self.hidden
        return lambda record: with_derived(merge(record), derived, hidden)


def _selection(
    specs: Iterable[FeatureSpec],
    derived: tuple[DerivedSpec, ...] = (),
    hidden: tuple[str, ...] = (),
) -> Selection:
    specs = tuple(specs)
    # A user x entity feature (`key` set) serves {key value: value}: empty, none.
    empty = {
        f"{spec.name}_{w.label}": spec.aggregator.empty() if spec.key is None else {}
        for spec in specs
        for w in spec.windows
    }
    # The derived values of a user without a record: those of the empty values (a
    # count of 0 over a count of 0 is null, `coalesce(..., 0)` is 0).
    empty = with_derived(empty, derived, hidden)
    return Selection(specs=specs, empty=empty, derived=derived, hidden=hidden)


@dataclass(slots=True)
class ServingPlan:
    """Everything serving needs to answer for one deployed version of a project."""

    project_id: str
    version: int
    all: Selection
    # served key -> (index of its spec in `all.specs`, window)
    _where: dict[str, tuple[int, Window]] = field(default_factory=dict)
    # derived feature name (its served key) -> its spec
    _derived: dict[str, DerivedSpec] = field(default_factory=dict)
    _cache: dict[tuple[str, ...], Selection] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        project_id: str,
        version: int,
        specs: Iterable[FeatureSpec],
        derived: Iterable[DerivedSpec] = (),
    ) -> ServingPlan:
        """Returns the plan of the given specs (the enabled features of the deployment)
        and derived features (each reading keys of `specs` only).

        Raises ValueError when two features would serve the same key, or a derived
        feature reads a key no spec serves (the deploy validation refuses such a config,
        so this only guards against a bad snapshot).
        """
        specs = tuple(specs)
        derived = tuple(derived)
        where: dict[str, tuple[int, Window]] = {}
        for index, spec in enumerate(specs):
            for window in spec.windows:
                key = f"{spec.name}_{window.label}"
                if key in where:
                    raise ValueError(f"two features serve the key {key!r}")
                where[key] = (index, window)
        by_name: dict[str, DerivedSpec] = {}
        for d in derived:
            if d.name in where or d.name in by_name:
                raise ValueError(f"two features serve the key {d.name!r}")
            missing = [k for k in d.expression.keys if k not in where]
            if missing:
                raise ValueError(f"derived feature {d.name!r} reads unserved keys {missing}")
            by_name[d.name] = d
        return cls(
            project_id=project_id,
            version=version,
            all=_selection(specs, derived),
            _where=where,
            _derived=by_name,
        )

    def select(self, keys: Sequence[str] | None) -> Selection:
        """Returns the selection of `keys` (None: every feature).

        Duplicates are ignored; the answer lists keys in the config's order (derived
        features after the aggregates). Raises UnknownFeatureKeys naming every key
        this version does not serve.
        """
        if keys is None:
            return self.all
        wanted = tuple(dict.fromkeys(keys))
        cached = self._cache.get(wanted)
        if cached is not None:
            return cached
        unknown = [k for k in wanted if k not in self._where and k not in self._derived]
        if unknown:
            raise UnknownFeatureKeys(unknown)
        derived = tuple(d for name, d in self._derived.items() if name in wanted)
        # The keys a selected derived feature reads are merged too, and dropped from
        # the answer unless they were asked for themselves.
        inputs = dict.fromkeys(k for d in derived for k in d.expression.keys)
        hidden = tuple(k for k in inputs if k not in wanted)
        merged = [k for k in wanted if k in self._where] + list(hidden)
        # Windows per spec, kept in the spec's own order so the output order is stable.
        chosen: dict[int, set[str]] = {}
        for key in merged:
            index, window = self._where[key]
            chosen.setdefault(index, set()).add(window.label)
        # A sub-spec keeps the spec's fingerprint (windows are not part of it), so it
        # reads the same tiles the full spec would.
        sub_specs = [
            dataclasses.replace(
                spec, windows=tuple(w for w in spec.windows if w.label in chosen[index])
            )
            for index, spec in enumerate(self.all.specs)
            if index in chosen
        ]
        selection = _selection(sub_specs, derived, hidden)
        if len(self._cache) < MAX_CACHED_SELECTIONS:
            self._cache[wanted] = selection
        return selection
