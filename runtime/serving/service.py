"""The serving rules: which config answers (the deployed one), which keys (a selection of
its enabled features), how many users a batch may hold, and when "now" is."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from app.core.errors import (
    BatchTooLarge,
    EntityNotFound,
    FieldError,
    ProjectNotFound,
    UnknownFeature,
)
from app.schemas.deployment import ConfigSnapshot
from app.tiles.derived import DerivedSpec
from app.tiles.entities import entity_scope, store_id
from app.tiles.features import FeatureSpec
from runtime.serving.plan import Selection, ServingPlan, UnknownFeatureKeys
from runtime.serving.reader import Clock, FeatureReader, Freshness

SpecsOf = Callable[[ConfigSnapshot], tuple[Sequence[FeatureSpec], Sequence[DerivedSpec]]]
"""Returns the specs of a snapshot's enabled features (compute's own conversion) and
its derived features."""

EntitySpecsOf = Callable[[ConfigSnapshot], Mapping[str, Sequence[FeatureSpec]]]
"""Returns the per-entity specs of a snapshot by entity name (compute's own conversion)."""


def no_entities(snapshot: ConfigSnapshot) -> Mapping[str, Sequence[FeatureSpec]]:
    """An `EntitySpecsOf` for a service that serves users only."""
    return {}


class SnapshotSource(Protocol):
    """What serving needs of the shared config loader."""

    async def get(self, project_id: str) -> ConfigSnapshot | None: ...


@dataclass(frozen=True, slots=True)
class Reading:
    """Feature values of one or more users, all read at `now_ms` under `version`, each
    with the freshness of the record it came from."""

    version: int
    now_ms: int
    values: list[dict[str, Any]]
    freshness: list[Freshness]


class FeatureService:
    """Answers feature reads from the deployed config and the online store."""

    def __init__(
        self,
        loader: SnapshotSource,
        reader: FeatureReader,
        specs_of: SpecsOf,
        clock: Clock,
        max_batch_users: int,
        entity_specs_of: EntitySpecsOf = no_entities,
    ) -> None:
        self._loader = loader
        self._reader = reader
        self._specs_of = specs_of
        self._entity_specs_of = entity_specs_of
        # (project, entity) -> the plan of the live version; only entities that exist.
        self._entity_plans: dict[tuple[str, str], ServingPlan] = {}
        self._clock = clock
        self.max_batch_users = max_batch_users
        # The plan of the live version per project; replaced when a deploy changes it.
        self._plans: dict[str, ServingPlan] = {}

    async def plan(self, project_id: str) -> ServingPlan:
        """Returns the plan of the project's deployed version.

        Raises ProjectNotFound when the project has no successful deployment (an
        unknown project looks the same).
        """
        snapshot = await self._loader.get(project_id)
        if snapshot is None:
            raise ProjectNotFound(f"Project {project_id!r} not found")
        plan = self._plans.get(project_id)
        if plan is None or plan.version != snapshot.version:
            specs, derived = self._specs_of(snapshot)
            plan = ServingPlan.build(project_id, snapshot.version, specs, derived)
            self._plans[project_id] = plan
        return plan

    async def entity_plan(self, project_id: str, entity: str) -> ServingPlan:
        """Returns the plan of the per-entity features of `entity` in the deployed version.

        Raises ProjectNotFound (no successful deployment) and EntityNotFound (no enabled
        feature of the deployed version is per `entity`).
        """
        snapshot = await self._loader.get(project_id)
        if snapshot is None:
            raise ProjectNotFound(f"Project {project_id!r} not found")
        plan = self._entity_plans.get((project_id, entity))
        if plan is None or plan.version != snapshot.version:
            specs = self._entity_specs_of(snapshot).get(entity)
            if not specs:
                self._entity_plans.pop((project_id, entity), None)
                raise EntityNotFound(
                    f"No feature per entity {entity!r} in deployed version {snapshot.version}"
                )
            plan = ServingPlan.build(project_id, snapshot.version, specs)
            self._entity_plans[(project_id, entity)] = plan
        return plan

    async def read_entities(
        self, project_id: str, entity: str, ids: Sequence[str], keys: Sequence[str] | None
    ) -> Reading:
        """Returns the values of each entity id, in request order, from one store read
        (ids are percent-encoded into store keys: `entities.store_id`).

        Raises BatchTooLarge beyond `max_batch_users` ids, ProjectNotFound,
        EntityNotFound, UnknownFeature.
        """
        if len(ids) > self.max_batch_users:
            raise BatchTooLarge(f"A batch holds at most {self.max_batch_users} ids, got {len(ids)}")
        plan = await self.entity_plan(project_id, entity)
        selection = _select(plan, keys)
        now_ms = self._clock()
        scope = entity_scope(project_id, entity)
        read = await self._reader.read_many(scope, [store_id(i) for i in ids], selection, now_ms)
        return Reading(plan.version, now_ms, [v for v, _ in read], [f for _, f in read])

    async def read_user(self, project_id: str, user_id: str, keys: Sequence[str] | None) -> Reading:
        """Returns one user's values (every enabled feature when `keys` is None).

        Raises ProjectNotFound, UnknownFeature (listing the keys not served).
        """
        plan = await self.plan(project_id)
        selection = _select(plan, keys)
        now_ms = self._clock()
        values, freshness = await self._reader.read_one(project_id, user_id, selection, now_ms)
        return Reading(plan.version, now_ms, [values], [freshness])

    async def read_users(
        self, project_id: str, user_ids: Sequence[str], keys: Sequence[str] | None
    ) -> Reading:
        """Returns the values of each user id, in request order, from one store read.

        Raises BatchTooLarge beyond `max_batch_users` ids, ProjectNotFound,
        UnknownFeature.
        """
        if len(user_ids) > self.max_batch_users:
            raise BatchTooLarge(
                f"A batch holds at most {self.max_batch_users} user ids, got {len(user_ids)}"
            )
        plan = await self.plan(project_id)
        selection = _select(plan, keys)
        now_ms = self._clock()
        read = await self._reader.read_many(project_id, user_ids, selection, now_ms)
        return Reading(plan.version, now_ms, [v for v, _ in read], [f for _, f in read])


def _select(plan: ServingPlan, keys: Sequence[str] | None) -> Selection:
    try:
        return plan.select(keys)
    except UnknownFeatureKeys as exc:
        fields = [
            FieldError(loc=["features"], msg=f"unknown feature key {key!r}", type="unknown_feature")
            for key in exc.keys
        ]
        raise UnknownFeature(
            f"Not served by deployed version {plan.version}: {', '.join(exc.keys)}",
            fields=fields,
        ) from exc
