"""Feature definitions (the draft): the rules around the config store.

Editing a feature changes nothing at runtime until a deploy. Every create/update checks
the feature against its pipeline as it is now (`feature_rules`), normalises the windows
(deduplicated, sorted by duration), and keeps names and served keys unique per project.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.core.errors import (
    FeatureNameTaken,
    FeatureNotFound,
    FieldError,
    RevisionConflict,
    ServedKeyConflict,
    ValidationFailed,
)
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import FeatureDocument
from app.schemas.common import Page
from app.schemas.feature import FeatureBase, FeatureCreate, FeatureRead, FeatureUpdate
from app.services.common import new_id, revision_conflict, utc_now
from app.services.feature_rules import (
    event_problems,
    normalize_windows,
    served_key_clashes,
    spec_of,
)


def to_read(doc: FeatureDocument) -> FeatureRead:
    return FeatureRead.model_validate(doc.model_dump())


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

        Raises ValidationFailed (pipeline, event, field or window rules), FeatureNameTaken,
        ServedKeyConflict.
        """
        windows = await self.check(project_id, body, exclude_id=None)
        now = utc_now()
        doc = FeatureDocument(
            id=new_id(),
            project_id=project_id,
            **body.model_dump(exclude={"time_windows"}),
            time_windows=windows,
            revision=1,
            created_at=now,
            updated_at=now,
        )
        try:
            await self._store.insert_feature(doc)
        except DuplicateKey as exc:
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists") from exc
        return to_read(doc)

    async def update(self, project_id: str, feature_id: str, body: FeatureUpdate) -> FeatureRead:
        """Replaces the feature if `body.revision` is the stored one.

        Raises FeatureNotFound, RevisionConflict, ValidationFailed, FeatureNameTaken,
        ServedKeyConflict.
        """
        current = await self._require(project_id, feature_id)
        _check_revision(current, body.revision)
        windows = await self.check(project_id, body, exclude_id=feature_id)
        # Validated, not model_copy(update=...): nested models (the filter) stay models.
        doc = FeatureDocument.model_validate(
            {
                **current.model_dump(),
                **body.model_dump(exclude={"revision", "time_windows"}),
                "time_windows": windows,
                "revision": current.revision + 1,
                "updated_at": utc_now(),
            }
        )
        try:
            saved = await self._store.replace_feature(doc, expected_revision=current.revision)
        except DuplicateKey as exc:
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists") from exc
        if not saved:
            _check_revision(await self._require(project_id, feature_id), body.revision)
            raise RevisionConflict("The feature changed while saving; reload and retry")
        return to_read(doc)

    async def delete(self, project_id: str, feature_id: str) -> None:
        """Removes the feature; raises FeatureNotFound."""
        if not await self._store.delete_feature(project_id, feature_id):
            raise FeatureNotFound(f"Feature {feature_id!r} not found")

    async def check(
        self, project_id: str, body: FeatureBase, *, exclude_id: str | None
    ) -> list[str]:
        """Returns the normalised windows if `body` may be saved in the project.

        Raises ValidationFailed for the pipeline, event, field and window rules (all
        problems at once), FeatureNameTaken, ServedKeyConflict.
        """
        windows, problems = normalize_windows(body.time_windows)
        pipeline = await self._store.get_pipeline(project_id, body.pipeline_id)
        if pipeline is None:
            msg = f"pipeline {body.pipeline_id!r} does not exist in this project"
            problems.append(
                FieldError(loc=["body", "pipeline_id"], msg=msg, type="pipeline_missing")
            )
        else:
            problems.extend(event_problems(spec_of(body), pipeline.events))
        if problems:
            raise ValidationFailed(_summary(problems), fields=problems)
        others = [f for f in await self.all_features(project_id) if f.id != exclude_id]
        if any(f.name == body.name for f in others):
            raise FeatureNameTaken(f"A feature named {body.name!r} already exists")
        clashes = served_key_clashes(body.name, windows, [spec_of(f) for f in others])
        if clashes:
            key, owner = clashes[0]
            raise ServedKeyConflict(f"Served key {key!r} is already produced by feature {owner!r}")
        return windows

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
