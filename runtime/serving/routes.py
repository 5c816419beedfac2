"""HTTP of the serving runtime: parse, call `FeatureService`, serialise.

Mounted by `runtime/serving/main.py` (port 8002) and by the standalone process. The
hot path builds no pydantic model per feature: bodies are plain dicts serialised by
msgspec's JSON encoder (a 100-user batch of 50 values in 0.19 ms where pydantic-core's
`to_json` took 0.44, itself 4-5x `json.dumps`) and returned as a `Response`, so FastAPI
skips response validation (the response models below only document the shape in
OpenAPI).

Decisions callers see:
- a user id outside `USER_ID_PATTERN` (e.g. `$where`, `..`) is a 422 `ValidationError`;
  one containing `/` (`../x`, even %2F-encoded) matches no route: 404 `NotFound`;
- a batch of more than `SERVING_MAX_BATCH_USERS` ids is a 413 `BatchTooLarge`, as is a
  body too large to hold that many;
- `?features=` lists served keys separated by commas; blank items are ignored and an
  empty list means every feature; an unknown key is a 422 `UnknownFeature`.

Entities beyond the user (`GET /features/{project}/{entity}/{id}`, `POST
/features/{project}/{entity}/batch` with `{"ids": [...]}`), registered after the user
routes so `users` keeps its own: an entity no deployed feature is per (or a malformed
name) is a 404 `EntityNotFound`; an id is 1-128 printable characters (else a 422 naming
it); an id holding `/` is read through the batch route.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints, TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.types import Receive, Scope

from app.core.auth import ProjectDep, accessible_project, principal_of
from app.core.errors import (
    BatchTooLarge,
    DPSError,
    EntityNotFound,
    ServiceUnavailable,
    error_responses,
)
from app.core.routing import Answer, HotRoute
from app.core.service import get_resources
from app.schemas.common import ENTITY_NAME_PATTERN, RESERVED_ENTITY_NAMES, RequestModel
from app.schemas.event import MAX_ENTITY_ID_LENGTH, USER_ID_PATTERN, entity_id_problem
from runtime.serving.metrics import ServingMetrics
from runtime.serving.reader import Freshness
from runtime.serving.service import FeatureService, Reading
from runtime.serving.timestamps import rfc3339_ms

SINGLE_PATH = "/features/{project_id}/users/{user_id}"
BATCH_PATH = "/features/{project_id}/users/batch"

FEATURE_SERVICE = "feature_service"
"""Key of the FeatureService in `Resources.extras` (set by the serving start-up hook)."""

# Room per id in a batch body: 128 characters, quotes, comma and spacing; plus room for
# the feature selection. A body past this cannot be a valid batch, so it is refused
# before it is parsed.
_BYTES_PER_USER_ID = 140
_BYTES_FOR_REST = 64 * 1024

# The ingestion rule, so any user id an event can carry can be read back.
UserId = Annotated[str, StringConstraints(pattern=USER_ID_PATTERN)]
_USER_ID = TypeAdapter(UserId)
_USER_ID_RE = re.compile(USER_ID_PATTERN)
_MAX_SELECTION_CHARS = 16_384
_SELECTION = TypeAdapter(Annotated[str, StringConstraints(max_length=_MAX_SELECTION_CHARS)])


class UserFeatures(BaseModel):
    """One user's feature values."""

    user_id: str
    features: dict[str, Any] = Field(
        description="`{feature}_{window}` → value; 0 for COUNT/SUM/COUNT_DISTINCT and null "
        "for AVG/MIN/MAX/LAST/FIRST when no event falls in the window",
        examples=[{"cart_adds_5m": 3, "cart_adds_1h": 7, "avg_price_1h": 24.5}],
    )
    last_event_at: datetime | None = Field(
        description="Event time of the newest event counted in any feature of this user; "
        "null when none was (a user compute has not seen yet)"
    )
    updated_at: datetime | None = Field(
        description="When compute last applied events to this user's record: the user's "
        "data is at least this fresh (compare with `as_of` to see compute's delay)"
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


class EntityFeatures(BaseModel):
    """One entity's feature values (e.g. a product's)."""

    id: str = Field(description="The entity id, as asked")
    features: dict[str, Any] = Field(
        description="`{feature}_{window}` → value, as for users",
        examples=[{"product_purchases_1h": 12}],
    )
    last_event_at: datetime | None = Field(
        description="Event time of the newest event counted for this entity; null if none"
    )
    updated_at: datetime | None = Field(description="When compute last wrote this entity")


class EntityFeaturesResponse(EntityFeatures):
    entity: str = Field(examples=["product"])
    as_of: datetime
    version: int


EntityId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ENTITY_ID_LENGTH)]


