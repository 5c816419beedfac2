"""Deployments: HTTP only, the rules live in `app.services.deployment_service`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, status

from app.api.deps import DeploymentServiceDep, PrincipalDep, ProjectDep
from app.api.v1.params import Limit, Offset
from app.core.errors import error_responses
from app.schemas.common import Page
from app.schemas.deployment import (
    DeploymentCreate,
    DeploymentRead,
    PendingChanges,
    RollbackRead,
)

router = APIRouter(prefix="/api/v1/projects/{project_id}/deployments", tags=["deployments"])

DeploymentId = Annotated[str, Path(max_length=64, description="Deployment id (24 hex)")]

_DEPLOY = (
    "Validates the whole draft (every enabled feature's pipeline is active, its source "
    "event exists and is enabled, its field exists and is a `number` for SUM/AVG/MIN/MAX, "
    "windows parse, served keys `{name}_{window}` are unique) and makes it the live config "
    "as version N+1. The snapshot keeps inactive pipelines and disabled events/features "
    "with their flags; runtimes run only the active/enabled ones.\n\n"
    "With an event archive (`ANALYTICS` set), a version that adds features or changes one's "
    "definition answers `backfilling`: the previous version keeps serving while those "
    "features are filled from the archive (progress in `backfill`), then the version goes "
    "`success`, or `failed` with the reason and the previous one stays live.\n\n"
    "- 409 `NothingToDeploy`: the draft equals the live version.\n"
    "- 409 `DeploymentConflict`: another deployment of the project is in progress or took "
    "the version first; retry.\n"
    "- 422 `InvalidConfig`: `fields` lists every problem, `loc` = `[features, id, attr]`.\n"
    "- 503 `DeploymentFailed`: publishing to the runtimes failed; the version is recorded "
    "`failed` and the previous one stays live."
)
_ROLLBACK = (
    "Re-activates the deployment's snapshot as a new version (its `rolled_back_from` names "
    "the target), marks the successful versions after the target `rolled_back` and resets "
    "the draft to the target, so nothing is pending afterwards. Pipelines deleted since "
    "come back with their ids and a new webhook secret. The answer says so: "
    "`draft_reset` is true and `discarded_changes` lists the draft's pending edits "
    "(as `GET .../pending` showed them just before) that the reset threw away.\n\n"
    "- 404 `DeploymentNotFound`.\n"
    "- 409 `RollbackNotAllowed`: the target never went live (pending, deploying, failed).\n"
    "- 409 `AlreadyLive`: the target's config is the live one.\n"
    "- 409 `DeploymentConflict`, `DraftChanged`: concurrent activity; retry.\n"
    "- 503 `DeploymentFailed`: as for a deploy."
)


@router.get(
    "",
    summary="List deployments",
    description="The project's deployment history, newest first.",
    response_model=Page[DeploymentRead],
    responses=error_responses(401, 404, 422),
)
async def list_deployments(
    project_id: ProjectDep,
    service: DeploymentServiceDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[DeploymentRead]:
    return await service.list_deployments(project_id, limit=limit, offset=offset)


@router.get(
    "/pending",
    summary="Pending changes",
    description="What a deploy would change: the draft against the live (latest "
    "successful) version, one entry per created, updated or deleted pipeline, event and "
    "feature. `base_version` is null before the first deploy.",
    response_model=PendingChanges,
    responses=error_responses(401, 404),
)
async def pending_changes(project_id: ProjectDep, service: DeploymentServiceDep) -> PendingChanges:
    return await service.pending(project_id)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Deploy the draft",
    description=_DEPLOY,
    response_model=DeploymentRead,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def deploy(
    project_id: ProjectDep,
    principal: PrincipalDep,
    service: DeploymentServiceDep,
    body: Annotated[DeploymentCreate | None, Body()] = None,
) -> DeploymentRead:
    description = body.description if body is not None else ""
    return await service.deploy(project_id, principal.sub, description)


@router.get(
    "/{deployment_id}",
    summary="Get a deployment",
    response_model=DeploymentRead,
    responses=error_responses(401, 404),
)
async def get_deployment(
    project_id: ProjectDep, deployment_id: DeploymentId, service: DeploymentServiceDep
) -> DeploymentRead:
    return await service.get(project_id, deployment_id)


@router.post(
    "/{deployment_id}/rollback",
    status_code=status.HTTP_201_CREATED,
    summary="Roll back to a deployment",
    description=_ROLLBACK,
    response_model=RollbackRead,
    responses=error_responses(401, 404, 409, 503),
)
async def rollback(
    project_id: ProjectDep,
    deployment_id: DeploymentId,
    principal: PrincipalDep,
    service: DeploymentServiceDep,
) -> RollbackRead:
    return await service.rollback(project_id, deployment_id, principal.sub)
