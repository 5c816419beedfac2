"""What serving precomputes once per deployed (project, version): the feature specs, the
empty answer, and the sub-specs of each feature selection.

Built once when a version is first read, so the hot path does no parsing, no pydantic
model construction and no per-key work beyond the tile merge itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """The specs to merge and the answer for a user without a record.

    `specs` hold only the selected windows of the selected features, so merging them
    yields exactly the keys of `empty`, in the same order.
    """

    specs: tuple[FeatureSpec, ...]
    empty: dict[str, Any]
    _merger: Merger | None = None

    @property
    def keys(self) -> list[str]:
        return list(self.empty)

    def merger(self, now_ms: int) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """Returns the merge of a record at `now_ms` (the Merger of these specs is
        reused while it covers `now_ms`)."""
        merger = self._merger
        if merger is None or not merger.covers(now_ms):
            merger = self._merger = Merger(self.specs, now_ms)
        return merger.at(now_ms)


def _selection(specs: Iterable[FeatureSpec]) -> Selection:
    specs = tuple(specs)
    # A user x entity feature (`key` set) serves {key value: value}: empty, none.
    empty = {
        f"{spec.name}_{w.label}": spec.aggregator.empty() if spec.key is None else {}
        for spec in specs
        for w in spec.windows
    }
    return Selection(specs=specs, empty=empty)


@dataclass(slots=True)
class ServingPlan:
    """Everything serving needs to answer for one deployed version of a project."""

    project_id: str
    version: int
    all: Selection
    # served key -> (index of its spec in `all.specs`, window)
    _where: dict[str, tuple[int, Window]] = field(default_factory=dict)
    _cache: dict[tuple[str, ...], Selection] = field(default_factory=dict)

    @classmethod
    def build(cls, project_id: str, version: int, specs: Iterable[FeatureSpec]) -> ServingPlan:
        """Returns the plan of the given specs (the enabled features of the deployment).

        Raises ValueError when two features would serve the same key (the deploy
        validation refuses such a config, so this only guards against a bad snapshot).
        """
        selection = _selection(specs)
        where: dict[str, tuple[int, Window]] = {}
        for index, spec in enumerate(selection.specs):
            for window in spec.windows:
                key = f"{spec.name}_{window.label}"
                if key in where:
                    raise ValueError(f"two features serve the key {key!r}")
                where[key] = (index, window)
        return cls(project_id=project_id, version=version, all=selection, _where=where)

    def select(self, keys: Sequence[str] | None) -> Selection:
        """Returns the selection of `keys` (None: every feature).

        Duplicates are ignored; the answer lists keys in the config's order. Raises
        UnknownFeatureKeys naming every key this version does not serve.
        """
        if keys is None:
            return self.all
        wanted = tuple(dict.fromkeys(keys))
        cached = self._cache.get(wanted)
        if cached is not None:
            return cached
        unknown = [k for k in wanted if k not in self._where]
        if unknown:
            raise UnknownFeatureKeys(unknown)
        # Windows per spec, kept in the spec's own order so the output order is stable.
        chosen: dict[int, set[str]] = {}
        for key in wanted:
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
        selection = _selection(sub_specs)
        if len(self._cache) < MAX_CACHED_SELECTIONS:
            self._cache[wanted] = selection
        return selection
