"""The serving API documents its two endpoints, the batch body and the error envelope;
its access log is a setting."""

from __future__ import annotations

import logging

from app.core.settings import ServingSettings
from app.schemas.event import USER_ID_PATTERN
from runtime.serving.main import create_app


def test_endpoints_body_and_errors_are_documented() -> None:
    spec = create_app(ServingSettings(environment="development")).openapi()
    single = spec["paths"]["/features/{project_id}/users/{user_id}"]["get"]
    batch = spec["paths"]["/features/{project_id}/users/batch"]["post"]
    body = batch["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["user_ids"]
    assert body["additionalProperties"] is False
    assert {"401", "404", "422", "503"} <= set(single["responses"])
    assert {"401", "404", "413", "422", "503"} <= set(batch["responses"])
    assert (
        "UserFeaturesResponse"
        in single["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    )


def test_reads_document_their_parameters_and_bearer_security() -> None:
    spec = create_app(ServingSettings(environment="development")).openapi()
    single = spec["paths"]["/features/{project_id}/users/{user_id}"]["get"]
    batch = spec["paths"]["/features/{project_id}/users/batch"]["post"]
    params = {p["name"]: p for p in single["parameters"]}
    assert set(params) == {"project_id", "user_id", "features"}
    assert params["user_id"]["schema"]["pattern"] == USER_ID_PATTERN
    assert params["features"]["schema"]["anyOf"][0]["maxLength"] == 16_384
    for operation in (single, batch):
        assert operation["security"] == [{"HTTPBearer": []}]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_access_log_is_off_unless_serving_access_log_is_set() -> None:
    access = logging.getLogger("uvicorn.access")
    original = access.propagate
    try:
        create_app(ServingSettings(environment="development"))
        assert access.propagate is False  # uvicorn then finds no handler: no line, no cost
        create_app(ServingSettings(environment="development", access_log=True))
        assert access.propagate is True
    finally:
        access.propagate = original
