"""Apps run in the test's process: inside their lifespan, reached through httpx's
ASGITransport (no socket), called with real HS256 tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.core.auth import issue_token
from app.core.settings import AuthSettings


@asynccontextmanager
async def in_process(
    app: FastAPI, base_url: str, **client: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """Runs the app's lifespan (startup on enter, shutdown on exit) and yields a client
    that reaches it in-process; `client` goes to `httpx.AsyncClient` (headers, timeout)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, **client) as http:
            yield http


def bearer(
    auth: AuthSettings, subject: str, projects: list[str], ttl_seconds: int = 3600
) -> dict[str, str]:
    """Returns an Authorization header with a token for `subject` on `projects`."""
    token = issue_token(auth, subject, projects, ttl_seconds=ttl_seconds)
    return {"Authorization": f"Bearer {token}"}
