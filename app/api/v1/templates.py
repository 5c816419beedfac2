"""Pipeline templates: ready pipelines per category, read-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.deps import PrincipalDep
from app.api.v1.examples import ok
from app.core.errors import TemplateNotFound, error_responses
from app.schemas.template import PipelineTemplate
from app.services.templates import get_template, list_templates

_EXAMPLE = list_templates()[0].model_dump(mode="json")

router = APIRouter(prefix="/api/v1/pipeline-templates", tags=["pipeline templates"])


@router.get(
    "",
    summary="List pipeline templates",
    description="One template per category (behavioral, transaction, context, marketing, "
    "trust, realtime) with its events and suggested features. Start a pipeline from one "
    'with POST .../pipelines `{"template": "<name>", "name": ...}`.',
    response_model=list[PipelineTemplate],
    responses={200: ok([_EXAMPLE]), **error_responses(401)},
)
async def list_pipeline_templates(_: PrincipalDep) -> list[PipelineTemplate]:
    return list_templates()


@router.get(
    "/{template_name}",
    summary="Get a pipeline template",
    response_model=PipelineTemplate,
    responses={200: ok(_EXAMPLE), **error_responses(401, 404)},
)
async def get_pipeline_template(
    _: PrincipalDep,
    template_name: Annotated[str, Path(max_length=64, examples=["behavioral"])],
) -> PipelineTemplate:
    template = get_template(template_name)
    if template is None:
        raise TemplateNotFound(f"No pipeline template named {template_name!r}")
    return template
