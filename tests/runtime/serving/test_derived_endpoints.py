"""Derived features over HTTP: evaluated after the merge, for single and batch reads and
for a selection that names only the derived feature (real online stores)."""

from __future__ import annotations

from app.schemas.deployment import ConfigSnapshot, DerivedFeatureSnapshot
from tests.factories import new_id
from tests.runtime.serving.conftest import ServingKit
from tests.runtime.serving.test_endpoints import make_snapshot, shopper


def with_derived(snap: ConfigSnapshot, **expressions: str) -> ConfigSnapshot:
    pipeline_id = snap.pipelines[0].id
    derived = [
        DerivedFeatureSnapshot(
            id=new_id(), name=name, pipeline_id=pipeline_id, expression=text, enabled=True
        )
        for name, text in expressions.items()
    ]
    return snap.model_copy(update={"features": [*snap.features, *derived]})


async def deployed(kit: ServingKit, project_id: str) -> ConfigSnapshot:
    snap = with_derived(
        make_snapshot(project_id),
        conversion="purchases_7d / cart_adds_24h",
        value_per_add="cart_value_1h / cart_adds_1h",
    )
    await kit.deploy(snap)
    return snap


class TestDerivedValues:
    async def test_single_read_answers_derived_values_beside_the_aggregates(
        self, kit: ServingKit, project_id: str
    ) -> None:
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            body = (await client.get(f"/features/{project_id}/users/u-1")).json()
        assert body["features"]["conversion"] == 1 / 3
        assert body["features"]["value_per_add"] == 20.0
        assert body["features"]["cart_adds_24h"] == 3

    async def test_selecting_only_a_derived_feature_returns_only_it(
        self, kit: ServingKit, project_id: str
    ) -> None:
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            response = await client.get(
                f"/features/{project_id}/users/u-1", params={"features": "conversion"}
            )
        assert response.status_code == 200
        assert response.json()["features"] == {"conversion": 1 / 3}

    async def test_batch_read_evaluates_per_user_and_zero_inputs_give_null(
        self, kit: ServingKit, project_id: str
    ) -> None:
        snap = await deployed(kit, project_id)
        await shopper(kit, snap, "u-1")
        async with kit.client(project_id) as client:
            response = await client.post(
                f"/features/{project_id}/users/batch",
                json={"user_ids": ["u-1", "nobody"], "features": ["conversion", "cart_adds_1h"]},
            )
        assert response.status_code == 200
        users = response.json()["users"]
        assert [u["features"] for u in users] == [
            {"cart_adds_1h": 2, "conversion": 1 / 3},
            {"cart_adds_1h": 0, "conversion": None},  # 0 purchases / 0 cart adds
        ]
