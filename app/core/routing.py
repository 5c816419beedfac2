"""Routes whose requests skip FastAPI's per-request work on hot paths.

FastAPI solves an endpoint's dependencies and validates its parameters on every request,
inside an exit stack of its own: on ingestion's single event that was ~10% of the
process's CPU (py-spy) for an endpoint whose only parameters are two path strings.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def served_by(handler: Handler) -> type[APIRoute]:
    """Returns a route class documented by its endpoint (FastAPI builds OpenAPI from the
    endpoint's signature as usual) whose requests go straight to `handler`, still inside
    Starlette's exception handling (so errors keep the one envelope).

    `handler` must make the endpoint's checks itself, with the same errors."""

    class ServedBy(APIRoute):
        def get_route_handler(self) -> Handler:
            return handler

    return ServedBy
