"""Deployed config → the feature specs compute applies (pure, no I/O).

A project's snapshot becomes `ProjectSpecs`: for every event that can feed a feature
(an enabled event of an active pipeline), the enabled features built on it. Events are
keyed by `event_key(pipeline_id, event)`, not by name alone, because two pipelines of
one project may both define `add_to_cart` and features belong to one pipeline.
`record.apply_batch` only ever looks its `specs_by_event` up by `AppliedEvent.event`,
so compute passes this composite key as the event name.

Fingerprints. `FeatureSpec.fingerprint` covers the aggregation and the field, so the
record resets a feature whose aggregation or field changed. A feature can also change
meaning by moving to another source event or pipeline (COUNT of `add_to_cart` →
COUNT of `purchase`); `DeployedFeatureSpec` adds the source to the fingerprint so
that change resets the tiles too. Anything serving a record written by compute must
build its specs here as well, or every fingerprint would differ and it would serve
empty values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.schemas.common import USER_ENTITY
from app.schemas.deployment import ConfigSnapshot, DerivedFeatureSnapshot
from app.schemas.feature import FeatureFilter as FilterBody
from app.tiles.aggregations import Aggregation
from app.tiles.derived import DerivedSpec, ExpressionError, derived_spec
from app.tiles.features import FeatureSpec
from app.tiles.filters import Condition, FeatureFilter
from app.tiles.record import record_ttl_seconds
from app.tiles.staging import staged_name
from app.tiles.windows import parse_window


def event_key(pipeline_id: str, event: str) -> str:
    """Returns the key `specs_by_event` uses for `event` of pipeline `pipeline_id`."""
    return f"{pipeline_id}/{event}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeployedFeatureSpec(FeatureSpec):
    """A FeatureSpec that knows which pipeline event feeds it (`source`, an `event_key`)."""

    source: str

    @property
    def fingerprint(self) -> str:
        """Returns the base fingerprint plus the source event: a feature moved to another
        event (or pipeline) restarts empty instead of mixing two meanings."""
        base: str = FeatureSpec.fingerprint.fget(self)  # type: ignore[attr-defined]
        return f"{base}@{self.source}"


def tile_filter(body: FilterBody | None) -> FeatureFilter | None:
    """Returns the filter compute runs for a feature's deployed filter (None: none)."""
    if body is None:
        return None
    conditions = tuple(Condition(c.field, c.op, c.value) for c in body.conditions)
    return FeatureFilter(conditions, body.mode)


