"""The serving API documents its two endpoints, the batch body and the error envelope."""

from __future__ import annotations

from app.core.settings import ServingSettings
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