class EntityBatchRequest(RequestModel):
    ids: list[EntityId] = Field(
        min_length=1, description="Up to SERVING_MAX_BATCH_USERS entity ids (default 1,000)"
    )
    features: list[str] | None = Field(
        default=None, min_length=1, description="Keys to serve; all of the entity's if absent"
    )


class EntityBatchResponse(BaseModel):
    entities: list[EntityFeatures] = Field(description="In request order, duplicates included")
    as_of: datetime
    version: int


_encode = msgspec.json.Encoder().encode
_BATCH = TypeAdapter(BatchRequest)
_BATCH_SCHEMA = BatchRequest.model_json_schema()


async def get_feature_service(request: Request) -> FeatureService:
    """The FeatureService the start-up hook built."""
    return _service(request)


FeatureServiceDep = Annotated[FeatureService, Depends(get_feature_service)]


def _fresh(f: Freshness) -> dict[str, str | None]:
    return {
        "last_event_at": None if f.last_event_ms is None else rfc3339_ms(f.last_event_ms),
        "updated_at": None if f.updated_ms is None else rfc3339_ms(f.updated_ms),
    }


def _payload(body: dict[str, Any]) -> bytes:
    # Non-finite floats cannot be stored (ingestion refuses them, compute skips them);
    # "null" keeps the body valid JSON should one ever appear.
    try:
        payload = _encode(body)  # writes NaN and infinities as null
    except (TypeError, ValueError):
        # What msgspec cannot write (a lone surrogate in a stored string) gets
        # pydantic-core's answer, as before.
        payload = to_json(body, inf_nan_mode="null")
    return payload


def _response(payload: bytes) -> Response:
    return Response(payload, media_type="application/json")


def _json(body: dict[str, Any]) -> Response:
    return _response(_payload(body))


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


_Batch = TypeVar("_Batch", bound=RequestModel)


