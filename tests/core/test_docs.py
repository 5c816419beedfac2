"""The OpenAPI pages work offline: /docs and /redoc load every asset from the process
itself (no CDN), and those assets answer 200. Every process is built by build_app, so
one app built by it stands for all of them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from app.core.service import build_app
from app.core.settings import ServiceSettings
from tests.support.apps import in_process

_ASSET_RE = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(
        settings=ServiceSettings(environment="development"),
        title="docs test",
        description="",
        needs=(),
    )
    async with in_process(app, "http://docs-test") as http:
        yield http


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_page_references_only_local_assets_that_answer_200(
    client: httpx.AsyncClient, page: str
):
    html = (await client.get(page)).text
    assert not re.search(r"https?://", html), "an absolute (CDN) URL"
    urls = set(_ASSET_RE.findall(html))
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts, f"no script found in {page}"
    for url in urls:
        assert url.startswith("/"), url
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.content, url


async def test_openapi_document_is_not_listing_the_docs_pages(client: httpx.AsyncClient):
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not {"/docs", "/redoc"} & set(paths)
