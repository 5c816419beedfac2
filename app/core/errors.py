"""One error hierarchy and one envelope for every 4xx/5xx.

Every error leaves the service as `{"error": "<Name>", "detail": "<text>", "fields": [...]}`
(`fields` only for validation errors). Services raise `DPSError` subclasses; the
handlers installed by `install_error_handlers` turn them, FastAPI's request validation
errors and Starlette's routing errors into that envelope.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One invalid input location."""

    loc: list[str | int] = Field(description="Path to the offending value, e.g. ['body', 'name']")
    msg: str
    type: str


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: str = Field(description="Machine-readable error name", examples=["PipelineNotFound"])
    detail: str = Field(description="Human-readable explanation")
    fields: list[FieldError] | None = Field(default=None, description="Invalid inputs, if any")


class DPSError(Exception):
    """Base of every error the service raises on purpose.

    The class name is the envelope's `error`; subclasses set `status_code`.
    """

    status_code: int = 500
    headers: Mapping[str, str] | None = None

    def __init__(
        self,
        detail: str,
        *,
        fields: Sequence[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = list(fields) if fields is not None else None
        if headers is not None:
            self.headers = headers

    @property
    def name(self) -> str:
        return type(self).__name__

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(error=self.name, detail=self.detail, fields=self.fields)


class Unauthorized(DPSError):
    status_code = 401
    headers = {"WWW-Authenticate": "Bearer"}


class NotFound(DPSError):
    status_code = 404


class ProjectNotFound(NotFound):
    pass


class PipelineNotFound(NotFound):
    pass


class EventNotFound(NotFound):
    pass


class FeatureNotFound(NotFound):
    pass


class DeploymentNotFound(NotFound):
    pass


class EntityNotFound(NotFound):
    """The deployed config serves no feature per this entity (`/features/{p}/{entity}/..`)."""


class Conflict(DPSError):
    status_code = 409


class PayloadTooLarge(DPSError):
    status_code = 413


class UnprocessableEntity(DPSError):
    status_code = 422


class ValidationFailed(UnprocessableEntity):
    """Input that parsed but breaks a rule; `fields` says where."""


class TooManyRequests(DPSError):
    status_code = 429


class ServiceUnavailable(DPSError):
    """A dependency did not answer; retrying later may succeed. Every 503 says when."""

    status_code = 503
    headers = {"Retry-After": "1"}


class ConfigStoreUnavailable(ServiceUnavailable):
    """The config store (MongoDB) did not answer in time; nothing was changed by this call
    unless a later read shows it (see Retry-After)."""


class CacheUnavailable(ServiceUnavailable):
    """The cache (Redis) did not answer in time (see Retry-After)."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the envelope for the given status codes."""
    return {code: {"model": ErrorEnvelope} for code in codes}


_STATUS_NAMES = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
}


def _json(status: int, envelope: ErrorEnvelope, headers: Mapping[str, str] | None) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content=envelope.model_dump(exclude_none=True),
        headers=dict(headers) if headers else None,
    )


# Tags of the request bodies' discriminated unions (a feature's `kind`). Pydantic puts
# the tag in an error's location (`body.derived.expression`); the envelope reports the
# path of the field in the body, as it does for a plain model (`body.expression`).
BODY_UNION_TAGS = frozenset({"aggregate", "derived"})


def _location(err: Mapping[str, Any]) -> list[str | int]:
    loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
    if len(loc) > 1 and loc[0] == "body" and loc[1] in BODY_UNION_TAGS:
        del loc[1]
    return loc


def validation_fields(errors: Sequence[Any]) -> list[FieldError]:
    """Pydantic/FastAPI error dicts → FieldError list (input values are never echoed back)."""
    return [
        FieldError(
            loc=_location(err),
            msg=str(err.get("msg", "")),
            type=str(err.get("type", "")),
        )
        for err in errors
    ]


async def _dps_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DPSError)
    if exc.status_code >= 500:
        logger.error("request failed: %s: %s", exc.name, exc.detail)
    return _json(exc.status_code, exc.envelope(), exc.headers)


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = validation_fields(exc.errors())
    body_json_error = any(f.type == "json_invalid" for f in fields)
    if body_json_error:
        envelope = ErrorEnvelope(error="MalformedJSON", detail="Request body is not valid JSON")
    else:
        first = fields[0] if fields else None
        where = ".".join(str(p) for p in first.loc) if first else "request"
        detail = f"{where}: {first.msg}" if first else "Invalid request"
        envelope = ErrorEnvelope(error="ValidationError", detail=detail, fields=fields)
    return _json(422, envelope, None)


