"""Every router of the config API, in the order they appear in the OpenAPI page."""

from __future__ import annotations

from fastapi import APIRouter


def api_router() -> list[APIRouter]:
    return []
