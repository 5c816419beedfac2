"""Hot routes (app/core/routing.HotRoutes): answered before the router, inside the
request limits, with the app's own error envelope; every other request reaches the
router as before. One app built by build_app, a route declared on its router (which must
never see the hot requests) and the same path served hot."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter
from starlette.types import Receive, Scope

from app.core.errors import RateLimited
from app.core.routing import Answer, HotRoute
from app.core.service import build_app
from app.core.settings import ServiceSettings

MAX_BODY = 2048


async def hot(scope: Scope, receive: Receive, params: dict[str, str]) -> Answer:
    message = await receive()
    body = message["body"]
    if params["name"] == "limited":
        raise RateLimited(
            "The pipeline limit of 3 per 1 minute is exhausted", headers={"Retry-After": "7"}
        )
    if params["name"] == "bug":
        raise KeyError("not a client's problem")
    document = {"name": params["name"], "bytes": len(body), "query": scope["query_string"].decode()}
    return Answer(201, json.dumps(document).encode(), {"X-Hot": "yes"})


def router() -> APIRouter:
    routes = APIRouter()

    @routes.post("/things/{name}")
    async def routed_post(name: str) -> dict[str, str]:
        raise AssertionError("a hot request reached the router")

    @routes.get("/things/{name}")
    async def routed_get(name: str) -> dict[str, str]:
        return {"routed": name}

    @routes.post("/things/{name}/more")
    async def routed_deeper(name: str) -> dict[str, str]:
        return {"routed": f"{name}/more"}

    return routes


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(
        settings=ServiceSettings(environment="development", max_body_bytes=MAX_BODY),
        title="hot routes test",
        description="",
        needs=(),
        routers=(router(),),
        hot_routes=(HotRoute("POST", "/things/{name}", hot),),
    )
    async with app.router.lifespan_context(app):
        # A bug's 500 is sent, then re-raised to the server (as for any route): not here.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hot-test") as http:
            yield http


async def test_a_hot_request_is_answered_by_its_handler_not_the_router(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/things/one?x=1", content=b'{"a": 1}')
    assert response.status_code == 201, response.text
    assert response.json() == {"name": "one", "bytes": 8, "query": "x=1"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-hot"] == "yes"


async def test_other_methods_and_paths_reach_the_router(client: httpx.AsyncClient) -> None:
    assert (await client.get("/things/one")).json() == {"routed": "one"}
    assert (await client.post("/things/one/more")).json() == {"routed": "one/more"}
    missing = await client.post("/elsewhere")
    assert missing.status_code == 404
    assert missing.json()["error"] == "NotFound"


async def test_an_error_is_answered_in_the_envelope_with_its_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/things/limited", content=b"{}")
    assert response.status_code == 429
    assert response.json() == {
        "error": "RateLimited",
        "detail": "The pipeline limit of 3 per 1 minute is exhausted",
    }
    assert response.headers["retry-after"] == "7"


async def test_a_bug_is_a_500_in_the_envelope(client: httpx.AsyncClient) -> None:
    response = await client.post("/things/bug", content=b"{}")
    assert response.status_code == 500
    assert response.json() == {"error": "InternalError", "detail": "Internal server error"}


async def test_the_request_limits_apply_before_a_hot_route(client: httpx.AsyncClient) -> None:
    too_big = await client.post("/things/one", content=b"x" * (MAX_BODY + 1))
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "PayloadTooLarge"
    deep = await client.post("/things/one", content=b"[" * 65 + b"]" * 65)
    assert deep.status_code == 422
    assert deep.json()["error"] == "MalformedJSON"