@dataclass(frozen=True, slots=True)
class InvalidFeature:
    """A deployed feature compute cannot run (the deploy validation should make this
    impossible; kept so one bad feature never stops a project's other features)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class EntitySpecs:
    """The per-entity features of one entity kind (`product`): which events feed them,
    which property of each names the entity (`key_by_event`), and the TTL of their
    records (written in the store scope `entities.entity_scope(project, entity)`)."""

    entity: str
    by_event: Mapping[str, tuple[FeatureSpec, ...]]
    key_by_event: Mapping[str, str]
    specs: tuple[FeatureSpec, ...]
    ttl_seconds: int


@dataclass(frozen=True, slots=True)
class ProjectSpecs:
    """What compute runs for one project at one deployed version.

    `by_event` maps `event_key(...)` to the per-user specs that event feeds (only keys
    with at least one spec are present); `specs` lists every runnable per-user feature
    once. `pairs_by_event` and `pairs` do the same for user x entity features (specs
    with `key` set, kept in the user's record too); `entities` holds the per-entity
    features by entity name; `keyed_events` are the events feeding either of those.
    `ttl_seconds` is the user record's TTL, None when the project has no feature at
    all (then there is nothing to store). `derived` are the derived features,
    evaluated by serving and training sets over the per-user values of `specs`;
    compute ignores them (nothing of theirs is stored).
    """

    project_id: str
    version: int
    by_event: Mapping[str, tuple[FeatureSpec, ...]]
    specs: tuple[FeatureSpec, ...]
    ttl_seconds: int | None
    invalid: tuple[InvalidFeature, ...] = field(default=())
    pairs_by_event: Mapping[str, tuple[FeatureSpec, ...]] = field(default_factory=dict)
    pairs: tuple[FeatureSpec, ...] = ()
    entities: Mapping[str, EntitySpecs] = field(default_factory=dict)
    keyed_events: frozenset[str] = frozenset()

    @property
    def user_answer(self) -> tuple[FeatureSpec, ...]:
        """Returns the specs a user's read serves: per user, then user x entity."""
        return self.specs + self.pairs

    derived: tuple[DerivedSpec, ...] = ()


def build_specs(snapshot: ConfigSnapshot) -> ProjectSpecs:
    """Returns the specs of `snapshot`: enabled features whose pipeline is active and
    whose source event exists there and is enabled, and the per-user `staged` ones of a
    backfill under their staged names (`app/tiles/staging.py`). Features that cannot be
    built (an unparsable window, a missing field or entity key) are listed in
    `invalid`, never raised."""
    live_events = {
        event_key(p.id, e.name): e
        for p in snapshot.pipelines
        if p.status == "active"
        for e in p.events
        if e.enabled
    }
    by_event: dict[str, list[FeatureSpec]] = {}
    specs: list[FeatureSpec] = []
    pairs_by_event: dict[str, list[FeatureSpec]] = {}
    pairs: list[FeatureSpec] = []
    per_entity: dict[str, list[tuple[str, str, FeatureSpec]]] = {}
    invalid: list[InvalidFeature] = []
    derived_features: list[DerivedFeatureSnapshot] = []
    staged = len(snapshot.features)
    for index, feature in enumerate([*snapshot.features, *snapshot.staged]):
        if feature.kind == "derived":
            if index < staged:
                derived_features.append(feature)
            continue
        source = event_key(feature.pipeline_id, feature.source_event)
        event = live_events.get(source)
        if not feature.enabled or event is None:
            continue
        entity = feature.entity if isinstance(feature.entity, str) else feature.entity[-1]
        key = None
        if entity != USER_ENTITY:
            key = next((f.name for f in event.fields if f.entity == entity), None)
            if key is None:
                invalid.append(InvalidFeature(feature.name, f"no entity key {entity!r}"))
                continue
        try:
            spec = DeployedFeatureSpec(
                name=feature.name,
                aggregation=Aggregation(feature.aggregation),
                field=feature.field,
                windows=tuple(parse_window(w) for w in feature.time_windows),
                size=feature.size,
                filter=tile_filter(feature.filter),
                key=key if isinstance(feature.entity, list) else None,
                source=source,
            )
        except ValueError as exc:
            invalid.append(InvalidFeature(feature.name, str(exc)))
            continue
        if index >= staged:
            if key is not None or isinstance(feature.entity, list):
                continue  # only per-user features are backfilled (`needs_backfill`)
            # Being backfilled: filled beside the live definition under its staged name.
            spec = dataclasses.replace(spec, name=staged_name(spec.name, spec.fingerprint))
        if isinstance(feature.entity, list):
            pairs_by_event.setdefault(source, []).append(spec)
            pairs.append(spec)
        elif key is not None:
            per_entity.setdefault(entity, []).append((source, key, spec))
        else:
            by_event.setdefault(source, []).append(spec)
            specs.append(spec)
    entities = {name: _entity_specs(name, items) for name, items in per_entity.items()}
    every = specs + pairs + [s for e in entities.values() for s in e.specs]
    active = {p.id for p in snapshot.pipelines if p.status == "active"}
    live_derived = [f for f in derived_features if f.enabled and f.pipeline_id in active]
    derived = _derived_specs(live_derived, specs, invalid)
    return ProjectSpecs(
        project_id=snapshot.project_id,
        version=snapshot.version,
        by_event={k: tuple(v) for k, v in by_event.items()},
        specs=tuple(specs),
        # The user's record also remembers the ids of events that only feed entity
        # features (it decides their duplicates), so it is kept for those too.
        ttl_seconds=record_ttl_seconds(every) if every else None,
        invalid=tuple(invalid),
        pairs_by_event={k: tuple(v) for k, v in pairs_by_event.items()},
        pairs=tuple(pairs),
        entities=entities,
        keyed_events=frozenset(pairs_by_event)
        | frozenset(k for e in entities.values() for k in e.by_event),
        derived=derived,
    )


def _entity_specs(entity: str, items: list[tuple[str, str, FeatureSpec]]) -> EntitySpecs:
    by_event: dict[str, list[FeatureSpec]] = {}
    for source, _, spec in items:
        by_event.setdefault(source, []).append(spec)
    specs = tuple(spec for _, _, spec in items)
    return EntitySpecs(
        entity=entity,
        by_event={k: tuple(v) for k, v in by_event.items()},
        key_by_event={source: key for source, key, _ in items},
        specs=specs,
        ttl_seconds=record_ttl_seconds(specs),
    )


def _derived_specs(
    features: list[DerivedFeatureSnapshot],
    specs: list[FeatureSpec],
    invalid: list[InvalidFeature],
) -> tuple[DerivedSpec, ...]:
    """Returns the specs of the derived features whose expression parses and reads only
    keys `specs` serve; the others go to `invalid` (the deploy validation refuses them,
    so this only guards against a bad snapshot)."""
    served = {f"{s.name}_{w.label}" for s in specs for w in s.windows}
    out: list[DerivedSpec] = []
    for feature in features:
        try:
            spec = derived_spec(feature.name, feature.expression)
        except ExpressionError as exc:
            invalid.append(InvalidFeature(feature.name, str(exc)))
            continue
        missing = [k for k in spec.expression.keys if k not in served]
        if missing:
            invalid.append(InvalidFeature(feature.name, f"reads unserved keys {missing}"))
            continue
        out.append(spec)
    return tuple(out)


class SpecCache:
    """Memoises `build_specs` per (project, version): a batch looks its project's specs
    up by the snapshot it got, and only a new version rebuilds them. One entry per
    project (versions only move forward; a rollback is a new version)."""

    def __init__(self) -> None:
        # project -> ((version, staged version), its specs): a backfill stages features
        # without a new live version.
        self._by_project: dict[str, tuple[tuple[int, int | None], ProjectSpecs]] = {}

    def get(self, snapshot: ConfigSnapshot) -> tuple[ProjectSpecs, bool]:
        """Returns (the specs of `snapshot`, whether they were built by this call)."""
        key = (snapshot.version, snapshot.staged_version)
        cached = self._by_project.get(snapshot.project_id)
        if cached is not None and cached[0] == key:
            return cached[1], False
        specs = build_specs(snapshot)
        self._by_project[snapshot.project_id] = (key, specs)
        return specs, True

    def forget(self, project_id: str) -> None:
        """Drops the project's entry (its config was deleted)."""
        self._by_project.pop(project_id, None)