def _parse_ids(
    body: bytes, adapter: TypeAdapter[_Batch], field: str, noun: str, max_ids: int
) -> _Batch:
    """Counts the ids of `field` before validating them, so an oversized batch is a 413
    whatever its content; other problems are the usual 422 envelope."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        error = {"loc": ("body",), "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}
        raise RequestValidationError([error]) from exc
    if isinstance(data, dict):
        ids = data.get(field)
        if isinstance(ids, list) and len(ids) > max_ids:
            raise BatchTooLarge(f"A batch holds at most {max_ids} {noun}, got {len(ids)}")
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False)]
        raise RequestValidationError(errors) from exc


def _parse_batch(body: bytes, max_users: int) -> BatchRequest:
    """`{"user_ids": [...], "features": ...}`, at most `max_users` ids."""
    return _parse_ids(body, _BATCH, "user_ids", "user ids", max_users)


def _parse_entity_batch(body: bytes, max_ids: int) -> EntityBatchRequest:
    """As `_parse_batch`, for `{"ids": [...]}`; each id must be one an event can carry."""
    batch = _parse_ids(body, _ENTITY_BATCH, "ids", "ids", max_ids)
    bad = [
        {"loc": ("body", "ids", i), "msg": why, "type": "invalid_entity_id"}
        for i, entity_id in enumerate(batch.ids)
        if (why := entity_id_problem(entity_id)) is not None
    ]
    if bad:
        raise RequestValidationError(bad)
    return batch


def _check_entity(entity: str) -> None:
    if entity in RESERVED_ENTITY_NAMES or not _ENTITY_RE.fullmatch(entity):
        raise EntityNotFound(f"No entity named {entity[:64]!r}")


_ENTITY_BATCH = TypeAdapter(EntityBatchRequest)
_ENTITY_BATCH_SCHEMA = EntityBatchRequest.model_json_schema()
_ENTITY_RE = re.compile(ENTITY_NAME_PATTERN)


def _service(request: Request) -> FeatureService:
    service: FeatureService | None = get_resources(request).extras.get(FEATURE_SERVICE)
    if service is None:
        raise ServiceUnavailable("Serving is not configured in this process")
    return service


def _invalid(adapter: TypeAdapter[str], value: str, where: str, name: str) -> Exception:
    """The 422 FastAPI raises for a path or query parameter `value` that `adapter` refuses."""
    try:
        adapter.validate_python(value)
    except ValidationError as exc:
        errors = [{**e, "loc": (where, name, *e["loc"])} for e in exc.errors(include_input=False)]
        return RequestValidationError(errors)
    raise AssertionError(f"{name}={value!r} is valid")  # callers checked it was not


_USER_READS = ("single", "batch")


class _UserReads:
    """The single and batch user reads, counted on `metrics`: what the router's routes
    and the hot routes both serve. Each returns the answer's JSON document."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics
        # Label lookups take a lock: the children counted on every request are kept.
        self._answered = {name: metrics.requests.labels(name, "200") for name in _USER_READS}

    def _count(self, endpoint: str, exc: DPSError | None) -> None:
        if exc is None:
            self._answered[endpoint].inc()
        else:
            self._metrics.requests.labels(endpoint, str(exc.status_code)).inc()

    async def one_user(
        self, project_id: str, user_id: str, features: str | None, service: FeatureService
    ) -> bytes:
        try:
            reading = await service.read_user(project_id, user_id, _keys(features))
        except DPSError as exc:
            self._count("single", exc)
            raise
        self._count("single", None)
        body = {
            "user_id": user_id,
            "features": reading.values[0],
            **_fresh(reading.freshness[0]),
            "as_of": rfc3339_ms(reading.now_ms),
            "version": reading.version,
        }
        return _payload(body)

    async def many_users(self, project_id: str, request: Request, service: FeatureService) -> bytes:
        limit = service.max_batch_users * _BYTES_PER_USER_ID + _BYTES_FOR_REST
        try:
            batch = _parse_batch(await _read_body(request, limit), service.max_batch_users)
            self._metrics.batch_users.observe(len(batch.user_ids))
            reading = await service.read_users(project_id, batch.user_ids, batch.features)
        except DPSError as exc:
            self._count("batch", exc)
            raise
        self._count("batch", None)
        return _payload(_batch_body(batch.user_ids, reading))

    async def serve_one_user(self, request: Request, params: Mapping[str, str]) -> bytes:
        project_id = accessible_project(params["project_id"], principal_of(request))
        service = _service(request)
        user_id = params["user_id"]
        if not _USER_ID_RE.fullmatch(user_id):
            raise _invalid(_USER_ID, user_id, "path", "user_id")
        features = request.query_params.get("features")
        if features is not None and len(features) > _MAX_SELECTION_CHARS:
            raise _invalid(_SELECTION, features, "query", "features")
        return await self.one_user(project_id, user_id, features, service)

    async def serve_many_users(self, request: Request, params: Mapping[str, str]) -> bytes:
        project_id = accessible_project(params["project_id"], principal_of(request))
        return await self.many_users(project_id, request, _service(request))


def hot_routes(metrics: ServingMetrics) -> tuple[HotRoute, HotRoute]:
    """The single and batch user reads, answered before the router
    (app/core/routing.HotRoutes) with the same handling as `serving_router`'s, which
    still declares them (OpenAPI) and counts on the same `metrics`."""
    reads = _UserReads(metrics)

    async def one(scope: Scope, receive: Receive, params: dict[str, str]) -> Answer:
        return Answer(200, await reads.serve_one_user(Request(scope, receive), params))

    async def many(scope: Scope, receive: Receive, params: dict[str, str]) -> Answer:
        return Answer(200, await reads.serve_many_users(Request(scope, receive), params))

    return HotRoute("POST", BATCH_PATH, many), HotRoute("GET", SINGLE_PATH, one)