async def _http_exception(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    name = _STATUS_NAMES.get(exc.status_code, "HTTPError")
    detail = exc.detail if isinstance(exc.detail, str) else name
    return _json(exc.status_code, ErrorEnvelope(error=name, detail=detail), exc.headers)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # A bug, not an input problem: log the traceback, answer with the envelope and
    # no internals. The name says it is ours, never "Unknown".
    logger.exception("unhandled error", exc_info=exc)
    return _json(500, ErrorEnvelope(error="InternalError", detail="Internal server error"), None)


async def _backend_down(request: Request, exc: Exception) -> JSONResponse:
    # A backend's own "unavailable" error that no service translated (the config API
    # reading its store, a route writing the cache): a 503 with Retry-After, never a 500.
    from app.db.cache import CacheUnavailable as CacheDown
    from app.db.config_store import ConfigStoreUnavailable as StoreDown

    error: ServiceUnavailable
    if isinstance(exc, StoreDown):
        error = ConfigStoreUnavailable(f"The config store did not answer: {exc}")
    elif isinstance(exc, CacheDown):
        error = CacheUnavailable(f"The cache did not answer: {exc}")
    else:
        error = EventLogUnavailable(f"The event log did not answer: {exc}")
    return await _dps_error(request, error)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the one envelope."""
    # Imported here: app.db modules import app.schemas, which imports this module.
    from app.db.cache import CacheUnavailable as CacheDown
    from app.db.config_store import ConfigStoreUnavailable as StoreDown
    from app.db.event_log import EventLogUnavailable as LogDown

    for backend_error in (StoreDown, CacheDown, LogDown):
        app.add_exception_handler(backend_error, _backend_down)
    app.add_exception_handler(DPSError, _dps_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(Exception, _unexpected)


# -- ingestion (runtime/ingestion) ---------------------------------------------------------
# Webhook senders are not bearer-token clients, so these carry no WWW-Authenticate header.


class InvalidSignature(DPSError):
    """Missing or malformed webhook headers, timestamp outside the tolerance, or no match."""

    status_code = 401


class ReplayedWebhook(Conflict):
    """This webhook-id was already accepted within the tolerance window."""


class PipelineInactive(Conflict):
    """The pipeline exists in the deployed config but is not active."""


class UnsupportedMediaType(DPSError):
    status_code = 415


class MalformedJSON(UnprocessableEntity):
    """The body is not a JSON document we accept (syntax, NaN/Infinity, nesting)."""


class InvalidBatch(UnprocessableEntity):
    """The batch body is not `{"events": [...]}` with at least one event."""


class UnknownEvent(ValidationFailed):
    """The event is not in the deployed pipeline, or it is disabled."""


class InvalidEvent(ValidationFailed):
    """The envelope or its properties break the deployed schema; `fields` says where."""


class EventInFuture(ValidationFailed):
    """The event's timestamp is further ahead than the allowed clock skew."""


class RateLimited(TooManyRequests):
    """The project's or the pipeline's event rate limit is exhausted (see Retry-After)."""


class EventLogUnavailable(ServiceUnavailable):
    """The event log did not acknowledge the events in time. They may still arrive (the
    producer retries what it holds): retry with the same event ids after Retry-After, and
    a copy that did arrive counts once (compute drops repeated event ids)."""


class EventInFlight(Conflict):
    """Another request with this event id (or webhook-id) is being produced right now.
    Nothing was acknowledged: retry after Retry-After, and the retry is answered as a
    duplicate (the other request succeeded) or produced (it failed)."""

    headers = {"Retry-After": "1"}


# -- serving runtime -------------------------------------------------------------------
class UnknownFeature(UnprocessableEntity):
    """A feature selection named keys the deployed config does not serve."""


class BatchTooLarge(PayloadTooLarge):
    """A batch read named more user ids than the serving limit allows."""


class OnlineStoreUnavailable(ServiceUnavailable):
    """The online store did not answer a feature read (see Retry-After)."""

    headers = {"Retry-After": "1"}


# -- deployments and the config loader -------------------------------------------------
class NothingToDeploy(Conflict):
    """The draft equals the live deployment: deploying it would not change anything."""


class InvalidConfig(UnprocessableEntity):
    """The draft cannot go live; `fields` lists every problem (loc `[features, id, attr]`)."""


class DeploymentConflict(Conflict):
    """Another deployment of the project is in progress or took this version first."""


class RollbackNotAllowed(Conflict):
    """The target deployment never went live (pending, deploying or failed)."""


class AlreadyLive(Conflict):
    """The rollback target is the version that is live now."""


class DeploymentFailed(ServiceUnavailable):
    """Publishing the new version failed; it is recorded `failed` and the previous one
    stays live."""


class ConfigUnavailable(ServiceUnavailable):
    """Neither Redis nor the config store answered and no copy of the config is held."""


# -- config API: pipelines, events, features -------------------------------------------
class PipelineNameTaken(Conflict):
    """Another pipeline of the project has this name."""


class FeatureNameTaken(Conflict):
    """Another feature of the project has this name."""


class EventNameTaken(Conflict):
    """The pipeline already has an event of this name."""


class RevisionConflict(Conflict):
    """The edit was based on an older revision; the detail gives the current one."""


class PipelineInUse(Conflict):
    """Features still use the pipeline (delete with `?cascade=true` to remove them too)."""


class EventInUse(Conflict):
    """A feature's `source_event` is this event."""


class FieldInUse(Conflict):
    """The edit removes or retypes a field a feature aggregates."""


class FeatureInUse(Conflict):
    """A derived feature reads a served key the delete or update would remove."""


class ServedKeyConflict(Conflict):
    """Another feature already produces one of the served keys `{name}_{window}`."""


class PipelineNotReady(Conflict):
    """The pipeline cannot be activated yet (it has no enabled event)."""


class TemplateNotFound(NotFound):
    """No pipeline template has this name."""


class DraftChanged(Conflict):
    """The draft kept changing while a rollback reset it; retrying the rollback finishes it."""
