"""Every router of the config API, in the order they appear in the OpenAPI page."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.v1 import deployments, features, history, pipelines, templates


def api_router() -> list[APIRouter]:
    return [
        pipelines.router,
        features.router,
        deployments.router,
        history.router,
        templates.router,
    ]
