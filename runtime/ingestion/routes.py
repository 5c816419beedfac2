"""HTTP of the ingestion runtime: read the request, call `IngestionService`, answer.

Mounted by `runtime/ingestion/main.py` (port 8001) and by the standalone process. There
is no bearer-token auth here: the webhook signature is the authentication.

Decisions callers see (also in the OpenAPI descriptions):
- bodies must be `application/json` (UTF-8): anything else is 415;
- a single event body is at most INGEST_MAX_EVENT_BYTES (32 KB) of raw bytes; a batch at
  most INGEST_MAX_BATCH_BYTES (500 KB) and INGEST_MAX_BATCH_EVENTS (2,500) events, each at
  most 32 KB as compact JSON: 413 beyond. Content-Length is checked first, then the
  bytes are counted while reading, so a missing or lying Content-Length cannot make the
  server buffer more than the limit;
- a new single event is 202 `{"accepted": 1, "duplicates": 0, "late": 0, "event_id": ...}`;
  one whose event id was seen in the last 24 h is 200 `{"accepted": 0, "duplicates": 1, ...}`;
- `late` counts accepted events older than every window of the deployed features they
  feed: valid, produced and archived, but counted in no feature (lateness.py);
- a batch is `{"events": [...]}` (an object, so it can grow fields) and is answered 202
  `{"accepted", "duplicates", "late", "rejected": [{"index", "error", "detail", "fields"?}]}`
  whenever it was processed, even if every item was rejected (per-item errors are
  permanent: resending the same batch cannot fix them);
- a replayed webhook-id is 409 `ReplayedWebhook`: the delivery was authentic and its
  events were handled by the first copy;
- a request whose webhook-id, or a single event whose event id, another request is
  producing right now is 409 `EventInFlight` with Retry-After: nothing was acknowledged,
  and the retry is answered as a duplicate or produced. In a batch such an item is listed
  in `rejected` with that error and the 202 carries Retry-After: unlike the other
  per-item errors it is transient, so resend those items (in a new delivery: the batch's
  webhook-id is then taken).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from app.core.errors import (
    DPSError,
    EventInFlight,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
    error_responses,
)
from app.core.routing import Answer, HotRoute
from app.core.service import Resources, get_resources
from app.schemas.event import BatchIngestResponse, EventEnvelopeDoc, SingleIngestResponse
from runtime.ingestion.service import IngestionService

logger = logging.getLogger(__name__)

INGESTION_SERVICE = "ingestion_service"
"""Key of the IngestionService in `Resources.extras` (set by the ingestion start-up hook)."""

SINGLE_PATH = "/ingest/{project_id}/{pipeline_id}"
BATCH_PATH = "/ingest/{project_id}/{pipeline_id}/batch"

_ERRORS = error_responses(401, 404, 409, 413, 415, 422, 429, 503)


def get_ingestion(request: Request) -> IngestionService:
    """The running process's IngestionService; raises ServiceUnavailable if it has none."""
    return _service(get_resources(request))


def _service(resources: Resources) -> IngestionService:
    service = resources.extras.get(INGESTION_SERVICE)
    if not isinstance(service, IngestionService):
        raise ServiceUnavailable("Ingestion is not running in this process")
    return service


def _check_content_type(headers: Mapping[str, str]) -> None:
    raw = headers.get("content-type", "")
    media_type, _, params = raw.partition(";")
    if media_type.strip().lower() != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {raw[:64]!r}"
            if raw
            else "Content-Type must be application/json"
        )
    charset = params.strip().lower()
    if charset and charset.replace(" ", "") not in ("charset=utf-8", 'charset="utf-8"'):
        raise UnsupportedMediaType("Only UTF-8 JSON is accepted (charset=utf-8)")


def _check_declared_length(headers: Mapping[str, str], limit: int, what: str) -> None:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Body of {declared} bytes exceeds the {what} limit of {limit}")


async def _read_body(receive: Receive, limit: int, what: str) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientDisconnect()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False) and len(body) <= limit:
        return body  # the usual case: RequestLimits hands the body over in one message
    buffer = bytearray(body)
    while len(buffer) <= limit and message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        buffer += message.get("body", b"")
    if len(buffer) > limit:
        raise PayloadTooLarge(f"Body exceeds the {what} limit of {limit} bytes")
    return bytes(buffer)


def _scope_headers(scope: Scope) -> dict[str, str]:
    # The first of repeated headers wins, as with Starlette's Headers.get.
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}


