"""Feature definitions: HTTP only, the rules live in `app.services.feature_service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from app.api.deps import FeatureServiceDep, ProjectDep
from app.api.v1 import examples as ex
from app.api.v1.params import Limit, Offset
from app.core.errors import error_responses
from app.schemas.common import OBJECT_ID_PATTERN, Page
from app.schemas.feature import FeatureCreate, FeatureRead, FeatureUpdate

router = APIRouter(prefix="/api/v1/projects/{project_id}/features", tags=["features"])

FeatureId = Annotated[
    str, Path(max_length=64, description="Feature id (24 hex)", examples=[ex.FEATURE_ID])
]

_RULES = (
    "`field` is required for every aggregation but COUNT (which takes none), must exist on "
    "`source_event` and be a `number` for SUM/AVG/MIN/MAX; `source_event` must exist in "
    "the pipeline `pipeline_id` of this project. Windows `<n><m|h|d>` from 1m to 90d are "
    "deduplicated and sorted by duration. The served keys `{name}_{window}` must be unique "
    "in the project (409 ServedKeyConflict), and so must the name (409 FeatureNameTaken). "
    'A derived feature (`"kind": "derived"`) has an `expression` instead of `source_event`, '
    "`aggregation`, `field` and `time_windows`: served keys of the project's number-valued "
    "aggregates, numbers, `+ - * /`, parentheses, `min`, `max`, `coalesce`; a syntax error "
    "or a bad reference is a 422 naming its position. It is served as `{name}`."
)


@router.get(
    "",
    summary="List features",
    description="Features of the project, oldest first (ties by id), filtered by pipeline "
    "and enabled flag.",
    response_model=Page[FeatureRead],
    responses={200: ex.ok(ex.page(ex.FEATURE)), **error_responses(401, 404, 422)},
)
async def list_features(
    project_id: ProjectDep,
    service: FeatureServiceDep,
    pipeline_id: Annotated[str | None, Query(pattern=OBJECT_ID_PATTERN)] = None,
    enabled: bool | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[FeatureRead]:
    return await service.list_page(
        project_id, pipeline_id=pipeline_id, enabled=enabled, limit=limit, offset=offset
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a feature",
    description=_RULES,
    response_model=FeatureRead,
    responses={201: ex.ok(ex.FEATURE, "Created"), **error_responses(401, 404, 409, 422)},
)
async def create_feature(
    project_id: ProjectDep,
    service: FeatureServiceDep,
    body: Annotated[FeatureCreate, Body(openapi_examples=ex.FEATURE_CREATE_EXAMPLES)],
) -> FeatureRead:
    return await service.create(project_id, body)


@router.get(
    "/{feature_id}",
    summary="Get a feature",
    response_model=FeatureRead,
    responses={200: ex.ok(ex.FEATURE), **error_responses(401, 404)},
)
async def get_feature(
    project_id: ProjectDep, feature_id: FeatureId, service: FeatureServiceDep
) -> FeatureRead:
    return await service.get(project_id, feature_id)


@router.put(
    "/{feature_id}",
    summary="Replace a feature",
    description="Full replacement; `revision` must be the stored one (409 RevisionConflict "
    "otherwise). " + _RULES,
    response_model=FeatureRead,
    responses={200: ex.ok(ex.FEATURE), **error_responses(401, 404, 409, 422)},
)
async def update_feature(
    project_id: ProjectDep,
    feature_id: FeatureId,
    service: FeatureServiceDep,
    body: Annotated[FeatureUpdate, Body(openapi_examples=ex.FEATURE_UPDATE_EXAMPLES)],
) -> FeatureRead:
    return await service.update(project_id, feature_id, body)


@router.delete(
    "/{feature_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a feature",
    description="409 FeatureInUse while a derived feature reads one of its served keys.",
    response_class=Response,
    responses=error_responses(401, 404, 409),
)
async def delete_feature(
    project_id: ProjectDep, feature_id: FeatureId, service: FeatureServiceDep
) -> Response:
    await service.delete(project_id, feature_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
