"""Point-in-time training sets equal what serving answered: serving's values are
captured at several moments of a stream (compute on real Kafka, the SQLite store), then
the same (user, moment) rows are asked of the archive (chDB) and compared."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from app.core.errors import PayloadTooLarge
from app.core.settings import BackendSettings
from app.db.clickhouse import ChdbSink
from app.db.training_jobs import make_training_job_store
from app.schemas.event import EventMessage, record_key
from app.services.training_job_service import JOB_MAX_ROWS, TrainingJobs, TrainingJobTooLarge
from app.services.training_set_service import (
    MAX_ROWS,
    TrainingRow,
    TrainingSetService,
    UnknownTrainingFeature,
)
from app.tiles.record import serve
from runtime.compute.specs import build_specs
from tests.conftest import unique
from tests.factories import new_id
from tests.runtime.compute.harness import ComputeKit
from tests.runtime.compute.oracle import (
    all_aggregations,
    assert_same_values,
    config,
    feature,
    pipeline,
)
from tests.services.test_rebuild_service import NOW, archive_all, python_applied
from tests.services.test_rebuild_service import archive as archive
from tests.services.test_rebuild_service import kit as kit

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

MINUTE = 60_000
USERS = [f"u{n}" for n in range(6)]


def step_events(
    rng: random.Random, project: str, pl: str, since_ms: int, until_ms: int, first_id: int
) -> list[EventMessage]:
    """Events received in (since, until], stamped up to 2 hours before their receipt
    (some late for the 5m window, a few for 1h), priced or not, of a dozen products."""
    out = []
    for n in range(40):
        received = rng.randrange(since_ms + 1, until_ms + 1)
        age = rng.choice(
            [0, rng.randrange(20_000), rng.randrange(10 * MINUTE), rng.randrange(120 * MINUTE)]
        )
        properties: dict[str, Any] = {"product_id": f"sku-{rng.randrange(12)}"}
        if rng.random() < 0.9:
            properties["price"] = rng.choice([rng.randrange(1, 100), rng.randrange(1, 9999) / 100])
        out.append(
            EventMessage(
                project_id=project,
                pipeline_id=pl,
                event="add_to_cart",
                user_id=rng.choice(USERS),
                event_id=f"e{first_id + n}",
                event_time_ms=received - age,
                received_at_ms=received,
                version=1,
                properties=properties,
            )
        )
    return out


class TestPointInTime:
    async def test_rows_equal_what_serving_answered_at_those_moments(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        rng = random.Random(7)
        project, pl = unique("proj"), new_id()
        windows = ["5m", "1h", "24h"]
        features = [*all_aggregations(pl, windows), *python_applied(pl, windows)]
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        specs = build_specs(snapshot).specs
        await kit.publish(snapshot)
        compute = kit.run()
        served: dict[tuple[str, int], dict[str, Any]] = {}
        moment, produced = NOW - 2 * 3_600_000, 0
        for step in range(8):
            # Moments 37 s to 7 min apart: tile edges of every window fall between them.
            previous, moment = moment, moment + rng.choice([37_000, 61_000, 420_000])
            kit.clock.now_ms = moment
            batch = step_events(rng, project, pl, previous, moment, 1000 * step)
            await kit.producer.produce_many(
                [(record_key(project, m.user_id), m.encode()) for m in batch]
            )
            produced += len(batch)
            await compute.wait_processed(produced)
            for user in USERS:
                stored = await kit.store.get(project, user)
                served[(user, moment)] = serve(stored.record if stored else None, specs, moment)
        await compute.stop()
        await archive_all(kit, archive, unique("archive"), produced)

        rows = [TrainingRow(user, ts) for user, ts in served]
        answer = await TrainingSetService(archive).build(snapshot, rows)
        keys = answer.columns[2:]
        assert sorted(keys) == sorted(next(iter(served.values())))
        for row in answer.rows:
            user, ts, *values = row
            assert_same_values(dict(zip(keys, values, strict=True)), served[(user, ts)])

    async def test_a_selection_of_features_in_csv_and_parquet(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        project, pl = unique("proj"), new_id()
        features = all_aggregations(pl, ["1h"])
        snapshot = config(project, 1, [pipeline(pl, "add_to_cart")], features)
        event = EventMessage(
            project_id=project,
            pipeline_id=pl,
            event="add_to_cart",
            user_id="u1",
            event_id="only",
            event_time_ms=NOW - MINUTE,
            received_at_ms=NOW - MINUTE,
            version=1,
            properties={"price": 4.5, "product_id": "sku,1"},
        )
        await kit.producer.produce_many([(record_key(project, "u1"), event.encode())])
        await archive_all(kit, archive, unique("archive"), 1)
        rows = [TrainingRow("u1", NOW), TrainingRow("u1", NOW - 2 * MINUTE), TrainingRow("x", NOW)]
        answer = await TrainingSetService(archive).build(
            snapshot, rows, ["sum_1h", "last_1h", "count_1h"]
        )
        assert answer.columns == ["user_id", "timestamp", "sum_1h", "last_1h", "count_1h"]
        assert answer.rows == [
            ["u1", NOW, 4.5, "sku,1", 1],
            ["u1", NOW - 2 * MINUTE, 0.0, None, 0],  # received after that moment
            ["x", NOW, 0.0, None, 0],
        ]
        assert answer.to_csv().splitlines() == [
            "user_id,timestamp,sum_1h,last_1h,count_1h",
            f'u1,{NOW},4.5,"sku,1",1',
            f"u1,{NOW - 2 * MINUTE},0.0,,0",
            f"x,{NOW},0.0,,0",
        ]
        table = pq.read_table(io.BytesIO(answer.to_parquet()))
        assert table.column("last_1h").to_pylist() == ["sku,1", None, None]

    async def test_too_many_rows_or_an_unknown_feature_are_refused(self, archive: ChdbSink) -> None:
        pl = new_id()
        snapshot = config(
            unique("proj"), 1, [pipeline(pl, "add_to_cart")], all_aggregations(pl, ["1h"])
        )
        service = TrainingSetService(archive)
        with pytest.raises(PayloadTooLarge):
            await service.build(snapshot, [TrainingRow("u", NOW)] * (MAX_ROWS + 1))
        with pytest.raises(UnknownTrainingFeature, match="not served by version 1"):
            await service.build(snapshot, [TrainingRow("u", NOW)], ["count_7d"])

    async def test_entity_features_are_refused_by_name(self, archive: ChdbSink) -> None:
        pl = new_id()
        per_product = feature("buyers", pl, "COUNT", ["1h"]).model_copy(
            update={"entity": "product"}
        )
        snapshot = config(
            unique("proj"),
            1,
            [pipeline(pl, "add_to_cart")],
            [per_product, feature("n", pl, "COUNT", ["1h"])],
        )
        service = TrainingSetService(archive)
        assert service.columns(snapshot, None) == ["user_id", "timestamp", "n_1h"]
        with pytest.raises(UnknownTrainingFeature, match=r"entity features .*buyers_1h"):
            await service.build(snapshot, [TrainingRow("u", NOW)], ["n_1h", "buyers_1h"])


class TestCountDistinctAsServingEstimates:
    async def test_a_tile_past_the_exact_limit_gives_servings_estimate(
        self, kit: ComputeKit, archive: ChdbSink
    ) -> None:
        """One user adds 1,500 distinct products within a minute: the 1h window's tile
        (60 s) passes 64 values, so serving answers the HLL estimate of its sketch, and
        the training set must answer that estimate too, not the exact count."""
        project, pl = unique("proj"), new_id()
        snapshot = config(
            project,
            1,
            [pipeline(pl, "add_to_cart")],
            [feature("distinct", pl, "COUNT_DISTINCT", ["5m", "1h"])],
        )
        specs = build_specs(snapshot).specs
        await kit.publish(snapshot)
        compute = kit.run()
        start = NOW - 30 * MINUTE
        messages, served = [], {}
        for n in range(1_500):
            received = start + n * 30  # 45 s of events, 1,500 products
            messages.append(
                EventMessage(
                    project_id=project,
                    pipeline_id=pl,
                    event="add_to_cart",
                    user_id="big",
                    event_id=f"d{n}",
                    event_time_ms=received,
                    received_at_ms=received,
                    version=1,
                    properties={"product_id": f"sku-{n}"},
                )
            )
        for part in range(3):  # three moments: 500, 1,000 and 1,500 products seen
            batch = messages[part * 500 : (part + 1) * 500]
            moment = batch[-1].received_at_ms
            kit.clock.now_ms = moment
            await kit.producer.produce_many(
                [(record_key(project, m.user_id), m.encode()) for m in batch]
            )
            await compute.wait_processed((part + 1) * 500)
            stored = await kit.store.get(project, "big")
            served[moment] = serve(stored.record if stored else None, specs, moment)
        await compute.stop()
        await archive_all(kit, archive, unique("archive"), len(messages))

        moments = sorted(served)
        answer = await TrainingSetService(archive).build(
            snapshot, [TrainingRow("big", ts) for ts in moments]
        )
        for _, ts, short, long in answer.rows:
            assert {"distinct_5m": short, "distinct_1h": long} == served[ts]
        # The estimate path was taken: serving's answer is not the exact count.
        assert served[moments[-1]]["distinct_1h"] != 1_500


class TestJobLimit:
    async def test_more_rows_than_a_job_takes_are_refused_before_anything_is_stored(
        self, archive: ChdbSink, backend_settings: BackendSettings, tmp_path: Path
    ) -> None:
        pl = new_id()
        snapshot = config(
            unique("proj"), 1, [pipeline(pl, "add_to_cart")], all_aggregations(pl, ["1h"])
        )
        store = make_training_job_store(
            backend_settings.model_copy(update={"config_store": "sqlite", "data_dir": tmp_path})
        )
        await store.initialize()
        try:
            jobs = TrainingJobs(store, TrainingSetService(archive), tmp_path, stale_after_s=30)
            with pytest.raises(TrainingJobTooLarge):
                await jobs.submit(
                    snapshot, [TrainingRow("u", NOW)] * (JOB_MAX_ROWS + 1), None, "csv"
                )
            job = await jobs.submit(snapshot, [TrainingRow("u", NOW)] * 3, None, "csv")
            assert (job.state, job.rows_total) == ("queued", 3)
            await jobs.close()
        finally:
            await store.close()
