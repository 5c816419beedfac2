"""The OpenAPI page documents every config endpoint: summary, success model or example,
and the error envelope for the errors it can return."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from app.core.settings import AuthSettings, ConfigApiSettings
from main import create_app

OWN_PREFIXES = ("/api/v1/projects/{project_id}/pipelines", "/api/v1/projects/{project_id}/features")


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    settings = ConfigApiSettings(auth=AuthSettings(secret=SecretStr("o" * 40)))
    spec = create_app(settings).openapi()
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        if path.startswith((*OWN_PREFIXES, "/api/v1/pipeline-templates"))
        for method, op in ops.items()
    ]


OPERATIONS = _operations()


def test_every_pipeline_feature_and_template_route_is_listed() -> None:
    assert len(OPERATIONS) == 19


@pytest.mark.parametrize(("method", "path", "op"), OPERATIONS, ids=lambda v: str(v)[:60])
def test_operation_is_documented(method: str, path: str, op: dict[str, Any]) -> None:
    assert op.get("summary")
    success = [code for code in op["responses"] if code.startswith("2")]
    assert len(success) == 1
    if success[0] != "204":
        content = op["responses"][success[0]]["content"]["application/json"]
        assert "schema" in content
        assert "example" in content
    if "requestBody" in op:
        assert op["requestBody"]["content"]["application/json"].get("examples")
    errors = {"401", "404"} if path.startswith(OWN_PREFIXES) else {"401"}
    for code in errors | {"422"}:
        schema = op["responses"][code]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/ErrorEnvelope")
