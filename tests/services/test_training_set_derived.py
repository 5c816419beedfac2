"""Training sets evaluate derived features with serving's evaluator, over the values of
their inputs at each row's moment (chDB archive, real Kafka)."""

from __future__ import annotations

import pytest

from app.db.clickhouse import ChdbSink
from app.schemas.deployment import ConfigSnapshot, DerivedFeatureSnapshot
from app.schemas.event import EventMessage, record_key
from app.services.training_set_service import TrainingRow, TrainingSetService
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import ComputeKit
from tests.runtime.compute.oracle import all_aggregations, pipeline
from tests.services.test_rebuild_service import NOW, archive_all
from tests.services.test_rebuild_service import archive as archive
from tests.services.test_rebuild_service import kit as kit

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

MINUTE = 60_000


def derived(pipeline_id: str, name: str, expression: str) -> DerivedFeatureSnapshot:
    return DerivedFeatureSnapshot(
        id=new_id(), name=name, pipeline_id=pipeline_id, expression=expression, enabled=True
    )


async def test_derived_columns_are_evaluated_per_row_without_their_inputs(
    kit: ComputeKit, archive: ChdbSink
) -> None:
    project, pl = unique("proj"), new_id()
    snapshot = ConfigSnapshot(
        project_id=project,
        version=1,
        pipelines=[pipeline(pl, "add_to_cart")],
        features=[
            *all_aggregations(pl, ["1h"]),
            derived(pl, "per_add", "sum_1h / count_1h"),
            derived(pl, "per_other", "sum_1h / (count_1h - 1)"),
        ],
    )
    event = EventMessage(
        project_id=project,
        pipeline_id=pl,
        event="add_to_cart",
        user_id="u1",
        event_id="only",
        event_time_ms=NOW - MINUTE,
        received_at_ms=NOW - MINUTE,
        version=1,
        properties={"price": 4.5, "product_id": "sku-1"},
    )
    await kit.producer.produce_many([(record_key(project, "u1"), event.encode())])
    await archive_all(kit, archive, unique("archive"), 1)
    rows = [TrainingRow("u1", NOW), TrainingRow("x", NOW)]
    answer = await TrainingSetService(archive).build(snapshot, rows, ["per_add", "per_other"])
    assert answer.columns == ["user_id", "timestamp", "per_add", "per_other"]
    assert answer.rows == [
        ["u1", NOW, 4.5, None],  # 4.5 / 1, and 4.5 / 0 is null
        ["x", NOW, None, 0.0],  # no events: 0 / 0 is null, 0 / (0 - 1) is 0
    ]
