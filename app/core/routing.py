"""Routes whose requests skip FastAPI's per-request work on hot paths.

FastAPI solves an endpoint's dependencies and validates its parameters on every request,
inside an exit stack of its own: on ingestion's single event that was ~10% of the
process's CPU (py-spy) for an endpoint whose only parameters are two path strings.

`HotRoutes` skips that and more for the hottest paths: a pure ASGI layer, just inside
`RequestLimits` (app/core/limits.py: body size and JSON depth are checked before it),
that answers the requests of its routes itself, without the router's matching through
every included router, the exception and exit-stack middlewares, or a Request and a
Response object per request: those layers were ~20% of an ingested single event's CPU
(py-spy). The routes stay declared on their router as usual (OpenAPI, and the router
still serves them wherever no HotRoutes is installed); errors keep the one envelope,
since an exception is answered by the app's own handler for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from inspect import isawaitable
from typing import Any

from fastapi import Request
from starlette._utils import get_route_path
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send


@dataclass(frozen=True, slots=True)
class Answer:
    """A hot route's JSON answer: `body` is the encoded JSON document."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None = None


# (scope, receive, path parameters) -> the answer; raises to answer with an error.
HotHandler = Callable[[Scope, Receive, dict[str, str]], Awaitable[Answer]]
# An app's exception handler, as `app.exception_handlers` holds them: (request, exc) ->
# Response, or an awaitable of one.
ExceptionHandler = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class HotRoute:
    """`method` requests on `path` (a route template, as the router's: `{name}` matches
    one path segment) are answered by `handler`."""

    method: str
    path: str
    handler: HotHandler


class HotRoutes:
    """ASGI middleware: the requests of `routes` answered by their handlers; any other
    request goes on to the app.

    A handler's exception is answered by the handler `exception_handlers` (the app's
    own, by the exception's class hierarchy, as Starlette looks them up) has for it;
    one it has none for (a bug) goes up to the server-error middleware: a 500 in the
    envelope, as from a route."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[HotRoute],
        exception_handlers: Mapping[Any, ExceptionHandler],
    ) -> None:
        self.app = app
        self._routes = [(r.method, compile_path(r.path)[0], r.handler) for r in routes]
        self._exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            method, path = scope["method"], get_route_path(scope)
            for route_method, regex, handler in self._routes:
                if method != route_method:
                    continue
                match = regex.match(path)
                if match is not None:
                    await self._answer(handler, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _answer(
        self,
        handler: HotHandler,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        try:
            answer = await handler(scope, receive, params)
        except Exception as exc:
            respond = self._handler_for(exc)
            if respond is None:
                raise
            handled = respond(Request(scope, receive), exc)
            response = await handled if isawaitable(handled) else handled
            if response is not None:
                await response(scope, receive, send)
            exc.__traceback__ = None  # reused exception instances would grow tracebacks
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(answer.body)),
        ]
        if answer.headers:
            headers += [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    def _handler_for(self, exc: Exception) -> ExceptionHandler | None:
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None  # left to the server-error middleware, as for a route
            handler = self._exception_handlers.get(cls)
            if handler is not None:
                return handler
        return None