def _json(content: Mapping[str, Any]) -> bytes:
    # As JSONResponse renders it.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _handle(
    service: IngestionService,
    headers: Mapping[str, str],
    receive: Receive,
    project_id: str,
    pipeline_id: str,
    *,
    batch: bool,
) -> Answer:
    settings = service.settings
    limit = settings.max_batch_bytes if batch else settings.max_event_bytes
    what = "batch" if batch else "single-event"
    try:
        _check_content_type(headers)
        _check_declared_length(headers, limit, what)
        target = await service.target(project_id, pipeline_id)
        body = await _read_body(receive, limit, what)
        if batch:
            result = await service.ingest_batch(target, body, headers)
        else:
            result = await service.ingest_single(target, body, headers)
    except DPSError as exc:
        service.metrics.rejected_requests.labels(reason=exc.name).inc()
        level = logging.WARNING if exc.status_code >= 500 else logging.INFO
        if not isinstance(exc, RateLimited):  # a flood of 429s would flood the log
            context = {"project_id": project_id[:64], "pipeline_id": pipeline_id[:64]}
            logger.log(level, "ingest refused: %s: %s", exc.name, exc.detail, extra=context)
        raise
    if batch:
        if result.rejected:
            logger.info(
                "batch partly rejected: %d accepted, %d rejected (first: %s)",
                result.accepted,
                len(result.rejected),
                result.rejected[0]["error"],
                extra={"project_id": project_id[:64], "pipeline_id": pipeline_id[:64]},
            )
        content: dict[str, Any] = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "late": result.late,
            "rejected": result.rejected,
        }
        headers_out = EventInFlight.headers if result.in_flight else None
        return Answer(202, _json(content), headers_out)
    status = 202 if result.accepted else 200
    content = {
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "late": result.late,
        "event_id": result.event_id,
    }
    return Answer(status, _json(content))


def _response(answer: Answer) -> Response:
    return Response(
        answer.body,
        status_code=answer.status,
        headers=dict(answer.headers) if answer.headers else None,
        media_type="application/json",
    )


def hot_routes() -> tuple[HotRoute, HotRoute]:
    """The two ingest routes, answered before the router (app/core/routing.HotRoutes):
    the same handling as `ingestion_router`'s, which still declares them."""

    async def one(scope: Scope, receive: Receive, params: dict[str, str]) -> Answer:
        service = _service(_scope_resources(scope))
        headers = _scope_headers(scope)
        return await _handle(
            service, headers, receive, params["project_id"], params["pipeline_id"], batch=False
        )

    async def many(scope: Scope, receive: Receive, params: dict[str, str]) -> Answer:
        service = _service(_scope_resources(scope))
        headers = _scope_headers(scope)
        return await _handle(
            service, headers, receive, params["project_id"], params["pipeline_id"], batch=True
        )

    return (
        HotRoute("POST", SINGLE_PATH, one),
        HotRoute("POST", BATCH_PATH, many),
    )


def _scope_resources(scope: Scope) -> Resources:
    resources: Resources | None = getattr(scope["app"].state, "resources", None)
    if resources is None:
        raise ServiceUnavailable("Service is starting")
    return resources


def _body_doc(schema: dict[str, Any], description: str) -> dict[str, Any]:
    # The bodies are read raw (for the signature and the size limits), so FastAPI does
    # not know their shape; it is documented here, inline.
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def ingestion_router() -> APIRouter:
    """Returns the router with `POST /ingest/{project_id}/{pipeline_id}` and `.../batch`."""
    router = APIRouter(tags=["ingestion"])
    envelope = EventEnvelopeDoc.model_json_schema()
    batch_body = {
        "type": "object",
        "properties": {"events": {"type": "array", "items": envelope, "minItems": 1}},
        "required": ["events"],
        "additionalProperties": False,
    }

    # What OpenAPI describes; a process that installs `hot_routes()` (every one that
    # mounts this router) answers these requests before the router, the same way. The
    # only parameters are the two path strings, checked by IngestionService.target.
    async def serve(request: Request, project_id: str, pipeline_id: str, batch: bool) -> Response:
        answer = await _handle(
            get_ingestion(request),
            request.headers,
            request.receive,
            project_id,
            pipeline_id,
            batch=batch,
        )
        return _response(answer)

    async def ingest_one(request: Request, project_id: str, pipeline_id: str) -> Response:
        return await serve(request, project_id, pipeline_id, batch=False)

    async def ingest_batch(request: Request, project_id: str, pipeline_id: str) -> Response:
        return await serve(request, project_id, pipeline_id, batch=True)

    router.add_api_route(
        SINGLE_PATH,
        ingest_one,
        methods=["POST"],
        summary="Ingest one signed event",
        description=(
            "Standard Webhooks signature required (webhook-id, webhook-timestamp, "
            "webhook-signature). 202 when produced, 200 when its event id was already "
            "seen within 24 h (not produced again). 409 EventInFlight (with Retry-After) "
            "when another request is producing the same event id or webhook-id: retry."
        ),
        status_code=202,
        response_model=SingleIngestResponse,
        responses={200: {"model": SingleIngestResponse}, **_ERRORS},
        openapi_extra=_body_doc(envelope, "One event envelope (at most 32 KB)"),
    )
    router.add_api_route(
        BATCH_PATH,
        ingest_batch,
        methods=["POST"],
        summary="Ingest a signed batch of events",
        description=(
            'Body `{"events": [envelope, ...]}`: at most 2,500 events and 500 KB, each '
            "event at most 32 KB. Valid events are accepted even if others are rejected; "
            "`rejected` lists the others by index. Items rejected as EventInFlight (another "
            "request is producing that event id; the answer then has Retry-After) are the "
            "only transient ones: resend them later in a new delivery."
        ),
        status_code=202,
        response_model=BatchIngestResponse,
        responses=_ERRORS,
        openapi_extra=_body_doc(batch_body, "A batch of event envelopes"),
    )
    return router
