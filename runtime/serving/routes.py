"""HTTP of the serving runtime: parse, call `FeatureService`, serialise.

Mounted by `runtime/serving/main.py` (port 8002) and by the standalone process. The
hot path builds no pydantic model per feature: bodies are plain dicts serialised by
pydantic-core's `to_json` (4-5x faster than `json.dumps` for 250 keys, measured; orjson is
not installed) and returned as a `Response`, so FastAPI skips response validation (the
response models below only document the shape in OpenAPI).

Decisions callers see:
- a user id outside `USER_ID_PATTERN` (e.g. `$where`, `..`) is a 422 `ValidationError`;
  one containing `/` (`../x`, even %2F-encoded) matches no route: 404 `NotFound`;
- a batch of more than `SERVING_MAX_BATCH_USERS` ids is a 413 `BatchTooLarge`, as is a
  body too large to hold that many;
- `?features=` lists served keys separated by commas; blank items are ignored and an
  empty list means every feature; an unknown key is a 422 `UnknownFeature`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError
from pydantic_core import to_json

from app.core.auth import ProjectDep
from app.core.errors import BatchTooLarge, DPSError, ServiceUnavailable, error_responses
from app.core.service import get_resources
from app.schemas.common import RequestModel
from app.schemas.event import USER_ID_PATTERN
from runtime.serving.metrics import ServingMetrics
from runtime.serving.service import FeatureService, Reading

FEATURE_SERVICE = "feature_service"
"""Key of the FeatureService in `Resources.extras` (set by the serving start-up hook)."""

# Room per id in a batch body: 128 characters, quotes, comma and spacing; plus room for
# the feature selection. A body past this cannot be a valid batch, so it is refused
# before it is parsed.
_BYTES_PER_USER_ID = 140
_BYTES_FOR_REST = 64 * 1024

# The ingestion rule, so any user id an event can carry can be read back.
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]


class UserFeatures(BaseModel):
    """One user's feature values."""

    user_id: str
    features: dict[str, Any] = Field(
        description="`{feature}_{window}` → value; 0 for COUNT/SUM/COUNT_DISTINCT and null "
        "for AVG/MIN/MAX/LAST/FIRST when no event falls in the window",
        examples=[{"cart_adds_5m": 3, "cart_adds_1h": 7, "avg_price_1h": 24.5}],
    )


class UserFeaturesResponse(UserFeatures):
    as_of: datetime = Field(description="Server time the windows were evaluated at (RFC 3339)")
    version: int = Field(description="Deployment version whose features were served")


class BatchRequest(RequestModel):
    user_ids: list[UserId] = Field(
        min_length=1, description="Up to SERVING_MAX_BATCH_USERS ids (default 1,000)"
    )
    features: list[str] | None = Field(
        default=None, min_length=1, description="Keys to serve; all enabled features if absent"
    )


class BatchResponse(BaseModel):
    users: list[UserFeatures] = Field(description="In request order, duplicates included")
    as_of: datetime
    version: int


_BATCH = TypeAdapter(BatchRequest)
_BATCH_SCHEMA = BatchRequest.model_json_schema()


async def get_feature_service(request: Request) -> FeatureService:
    """The FeatureService the start-up hook built."""
    service: FeatureService | None = get_resources(request).extras.get(FEATURE_SERVICE)
    if service is None:
        raise ServiceUnavailable("Serving is not configured in this process")
    return service


FeatureServiceDep = Annotated[FeatureService, Depends(get_feature_service)]


def _as_of(now_ms: int) -> str:
    moment = datetime.fromtimestamp(now_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(body: dict[str, Any]) -> Response:
    # Non-finite floats cannot be stored (ingestion refuses them, compute skips them);
    # "null" keeps the body valid JSON should one ever appear.
    return Response(to_json(body, inf_nan_mode="null"), media_type="application/json")


def _keys(features: str | None) -> list[str] | None:
    if features is None:
        return None
    keys = [k for k in (part.strip() for part in features.split(",")) if k]
    return keys or None


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BatchTooLarge(f"Batch body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_batch(body: bytes, max_users: int) -> BatchRequest:
    """Counts the ids before validating them, so an oversized batch is a 413 whatever
    its content; other problems are the usual 422 envelope."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        error = {"loc": ("body",), "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}
        raise RequestValidationError([error]) from exc
    if isinstance(data, dict):
        ids = data.get("user_ids")
        if isinstance(ids, list) and len(ids) > max_users:
            raise BatchTooLarge(f"A batch holds at most {max_users} user ids, got {len(ids)}")
    try:
        return _BATCH.validate_python(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        raise RequestValidationError(errors) from exc


def _count(metrics: ServingMetrics, endpoint: str, exc: DPSError | None) -> None:
    status = "200" if exc is None else str(exc.status_code)
    metrics.requests.labels(endpoint, status).inc()


def serving_router(metrics: ServingMetrics) -> APIRouter:
    """Returns the router of `GET /features/{project_id}/users/{user_id}` and
    `POST /features/{project_id}/users/batch`, counting requests on `metrics`."""
    router = APIRouter(prefix="/features", tags=["serving"])

    @router.post(
        "/{project_id}/users/batch",
        summary="Feature values of many users (one store read)",
        response_model=BatchResponse,
        responses=error_responses(401, 404, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _BATCH_SCHEMA}},
            }
        },
    )
    async def get_users_features(
        project_id: ProjectDep, request: Request, service: FeatureServiceDep
    ) -> Response:
        limit = service.max_batch_users * _BYTES_PER_USER_ID + _BYTES_FOR_REST
        try:
            batch = _parse_batch(await _read_body(request, limit), service.max_batch_users)
            metrics.batch_users.observe(len(batch.user_ids))
            reading = await service.read_users(project_id, batch.user_ids, batch.features)
        except DPSError as exc:
            _count(metrics, "batch", exc)
            raise
        _count(metrics, "batch", None)
        return _json(_batch_body(batch.user_ids, reading))

    @router.get(
        "/{project_id}/users/{user_id}",
        summary="Feature values of one user",
        response_model=UserFeaturesResponse,
        responses=error_responses(401, 404, 422, 503),
    )
    async def get_user_features(
        project_id: ProjectDep,
        user_id: Annotated[
            str,
            Path(
                pattern=USER_ID_PATTERN,
                description="1-128 of [A-Za-z0-9._:@+=-], not starting with '.'",
            ),
        ],
        service: FeatureServiceDep,
        features: Annotated[
            str | None,
            Query(
                max_length=16_384,
                description="Comma-separated keys (`cart_adds_5m,views_1h`); default: all",
            ),
        ] = None,
    ) -> Response:
        try:
            reading = await service.read_user(project_id, user_id, _keys(features))
        except DPSError as exc:
            _count(metrics, "single", exc)
            raise
        _count(metrics, "single", None)
        body = {
            "user_id": user_id,
            "features": reading.values[0],
            "as_of": _as_of(reading.now_ms),
            "version": reading.version,
        }
        return _json(body)

    return router


def _batch_body(user_ids: Sequence[str], reading: Reading) -> dict[str, Any]:
    users = [
        {"user_id": uid, "features": values}
        for uid, values in zip(user_ids, reading.values, strict=True)
    ]
    return {"users": users, "as_of": _as_of(reading.now_ms), "version": reading.version}
