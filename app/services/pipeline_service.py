"""Pipelines with their nested events (the draft), webhook secrets and templates.

Editing the draft changes nothing at runtime until a deploy. The exception is the
webhook secret: storefronts must be able to sign with a new secret at once, so creating
a pipeline and rotating its secret hand the secrets to a `SecretPublisher` (the channel
ingestion reads), without a deploy.

Concurrency: every write replaces the whole document on the revision it was computed
from. A dashboard's PUT carries that revision (409 RevisionConflict if it is stale);
nested edits (events, activate, rotate) re-read and retry on their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

from app.core.errors import (
    PipelineInUse,
    PipelineNameTaken,
    PipelineNotFound,
    RevisionConflict,
)
from app.core.secrets import secrets_of
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import FeatureDocument, PipelineDocument
from app.schemas.common import Page
from app.schemas.feature import FeatureRead
from app.schemas.pipeline import (
    Category,
    EventDefinition,
    EventUpdate,
    PipelineCreate,
    PipelineCreated,
    PipelineRead,
    PipelineStatus,
    PipelineUpdate,
    WebhookInfo,
    WebhookRotate,
)
from app.services import pipeline_rules as rules
from app.services import webhook_secrets as whs
from app.services.common import new_id, revision_conflict, utc_now
from app.services.feature_service import FeatureService
from app.services.pipeline_creation import CreationPlan, plan_creation
from app.services.secret_publisher import SecretPublisher

# Nested edits retry on a concurrent save this many times before giving up with 409.
_MAX_ATTEMPTS = 5

# (current document, the pipeline's features) → the edited document, or None for "no change".
Edit = Callable[[PipelineDocument, list[FeatureDocument]], PipelineDocument | None]


def to_read(doc: PipelineDocument) -> PipelineRead:
    """Returns the API view of a stored pipeline (no secrets)."""
    return PipelineRead.model_validate(doc.model_dump(include=set(PipelineRead.model_fields)))


class PipelineService:
    """The rules of a project's pipelines and their events."""

    def __init__(
        self,
        store: ConfigStore,
        features: FeatureService,
        *,
        ingest_url: str,
        default_grace_hours: int = 24,
        publisher: SecretPublisher | None = None,
    ) -> None:
        self._store = store
        self._features = features
        self._ingest_url = ingest_url.rstrip("/")
        self._default_grace = timedelta(hours=default_grace_hours)
        self._publisher = publisher

    # -- reads -------------------------------------------------------------------------
    async def list_page(
        self,
        project_id: str,
        *,
        status: PipelineStatus | None = None,
        category: Category | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[PipelineRead]:
        """Returns one page ordered by creation time (then id)."""
        docs, total = await self._store.list_pipelines(
            project_id, status=status, category=category, limit=limit, offset=offset
        )
        items = [to_read(d) for d in docs]
        return Page[PipelineRead](items=items, total=total, limit=limit, offset=offset)

    async def get(self, project_id: str, pipeline_id: str) -> PipelineRead:
        """Returns the pipeline; raises PipelineNotFound."""
        return to_read(await self._require(project_id, pipeline_id))

    # -- create / replace / delete -----------------------------------------------------
    async def create(self, project_id: str, body: PipelineCreate) -> PipelineCreated:
        """Stores a new pipeline (from `body.template` if given) with a fresh secret, and
        the template's suggested features when `body.with_features` is set.

        Raises ValidationFailed (unknown template, missing category, suggested features
        that do not fit the events), PipelineNameTaken, FeatureNameTaken,
        ServedKeyConflict; nothing is stored when it raises.
        """
        plan = plan_creation(body)
        existing = await self._features.all_features(project_id) if plan.features else []
        plan.check_features(existing)
        now = utc_now()
        doc = PipelineDocument(
            id=new_id(),
            project_id=project_id,
            name=body.name,
            description=body.description,
            category=plan.category,
            status=rules.settle_status("configuring", plan.events),
            events=plan.events,
            revision=1,
            created_at=now,
            updated_at=now,
            webhook_secret=whs.generate_secret(),
        )
        try:
            await self._store.insert_pipeline(doc)
        except DuplicateKey as exc:
            raise PipelineNameTaken(f"A pipeline named {body.name!r} already exists") from exc
        created = await self._create_features(doc, plan)
        await self._publish(doc)
        return PipelineCreated(**to_read(doc).model_dump(), features=created)

    async def update(self, project_id: str, pipeline_id: str, body: PipelineUpdate) -> PipelineRead:
        """Replaces name, description, category and events if `body.revision` is current.

        Raises PipelineNotFound, RevisionConflict, PipelineNameTaken, EventInUse/FieldInUse
        (the new events would break a feature; rename events with PUT .../events/{name}).
        """

        def edit(doc: PipelineDocument, features: list[FeatureDocument]) -> PipelineDocument:
            rules.check_features_still_fit(features, doc.events, body.events)
            return doc.model_copy(
                update={
                    "name": body.name,
                    "description": body.description,
                    "category": body.category,
                    "events": body.events,
                }
            )

        return to_read(await self._edit(project_id, pipeline_id, edit, body.revision))

    async def delete(self, project_id: str, pipeline_id: str, *, cascade: bool = False) -> None:
        """Removes the pipeline; with `cascade`, its features too.

        Raises PipelineNotFound, PipelineInUse (features use it and `cascade` is off).
        """
        await self._require(project_id, pipeline_id)
        if not cascade:
            users = await self._features.all_features(project_id, pipeline_id)
            if users:
                names = ", ".join(sorted(f.name for f in users))
                raise PipelineInUse(
                    f"Features use this pipeline: {names}. Delete them first, or delete with "
                    "?cascade=true to remove them with the pipeline."
                )
        else:
            await self._store.delete_features_of_pipeline(project_id, pipeline_id)
        if not await self._store.delete_pipeline(project_id, pipeline_id):
            raise PipelineNotFound(f"Pipeline {pipeline_id!r} not found")
        if self._publisher is not None:
            await self._publisher.forget(project_id, pipeline_id)

    # -- status ------------------------------------------------------------------------
    async def activate(self, project_id: str, pipeline_id: str) -> PipelineRead:
        """Sets status `active` (no-op if already); raises PipelineNotFound, PipelineNotReady."""

        def edit(doc: PipelineDocument, _: list[FeatureDocument]) -> PipelineDocument | None:
            status = rules.activated(doc.events)
            return None if doc.status == status else doc.model_copy(update={"status": status})

        return to_read(await self._edit(project_id, pipeline_id, edit))

    async def deactivate(self, project_id: str, pipeline_id: str) -> PipelineRead:
        """Sets status `inactive` (a pipeline without events stays `configuring`)."""

        def edit(doc: PipelineDocument, _: list[FeatureDocument]) -> PipelineDocument | None:
            if doc.status != "active":
                return None
            return doc.model_copy(update={"status": "inactive"})

        return to_read(await self._edit(project_id, pipeline_id, edit))

    # -- events ------------------------------------------------------------------------
    async def add_event(
        self, project_id: str, pipeline_id: str, event: EventDefinition
    ) -> PipelineRead:
        """Appends an event; raises PipelineNotFound, EventNameTaken, ValidationFailed."""

        def edit(doc: PipelineDocument, _: list[FeatureDocument]) -> PipelineDocument:
            return doc.model_copy(update={"events": rules.with_event_added(doc.events, event)})

        return to_read(await self._edit(project_id, pipeline_id, edit))

    async def update_event(
        self, project_id: str, pipeline_id: str, event_name: str, event: EventUpdate
    ) -> PipelineRead:
        """Replaces event `event_name`. A different `event.name` renames it, and the
        features whose source_event it was follow the new name.

        Raises PipelineNotFound, EventNotFound, EventNameTaken, FieldInUse.
        """
        new_event = EventDefinition.model_validate(event.model_dump())
        renamed = (event_name, new_event.name) if new_event.name != event_name else None

        def edit(doc: PipelineDocument, features: list[FeatureDocument]) -> PipelineDocument:
            events = rules.with_event_replaced(doc.events, event_name, new_event)
            rules.check_features_still_fit(features, doc.events, events, renamed)
            return doc.model_copy(update={"events": events})

        saved = await self._edit(project_id, pipeline_id, edit)
        if renamed is not None:
            await self._move_features(project_id, pipeline_id, *renamed)
        return to_read(saved)

    async def delete_event(
        self, project_id: str, pipeline_id: str, event_name: str
    ) -> PipelineRead:
        """Removes an event; raises PipelineNotFound, EventNotFound, EventInUse."""

        def edit(doc: PipelineDocument, features: list[FeatureDocument]) -> PipelineDocument:
            events = rules.with_event_removed(doc.events, event_name)
            rules.check_features_still_fit(features, doc.events, events)
            return doc.model_copy(update={"events": events})

        return to_read(await self._edit(project_id, pipeline_id, edit))

    # -- webhook -----------------------------------------------------------------------
    async def webhook(self, project_id: str, pipeline_id: str) -> WebhookInfo:
        """Returns where and how to send signed events; raises PipelineNotFound."""
        return self._webhook_info(await self._require(project_id, pipeline_id))

    async def rotate_secret(
        self, project_id: str, pipeline_id: str, body: WebhookRotate | None = None
    ) -> WebhookInfo:
        """Issues a new secret; the old one stays valid for the grace period (body or
        settings). Ingestion learns both at once. Raises PipelineNotFound."""
        hours = body.grace_hours if body is not None else None
        grace = timedelta(hours=hours) if hours is not None else self._default_grace

        def edit(doc: PipelineDocument, _: list[FeatureDocument]) -> PipelineDocument:
            return whs.rotated(doc, utc_now(), grace)

        doc = await self._edit(project_id, pipeline_id, edit)
        await self._publish(doc)
        return self._webhook_info(doc)

    def _webhook_info(self, doc: PipelineDocument) -> WebhookInfo:
        secrets = secrets_of(doc, utc_now())
        url = f"{self._ingest_url}/ingest/{doc.project_id}/{doc.id}"
        return WebhookInfo(
            pipeline_id=doc.id,
            ingest_url=url,
            batch_ingest_url=f"{url}/batch",
            signature_scheme=whs.SIGNATURE_SCHEME,
            signature_description=whs.SIGNATURE_DESCRIPTION,
            headers=dict(whs.HEADERS),
            secret=secrets.current,
            previous_secret=secrets.previous,
            previous_secret_expires_at=secrets.previous_expires_at,
        )

    # -- internals ---------------------------------------------------------------------
    async def _require(self, project_id: str, pipeline_id: str) -> PipelineDocument:
        # The store answers None for an id that is not an ObjectId (hostile ids included).
        doc = await self._store.get_pipeline(project_id, pipeline_id)
        if doc is None:
            raise PipelineNotFound(f"Pipeline {pipeline_id!r} not found")
        return doc

    async def _edit(
        self, project_id: str, pipeline_id: str, edit: Edit, expected_revision: int | None = None
    ) -> PipelineDocument:
        """Applies `edit` to the stored pipeline and saves it on the revision it read.

        With `expected_revision` (a client's PUT) a stale revision is a RevisionConflict;
        without, a concurrent save makes it re-read and re-apply the edit.
        """
        for attempt in range(_MAX_ATTEMPTS):
            if attempt:
                # Another writer is mid-save; give it a moment to finish.
                await asyncio.sleep(0.01 * attempt)
            current = await self._require(project_id, pipeline_id)
            if expected_revision is not None and current.revision != expected_revision:
                raise revision_conflict(
                    "Pipeline", current.name, expected_revision, current.revision
                )
            features = await self._features.all_features(project_id, pipeline_id)
            edited = edit(current, features)
            if edited is None:
                return current
            edited = edited.model_copy(
                update={
                    "status": rules.settle_status(edited.status, edited.events),
                    "revision": current.revision + 1,
                    "updated_at": utc_now(),
                }
            )
            try:
                if await self._store.replace_pipeline(edited, expected_revision=current.revision):
                    return edited
            except DuplicateKey as exc:
                raise PipelineNameTaken(f"A pipeline named {edited.name!r} already exists") from exc
        raise RevisionConflict("The pipeline kept changing while saving; reload and retry")

    async def _move_features(self, project_id: str, pipeline_id: str, old: str, new: str) -> None:
        # No multi-document transactions (FerretDB): the pipeline is saved first, then
        # each feature moves on its own revision, re-read on a concurrent save.
        for feature in await self._features.all_features(project_id, pipeline_id):
            if feature.kind == "derived" or feature.source_event != old:
                continue
            for _ in range(_MAX_ATTEMPTS):
                current = await self._store.get_feature(project_id, feature.id)
                if current is None or current.kind == "derived" or current.source_event != old:
                    break
                moved = current.model_copy(
                    update={
                        "source_event": new,
                        "revision": current.revision + 1,
                        "updated_at": utc_now(),
                    }
                )
                if await self._store.replace_feature(moved, expected_revision=current.revision):
                    break

    async def _create_features(
        self, doc: PipelineDocument, plan: CreationPlan
    ) -> list[FeatureRead]:
        created: list[FeatureRead] = []
        try:
            for body in plan.feature_bodies(doc.id):
                created.append(await self._features.create(doc.project_id, body))
        except Exception:
            # A feature name or key was taken between the check and the insert: undo, so
            # the request leaves nothing behind.
            for feature in created:
                await self._store.delete_feature(doc.project_id, feature.id)
            await self._store.delete_pipeline(doc.project_id, doc.id)
            raise
        return created

    async def _publish(self, doc: PipelineDocument) -> None:
        # Best effort (the publisher logs and returns False when Redis is down): the
        # store holds the truth and ingestion falls back to it. Failing the request
        # instead would make the caller rotate again and retire the secret its
        # storefronts still sign with.
        if self._publisher is not None:
            await self._publisher.publish(doc.project_id, doc.id, secrets_of(doc, utc_now()))