def serving_router(metrics: ServingMetrics) -> APIRouter:
    """Returns the router of `GET /features/{project_id}/users/{user_id}` and
    `POST /features/{project_id}/users/batch`, counting requests on `metrics`."""
    router = APIRouter(tags=["serving"])
    reads = _UserReads(metrics)

    # What OpenAPI describes; a process that installs `hot_routes` (every one that
    # mounts this router) answers these requests before the router, the same way.
    async def get_users_features(
        project_id: ProjectDep, request: Request, service: FeatureServiceDep
    ) -> Response:
        return _response(await reads.many_users(project_id, request, service))

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
                max_length=_MAX_SELECTION_CHARS,
                description="Comma-separated keys (`cart_adds_5m,views_1h`); default: all",
            ),
        ] = None,
    ) -> Response:
        return _response(await reads.one_user(project_id, user_id, features, service))

    router.add_api_route(
        BATCH_PATH,
        get_users_features,
        methods=["POST"],
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
    router.add_api_route(
        SINGLE_PATH,
        get_user_features,
        methods=["GET"],
        summary="Feature values of one user",
        response_model=UserFeaturesResponse,
        responses=error_responses(401, 404, 422, 503),
    )
    _add_entity_routes(router, metrics)
    return router


def _add_entity_routes(router: APIRouter, metrics: ServingMetrics) -> None:
    """Adds the per-entity reads (after the user routes, which keep `users`)."""

    def count(endpoint: str, exc: DPSError | None) -> None:
        metrics.requests.labels(endpoint, "200" if exc is None else str(exc.status_code)).inc()

    async def get_entity_features(
        project_id: ProjectDep,
        entity: Annotated[str, Path(description="An entity of the deployed features")],
        entity_id: Annotated[str, Path(description="1-128 printable characters")],
        service: FeatureServiceDep,
        features: Annotated[
            str | None,
            Query(max_length=_MAX_SELECTION_CHARS, description="Comma-separated keys"),
        ] = None,
    ) -> Response:
        try:
            _check_entity(entity)
            why = entity_id_problem(entity_id)
            if why is not None:
                error = {"loc": ("path", "entity_id"), "msg": why, "type": "invalid_entity_id"}
                raise RequestValidationError([error])
            reading = await service.read_entities(project_id, entity, [entity_id], _keys(features))
        except DPSError as exc:
            count("entity_single", exc)
            raise
        count("entity_single", None)
        body = {
            "entity": entity,
            "id": entity_id,
            "features": reading.values[0],
            **_fresh(reading.freshness[0]),
            "as_of": rfc3339_ms(reading.now_ms),
            "version": reading.version,
        }
        return _json(body)

    async def get_entities_features(
        project_id: ProjectDep,
        entity: Annotated[str, Path(description="An entity of the deployed features")],
        request: Request,
        service: FeatureServiceDep,
    ) -> Response:
        limit = service.max_batch_users * (MAX_ENTITY_ID_LENGTH * 6 + 8) + _BYTES_FOR_REST
        try:
            _check_entity(entity)
            batch = _parse_entity_batch(await _read_body(request, limit), service.max_batch_users)
            reading = await service.read_entities(project_id, entity, batch.ids, batch.features)
        except DPSError as exc:
            count("entity_batch", exc)
            raise
        count("entity_batch", None)
        items = [
            {"id": entity_id, "features": values, **_fresh(fresh)}
            for entity_id, values, fresh in zip(
                batch.ids, reading.values, reading.freshness, strict=True
            )
        ]
        return _json(
            {"entities": items, "as_of": rfc3339_ms(reading.now_ms), "version": reading.version}
        )

    router.add_api_route(
        "/features/{project_id}/{entity}/batch",
        get_entities_features,
        methods=["POST"],
        summary="Feature values of many entities of one kind (one store read)",
        response_model=EntityBatchResponse,
        responses=error_responses(401, 404, 413, 422, 503),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ENTITY_BATCH_SCHEMA}},
            }
        },
    )
    router.add_api_route(
        "/features/{project_id}/{entity}/{entity_id}",
        get_entity_features,
        methods=["GET"],
        summary="Feature values of one entity (e.g. a product)",
        response_model=EntityFeaturesResponse,
        responses=error_responses(401, 404, 422, 503),
    )


def _batch_body(user_ids: Sequence[str], reading: Reading) -> dict[str, Any]:
    # `_fresh` written out: no dict built and unpacked per user.
    users = [
        {
            "user_id": uid,
            "features": values,
            "last_event_at": None if last_event_ms is None else rfc3339_ms(last_event_ms),
            "updated_at": None if updated_ms is None else rfc3339_ms(updated_ms),
        }
        for uid, values, (last_event_ms, updated_ms) in zip(
            user_ids, reading.values, reading.freshness, strict=True
        )
    ]
    return {"users": users, "as_of": rfc3339_ms(reading.now_ms), "version": reading.version}
