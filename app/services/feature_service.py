"""Feature definitions (the draft): the rules around the config store.

Editing a feature changes nothing at runtime until a deploy. Every create/update checks
the feature against its pipeline as it is now (`feature_rules`), normalises the windows
(deduplicated, sorted by duration), and keeps names and served keys unique per project.
A derived feature's expression is checked against the project's aggregates
(`derived_rules`); a feature a derived feature reads cannot be
deleted, renamed or changed so that the expression breaks (409 FeatureInUse).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter

from app.core.errors import (
    FeatureInUse,
    FeatureNameTaken,
    FeatureNotFound,
    FieldError,
    RevisionConflict,
    ServedKeyConflict,
    ValidationFailed,
)
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import FEATURE_DOCUMENT, AggregateFeatureDocument, FeatureDocument
from app.schemas.common import Page
from app.schemas.feature import (
    DerivedFeatureBase,
    FeatureBase,
    FeatureCreate,
    FeatureRead,
    FeatureUpdate,
)
from app.schemas.pipeline import EventDefinition
from app.services.common import new_id, revision_conflict, utc_now
from app.services.derived_rules import catalogue, dependents, expression_problems
from app.services.feature_rules import (
    event_problems,
    normalize_windows,
    served_key_clashes,
    served_keys_of,
    spec_of,
)

_READ: TypeAdapter[FeatureRead] = TypeAdapter(FeatureRead)


def to_read(doc: FeatureDocument) -> FeatureRead:
    return _READ.validate_python(doc.model_dump())


class FeatureService:
    """Create, read, update and delete a project's features."""

    def __init__(self, store: ConfigStore) -> None:
        self._store = store

    async def list_page(
        self,
        project_id: str,
        *,
        pipeline_id: str | None = None,
        enabled: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[FeatureRead]:
        """Returns one page ordered by creation time (then id)."""
        docs, total = await self._store.list_features(
            project_id, pipeline_id=pipeline_id, enabled=enabled, limit=limit, offset=offset
        )
        return Page[FeatureRead](
            items=[to_read(d) for d in docs], total=total, limit=limit, offset=offset
        )

    async def get(self, project_id: str, feature_id: str) -> FeatureRead:
        """Returns the feature; raises FeatureNotFound."""
        return to_read(await self._require(project_id, feature_id))

    async def create(self, project_id: str, body: FeatureCreate) -> FeatureRead:
        """Stores a new feature.

        Raises ValidationFailed (pipeline, event, field, window or expression rules),
        FeatureNameTaken, ServedKeyConflict.
        """
        normalised = await self.check(project_id, body, exclude_id=None)
        now = utc_now()
        doc = FEATURE_DOCUMENT.validate_python(
            {
                "id": new_id(),
                "project_id": project_id,
                **body.model_dump(),
                **normalised,
                "revision": 1,
                "created_at": now,
                "updated_at": now,
            }
        )
        try:
            await self._store.insert_feature(doc)
        except DuplicateKey as exc:
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists") from exc
        return to_read(doc)

    async def update(self, project_id: str, feature_id: str, body: FeatureUpdate) -> FeatureRead:
        """Replaces the feature if `body.revision` is the stored one.

        Raises FeatureNotFound, RevisionConflict, ValidationFailed, FeatureNameTaken,
        ServedKeyConflict, FeatureInUse (a derived feature reads a key the update would
        remove or turn into a list).
        """
        current = await self._require(project_id, feature_id)
        _check_revision(current, body.revision)
        normalised = await self.check(project_id, body, exclude_id=feature_id)
        # Validated, not model_copy(update=...): nested models (the filter) stay models.
        # Only the identity and timestamps carry over, so a change of kind drops the
        # other kind's fields.
        kept = current.model_dump(include={"id", "project_id", "created_at"})
        doc = FEATURE_DOCUMENT.validate_python(
            {
                **kept,
                **body.model_dump(exclude={"revision"}),
                **normalised,
                "revision": current.revision + 1,
                "updated_at": utc_now(),
            }
        )
        await self._check_dependents(project_id, current, doc)
        try:
            saved = await self._store.replace_feature(doc, expected_revision=current.revision)
        except DuplicateKey as exc:
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists") from exc
        if not saved:
            _check_revision(await self._require(project_id, feature_id), body.revision)
            raise RevisionConflict("The feature changed while saving; reload and retry")
        return to_read(doc)

    async def delete(self, project_id: str, feature_id: str) -> None:
        """Removes the feature; raises FeatureNotFound, FeatureInUse (a derived feature
        reads one of its served keys)."""
        current = await self._require(project_id, feature_id)
        await self._check_dependents(project_id, current, None)
        if not await self._store.delete_feature(project_id, feature_id):
            raise FeatureNotFound(f"Feature {feature_id!r} not found")

    async def _check_dependents(
        self, project_id: str, current: FeatureDocument, new: FeatureDocument | None
    ) -> None:
        """Raises FeatureInUse when a derived feature reads a served key of `current`
        that `new` (None: a delete) no longer serves as a number."""
        if current.kind == "derived":
            return  # nothing reads a derived feature
        others = [f for f in await self.all_features(project_id) if f.id != current.id]
        readers = dependents(
            ((f.name, f.expression) for f in others if f.kind == "derived"),
            served_keys_of(current),
        )
        if not readers:
            return
        after = [f for f in others if isinstance(f, AggregateFeatureDocument)]
        if isinstance(new, AggregateFeatureDocument):
            after.append(new)
        events = await self._events_by_source(project_id)
        keys = catalogue(after, [], lambda f: events.get((f.pipeline_id, f.source_event)))
        broken = [
            f"{name} (reads {', '.join(read)})"
            for name, read in readers
            if any(k not in keys or keys[k].refused for k in read)
        ]
        if broken:
            what = "deleted" if new is None else "changed this way"
            raise FeatureInUse(
                f"Derived features read feature {current.name!r}: {'; '.join(broken)}. "
                f"Edit or delete them before it is {what}."
            )

    async def _events_by_source(self, project_id: str) -> dict[tuple[str, str], EventDefinition]:
        """Returns every event of the project's pipelines by (pipeline id, name)."""
        pipelines, _ = await self._store.list_pipelines(project_id)
        return {(p.id, e.name): e for p in pipelines for e in p.events}

    async def check(
        self, project_id: str, body: FeatureBase, *, exclude_id: str | None
    ) -> dict[str, Any]:
        """Returns the normalised fields of `body` (sorted windows, or the stripped
        expression) if it may be saved in the project.

        Raises ValidationFailed for the pipeline, event, field, window and expression
        rules (all problems at once), FeatureNameTaken, ServedKeyConflict.
        """
        others = [f for f in await self.all_features(project_id) if f.id != exclude_id]
        problems: list[FieldError] = []
        pipeline = await self._store.get_pipeline(project_id, body.pipeline_id)
        if pipeline is None:
            msg = f"pipeline {body.pipeline_id!r} does not exist in this project"
            problems.append(
                FieldError(loc=["body", "pipeline_id"], msg=msg, type="pipeline_missing")
            )
        normalised: dict[str, Any]
        if isinstance(body, DerivedFeatureBase):
            text, found = await self._check_expression(project_id, body, others)
            normalised = {"expression": text}
            problems.extend(found)
        else:
            windows, found = normalize_windows(body.time_windows)
            normalised = {"time_windows": windows}
            problems.extend(found)
            if pipeline is not None:
                problems.extend(event_problems(spec_of(body), pipeline.events))
        if problems:
            raise ValidationFailed(_summary(problems), fields=problems)
        if any(f.name == body.name for f in others):
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists")
        keys = (
            [body.name]
            if body.kind == "derived"
            else [f"{body.name}_{w}" for w in normalised["time_windows"]]
        )
        clashes = served_key_clashes(keys, others)
        if clashes:
            key, owner = clashes[0]
            raise ServedKeyConflict(f"Served key {key!r} is already produced by feature {owner!r}")
        return normalised

    async def _check_expression(
        self, project_id: str, body: DerivedFeatureBase, others: Sequence[FeatureDocument]
    ) -> tuple[str, list[FieldError]]:
        """Returns (the expression to store, its problems) against the draft's other
        features, enabled or not (the deploy checks what would run)."""
        events = await self._events_by_source(project_id)
        keys = catalogue(
            [f for f in others if isinstance(f, AggregateFeatureDocument)],
            [f.name for f in others if f.kind == "derived"],
            lambda f: events.get((f.pipeline_id, f.source_event)),
        )
        _, problems = expression_problems(body.expression, keys, ["body", "expression"])
        # Kept as written (not the canonical text), so a definitions file and the API
        # compare equal.
        return body.expression.strip(), problems

    async def all_features(
        self, project_id: str, pipeline_id: str | None = None
    ) -> list[FeatureDocument]:
        """Returns every feature of the project (or of one of its pipelines)."""
        docs, _ = await self._store.list_features(project_id, pipeline_id=pipeline_id)
        return docs

    async def _require(self, project_id: str, feature_id: str) -> FeatureDocument:
        # The store answers None for an id that is not an ObjectId (hostile ids included).
        doc = await self._store.get_feature(project_id, feature_id)
        if doc is None:
            raise FeatureNotFound(f"Feature {feature_id!r} not found")
        return doc


def _check_revision(current: FeatureDocument, expected: int) -> None:
    if current.revision != expected:
        raise revision_conflict("Feature", current.name, expected, current.revision)


def _summary(problems: Sequence[FieldError]) -> str:
    first = problems[0]
    where = ".".join(str(p) for p in first.loc)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where}: {first.msg}{more}"
