"""Pipelines, their nested events and their webhook: HTTP only, the rules live in
`app.services.pipeline_service`.

Path ids that are not 24-hex ObjectIds are answered 404 by the service without any
query; a project outside the caller's token is 404 before anything else runs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from app.api.deps import PipelineServiceDep, ProjectDep
from app.api.v1 import examples as ex
from app.api.v1.params import Limit, Offset
from app.core.errors import error_responses
from app.schemas.common import Page
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

router = APIRouter(prefix="/api/v1/projects/{project_id}/pipelines", tags=["pipelines"])

PipelineId = Annotated[
    str, Path(max_length=64, description="Pipeline id (24 hex)", examples=[ex.PIPELINE_ID])
]
EventName = Annotated[str, Path(max_length=64, description="Event name", examples=["add_to_cart"])]


@router.get(
    "",
    summary="List pipelines",
    description="Pipelines of the project, oldest first (ties by id), filtered by status "
    "and category.",
    response_model=Page[PipelineRead],
    responses={200: ex.ok(ex.page(ex.PIPELINE)), **error_responses(401, 404, 422)},
)
async def list_pipelines(
    project_id: ProjectDep,
    service: PipelineServiceDep,
    status_: Annotated[PipelineStatus | None, Query(alias="status")] = None,
    category: Category | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[PipelineRead]:
    return await service.list_page(
        project_id, status=status_, category=category, limit=limit, offset=offset
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a pipeline",
    description="Creates a pipeline with a fresh webhook secret. With `template` its events "
    "(and, with `with_features`, its suggested features) come from a pipeline template. "
    "A pipeline without events is `configuring`, otherwise `inactive` until activated.",
    response_model=PipelineCreated,
    responses={
        201: ex.ok({**ex.PIPELINE, "features": []}, "Created"),
        **error_responses(401, 404, 409, 422),
    },
)
async def create_pipeline(
    project_id: ProjectDep,
    service: PipelineServiceDep,
    body: Annotated[PipelineCreate, Body(openapi_examples=ex.PIPELINE_CREATE_EXAMPLES)],
) -> PipelineCreated:
    return await service.create(project_id, body)


@router.get(
    "/{pipeline_id}",
    summary="Get a pipeline",
    response_model=PipelineRead,
    responses={200: ex.ok(ex.PIPELINE), **error_responses(401, 404)},
)
async def get_pipeline(
    project_id: ProjectDep, pipeline_id: PipelineId, service: PipelineServiceDep
) -> PipelineRead:
    return await service.get(project_id, pipeline_id)


@router.put(
    "/{pipeline_id}",
    summary="Replace a pipeline",
    description="Full replacement of name, description, category and events. `revision` "
    "must be the stored one: a stale edit (another tab saved first) is 409 "
    "RevisionConflict. Events that features use cannot be removed here (409 EventInUse); "
    "rename an event with PUT .../events/{event_name}.",
    response_model=PipelineRead,
    responses={200: ex.ok(ex.PIPELINE), **error_responses(401, 404, 409, 422)},
)
async def update_pipeline(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    service: PipelineServiceDep,
    body: Annotated[PipelineUpdate, Body(openapi_examples=ex.PIPELINE_UPDATE_EXAMPLES)],
) -> PipelineRead:
    return await service.update(project_id, pipeline_id, body)


@router.delete(
    "/{pipeline_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a pipeline",
    description="Refused with 409 PipelineInUse while features use the pipeline, unless "
    "`cascade=true`, which deletes those features too.",
    response_class=Response,
    responses=error_responses(401, 404, 409),
)
async def delete_pipeline(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    service: PipelineServiceDep,
    cascade: Annotated[bool, Query(description="Also delete the pipeline's features")] = False,
) -> Response:
    await service.delete(project_id, pipeline_id, cascade=cascade)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{pipeline_id}/activate",
    summary="Activate a pipeline",
    description="Sets status `active` in the draft (live after the next deploy). Needs at "
    "least one enabled event (409 PipelineNotReady). Activating an active pipeline changes "
    "nothing.",
    response_model=PipelineRead,
    responses={200: ex.ok({**ex.PIPELINE, "status": "active"}), **error_responses(401, 404, 409)},
)
async def activate_pipeline(
    project_id: ProjectDep, pipeline_id: PipelineId, service: PipelineServiceDep
) -> PipelineRead:
    return await service.activate(project_id, pipeline_id)


@router.post(
    "/{pipeline_id}/deactivate",
    summary="Deactivate a pipeline",
    description="Sets status `inactive` in the draft (a pipeline without events stays "
    "`configuring`). Deactivating an inactive pipeline changes nothing.",
    response_model=PipelineRead,
    responses={200: ex.ok(ex.PIPELINE), **error_responses(401, 404, 409)},
)
async def deactivate_pipeline(
    project_id: ProjectDep, pipeline_id: PipelineId, service: PipelineServiceDep
) -> PipelineRead:
    return await service.deactivate(project_id, pipeline_id)


@router.post(
    "/{pipeline_id}/events",
    status_code=status.HTTP_201_CREATED,
    summary="Add an event",
    description="Appends an event with its fields; returns the pipeline (new revision).",
    response_model=PipelineRead,
    responses={201: ex.ok(ex.PIPELINE, "Created"), **error_responses(401, 404, 409, 422)},
)
async def add_event(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    service: PipelineServiceDep,
    body: Annotated[EventDefinition, Body(openapi_examples=ex.EVENT_EXAMPLES)],
) -> PipelineRead:
    return await service.add_event(project_id, pipeline_id, body)


@router.put(
    "/{pipeline_id}/events/{event_name}",
    summary="Replace or rename an event",
    description="Replaces the event. A different `name` renames it, and features whose "
    "`source_event` it was are moved to the new name. Removing or retyping a field a "
    "feature aggregates is 409 FieldInUse.",
    response_model=PipelineRead,
    responses={200: ex.ok(ex.PIPELINE), **error_responses(401, 404, 409, 422)},
)
async def update_event(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    event_name: EventName,
    service: PipelineServiceDep,
    body: Annotated[EventUpdate, Body(openapi_examples=ex.EVENT_RENAME_EXAMPLES)],
) -> PipelineRead:
    return await service.update_event(project_id, pipeline_id, event_name, body)


@router.delete(
    "/{pipeline_id}/events/{event_name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an event",
    description="Refused with 409 EventInUse while a feature's `source_event` is this event.",
    response_class=Response,
    responses=error_responses(401, 404, 409),
)
async def delete_event(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    event_name: EventName,
    service: PipelineServiceDep,
) -> Response:
    await service.delete_event(project_id, pipeline_id, event_name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{pipeline_id}/webhook",
    summary="Get webhook details",
    description="The ingest URLs of this pipeline, the Standard Webhooks signing scheme, "
    "the headers to send, the current secret, and the previous secret while it is valid.",
    response_model=WebhookInfo,
    responses={200: ex.ok(ex.WEBHOOK), **error_responses(401, 404)},
)
async def get_webhook(
    project_id: ProjectDep, pipeline_id: PipelineId, service: PipelineServiceDep
) -> WebhookInfo:
    return await service.webhook(project_id, pipeline_id)


@router.post(
    "/{pipeline_id}/webhook/rotate",
    summary="Rotate the webhook secret",
    description="Issues a new secret. The previous one stays valid for `grace_hours` "
    "(default from settings, 24 h; 0 retires it at once). Takes effect in ingestion "
    "without a deploy.",
    response_model=WebhookInfo,
    responses={200: ex.ok(ex.WEBHOOK), **error_responses(401, 404, 422)},
)
async def rotate_webhook_secret(
    project_id: ProjectDep,
    pipeline_id: PipelineId,
    service: PipelineServiceDep,
    body: Annotated[WebhookRotate | None, Body(openapi_examples=ex.ROTATE_EXAMPLES)] = None,
) -> WebhookInfo:
    return await service.rotate_secret(project_id, pipeline_id, body)
