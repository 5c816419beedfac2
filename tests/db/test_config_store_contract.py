"""The ConfigStore contract, run against every implementation (SQLite and FerretDB).

Deployments have their own part of the suite in test_config_store_deployments.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import PipelineDocument
from tests.conftest import unique
from tests.factories import feature_document, new_id, now, pipeline_document

HOSTILE_IDS = [
    "$where",
    '{"$gt": ""}',
    "../x",
    "../../etc/passwd",
    "0123456789abcdef01234567f",  # 25 hex
    "0123456789abcdef0123456",  # 23 hex
    "0123456789ABCDEF01234567",  # upper case: not the canonical form of any id
    "",
]


def _project() -> str:
    return unique("proj")


class TestStoreLifetime:
    async def test_ping_answers_when_initialized(self, config_store: ConfigStore) -> None:
        await config_store.ping()

    async def test_initialize_twice_keeps_the_data(self, config_store: ConfigStore) -> None:
        doc = pipeline_document(_project())
        await config_store.insert_pipeline(doc)
        await config_store.initialize()
        assert await config_store.get_pipeline(doc.project_id, doc.id) == doc


class TestPipelines:
    async def test_inserted_pipeline_reads_back_equal(self, config_store: ConfigStore) -> None:
        doc = pipeline_document(
            _project(),
            previous_webhook_secret="whsec_" + "B" * 32,
            previous_secret_expires_at=now() + timedelta(hours=24),
        )
        await config_store.insert_pipeline(doc)
        assert await config_store.get_pipeline(doc.project_id, doc.id) == doc

    async def test_unknown_pipeline_is_none(self, config_store: ConfigStore) -> None:
        assert await config_store.get_pipeline(_project(), new_id()) is None

    async def test_pipeline_of_another_project_is_invisible(
        self, config_store: ConfigStore
    ) -> None:
        doc = pipeline_document(_project())
        await config_store.insert_pipeline(doc)
        other = _project()
        assert await config_store.get_pipeline(other, doc.id) is None
        assert await config_store.list_pipelines(other) == ([], 0)
        assert await config_store.delete_pipeline(other, doc.id) is False
        moved = doc.model_copy(update={"project_id": other, "revision": 2})
        assert await config_store.replace_pipeline(moved, expected_revision=1) is False
        assert await config_store.get_pipeline(doc.project_id, doc.id) == doc

    async def test_duplicate_name_in_a_project_raises(self, config_store: ConfigStore) -> None:
        first = pipeline_document(_project(), name="storefront")
        await config_store.insert_pipeline(first)
        with pytest.raises(DuplicateKey) as err:
            await config_store.insert_pipeline(
                pipeline_document(first.project_id, name="storefront")
            )
        assert err.value.key == "name"
        assert (await config_store.list_pipelines(first.project_id))[1] == 1

    async def test_same_name_in_two_projects_is_allowed(self, config_store: ConfigStore) -> None:
        await config_store.insert_pipeline(pipeline_document(_project(), name="storefront"))
        await config_store.insert_pipeline(pipeline_document(_project(), name="storefront"))

    async def test_replace_with_current_revision_saves(self, config_store: ConfigStore) -> None:
        doc = pipeline_document(_project())
        await config_store.insert_pipeline(doc)
        edited = doc.model_copy(update={"name": "renamed", "revision": 2, "status": "active"})
        assert await config_store.replace_pipeline(edited, expected_revision=1) is True
        assert await config_store.get_pipeline(doc.project_id, doc.id) == edited
        active, total = await config_store.list_pipelines(doc.project_id, status="active")
        assert (active, total) == ([edited], 1)

    async def test_replace_with_stale_revision_changes_nothing(
        self, config_store: ConfigStore
    ) -> None:
        doc = pipeline_document(_project(), revision=3)
        await config_store.insert_pipeline(doc)
        stale = doc.model_copy(update={"name": "stale", "revision": 3})
        assert await config_store.replace_pipeline(stale, expected_revision=2) is False
        assert await config_store.get_pipeline(doc.project_id, doc.id) == doc

    async def test_replace_of_absent_pipeline_is_false(self, config_store: ConfigStore) -> None:
        doc = pipeline_document(_project(), revision=2)
        assert await config_store.replace_pipeline(doc, expected_revision=1) is False
        assert await config_store.get_pipeline(doc.project_id, doc.id) is None

    async def test_replace_onto_a_taken_name_raises(self, config_store: ConfigStore) -> None:
        project = _project()
        await config_store.insert_pipeline(pipeline_document(project, name="taken"))
        doc = pipeline_document(project, name="free")
        await config_store.insert_pipeline(doc)
        clash = doc.model_copy(update={"name": "taken", "revision": 2})
        with pytest.raises(DuplicateKey) as err:
            await config_store.replace_pipeline(clash, expected_revision=1)
        assert err.value.key == "name"
        assert await config_store.get_pipeline(project, doc.id) == doc

    async def test_concurrent_replaces_on_one_revision_let_exactly_one_win(
        self, config_store: ConfigStore
    ) -> None:
        # Several rounds: a store whose check-and-write is not atomic loses some of them.
        for _ in range(10):
            doc = pipeline_document(_project())
            await config_store.insert_pipeline(doc)
            edits = [
                doc.model_copy(update={"description": f"tab {i}", "revision": 2}) for i in range(3)
            ]
            results = await asyncio.gather(
                *(config_store.replace_pipeline(e, expected_revision=1) for e in edits)
            )
            assert sorted(results) == [False, False, True]
            stored = await config_store.get_pipeline(doc.project_id, doc.id)
            assert stored == edits[results.index(True)]

    async def test_concurrent_feature_replaces_let_exactly_one_win(
        self, config_store: ConfigStore
    ) -> None:
        for _ in range(10):
            doc = feature_document(_project(), new_id())
            await config_store.insert_feature(doc)
            edits = [
                doc.model_copy(update={"description": f"tab {i}", "revision": 2}) for i in range(2)
            ]
            results = await asyncio.gather(
                *(config_store.replace_feature(e, expected_revision=1) for e in edits)
            )
            assert sorted(results) == [False, True]

    async def test_delete_removes_once(self, config_store: ConfigStore) -> None:
        doc = pipeline_document(_project())
        await config_store.insert_pipeline(doc)
        assert await config_store.delete_pipeline(doc.project_id, doc.id) is True
        assert await config_store.delete_pipeline(doc.project_id, doc.id) is False
        assert await config_store.get_pipeline(doc.project_id, doc.id) is None


class TestPipelineListing:
    async def _insert_many(
        self, store: ConfigStore, project: str, n: int
    ) -> list[PipelineDocument]:
        base = now()
        docs = []
        for i in range(n):
            # Pairs share a creation time, so the id must break the tie.
            created = base + timedelta(milliseconds=i // 2)
            status = "active" if i % 3 == 0 else "inactive"
            category = "transaction" if i % 2 else "behavioral"
            doc = pipeline_document(
                project, created_at=created, updated_at=created, status=status, category=category
            )
            docs.append(doc)
        for doc in reversed(docs):
            await store.insert_pipeline(doc)
        return sorted(docs, key=lambda d: (d.created_at, d.id))

    async def test_list_is_ordered_by_creation_then_id(self, config_store: ConfigStore) -> None:
        project = _project()
        expected = await self._insert_many(config_store, project, 7)
        assert await config_store.list_pipelines(project) == (expected, 7)

    async def test_pages_cover_the_list_without_overlap(self, config_store: ConfigStore) -> None:
        project = _project()
        expected = await self._insert_many(config_store, project, 7)
        seen: list[PipelineDocument] = []
        for offset in range(0, 9, 3):
            page, total = await config_store.list_pipelines(project, limit=3, offset=offset)
            assert total == 7
            seen.extend(page)
        assert seen == expected

    async def test_filters_by_status_and_category(self, config_store: ConfigStore) -> None:
        project = _project()
        docs = await self._insert_many(config_store, project, 7)
        active = [d for d in docs if d.status == "active"]
        assert await config_store.list_pipelines(project, status="active") == (active, len(active))
        both = [d for d in active if d.category == "transaction"]
        got = await config_store.list_pipelines(project, status="active", category="transaction")
        assert got == (both, len(both))
        assert await config_store.list_pipelines(project, status="configuring") == ([], 0)

    async def test_offset_past_the_end_is_empty(self, config_store: ConfigStore) -> None:
        project = _project()
        await self._insert_many(config_store, project, 2)
        assert await config_store.list_pipelines(project, limit=5, offset=10) == ([], 2)


class TestFeatures:
    async def test_inserted_feature_reads_back_equal(self, config_store: ConfigStore) -> None:
        doc = feature_document(_project(), new_id(), aggregation="SUM", field="price")
        await config_store.insert_feature(doc)
        assert await config_store.get_feature(doc.project_id, doc.id) == doc
        assert await config_store.get_feature(_project(), doc.id) is None

    async def test_duplicate_feature_name_raises(self, config_store: ConfigStore) -> None:
        project = _project()
        await config_store.insert_feature(feature_document(project, new_id(), name="cart_adds"))
        with pytest.raises(DuplicateKey) as err:
            await config_store.insert_feature(feature_document(project, new_id(), name="cart_adds"))
        assert err.value.key == "name"
        await config_store.insert_feature(feature_document(_project(), new_id(), name="cart_adds"))

    async def test_replace_follows_the_revision(self, config_store: ConfigStore) -> None:
        doc = feature_document(_project(), new_id())
        await config_store.insert_feature(doc)
        edited = doc.model_copy(update={"enabled": False, "revision": 2, "time_windows": ["7d"]})
        assert await config_store.replace_feature(edited, expected_revision=2) is False
        assert await config_store.replace_feature(edited, expected_revision=1) is True
        assert await config_store.get_feature(doc.project_id, doc.id) == edited
        assert await config_store.list_features(doc.project_id, enabled=False) == ([edited], 1)
        assert await config_store.list_features(doc.project_id, enabled=True) == ([], 0)

    async def test_replace_onto_a_taken_feature_name_raises(
        self, config_store: ConfigStore
    ) -> None:
        project = _project()
        await config_store.insert_feature(feature_document(project, new_id(), name="taken"))
        doc = feature_document(project, new_id())
        await config_store.insert_feature(doc)
        with pytest.raises(DuplicateKey):
            await config_store.replace_feature(
                doc.model_copy(update={"name": "taken", "revision": 2}), expected_revision=1
            )

    async def test_list_filters_by_pipeline_in_order(self, config_store: ConfigStore) -> None:
        project, p1, p2 = _project(), new_id(), new_id()
        base = now()
        docs = [
            feature_document(project, p1 if i % 2 else p2, created_at=base + timedelta(seconds=i))
            for i in range(6)
        ]
        for doc in reversed(docs):
            await config_store.insert_feature(doc)
        assert await config_store.list_features(project) == (docs, 6)
        of_p1 = [d for d in docs if d.pipeline_id == p1]
        assert await config_store.list_features(project, pipeline_id=p1) == (of_p1, 3)
        page, total = await config_store.list_features(project, pipeline_id=p1, limit=2, offset=1)
        assert (page, total) == (of_p1[1:3], 3)
        assert await config_store.list_features(_project(), pipeline_id=p1) == ([], 0)

    async def test_delete_features_of_pipeline_spares_the_rest(
        self, config_store: ConfigStore
    ) -> None:
        project, other_project, pipeline, other_pipeline = (
            _project(),
            _project(),
            new_id(),
            new_id(),
        )
        doomed = [feature_document(project, pipeline) for _ in range(3)]
        kept = [
            feature_document(project, other_pipeline),
            feature_document(other_project, pipeline),
        ]
        for doc in doomed + kept:
            await config_store.insert_feature(doc)
        assert await config_store.delete_features_of_pipeline(project, pipeline) == 3
        assert await config_store.delete_features_of_pipeline(project, pipeline) == 0
        assert (await config_store.list_features(project))[0] == [kept[0]]
        assert (await config_store.list_features(other_project))[0] == [kept[1]]

    async def test_delete_feature_removes_once(self, config_store: ConfigStore) -> None:
        doc = feature_document(_project(), new_id())
        await config_store.insert_feature(doc)
        assert await config_store.delete_feature(_project(), doc.id) is False
        assert await config_store.delete_feature(doc.project_id, doc.id) is True
        assert await config_store.delete_feature(doc.project_id, doc.id) is False


class TestDatetimes:
    async def test_times_come_back_as_utc_milliseconds(self, config_store: ConfigStore) -> None:
        written = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=timezone(timedelta(hours=2)))
        doc = pipeline_document(_project(), created_at=written, updated_at=written)
        await config_store.insert_pipeline(doc)
        stored = await config_store.get_pipeline(doc.project_id, doc.id)
        assert stored is not None
        expected = datetime(2026, 3, 1, 10, 30, 45, 123000, tzinfo=UTC)
        assert stored.created_at == expected
        assert stored.created_at.utcoffset() == timedelta(0)

    async def test_millisecond_times_round_trip_exactly(self, config_store: ConfigStore) -> None:
        doc = feature_document(_project(), new_id(), created_at=now(), updated_at=now())
        await config_store.insert_feature(doc)
        stored = await config_store.get_feature(doc.project_id, doc.id)
        assert stored is not None
        assert (stored.created_at, stored.updated_at) == (doc.created_at, doc.updated_at)


class TestHostileIds:
    @pytest.mark.parametrize("bad_id", HOSTILE_IDS)
    async def test_hostile_id_finds_and_changes_nothing(
        self, config_store: ConfigStore, bad_id: str
    ) -> None:
        project = _project()
        pipeline = pipeline_document(project)
        feature = feature_document(project, pipeline.id)
        await config_store.insert_pipeline(pipeline)
        await config_store.insert_feature(feature)

        assert await config_store.get_pipeline(project, bad_id) is None
        assert await config_store.get_feature(project, bad_id) is None
        assert await config_store.get_deployment(project, bad_id) is None
        assert await config_store.delete_pipeline(project, bad_id) is False
        assert await config_store.delete_feature(project, bad_id) is False
        assert await config_store.delete_features_of_pipeline(project, bad_id) == 0
        assert await config_store.list_features(project, pipeline_id=bad_id) == ([], 0)
        await config_store.update_deployment_status(project, bad_id, "failed")
        forged = pipeline.model_copy(update={"id": bad_id, "revision": 2})
        assert await config_store.replace_pipeline(forged, expected_revision=1) is False

        assert await config_store.list_pipelines(project) == ([pipeline], 1)
        assert await config_store.list_features(project) == ([feature], 1)

    async def test_a_non_string_project_id_is_refused(self, config_store: ConfigStore) -> None:
        await config_store.insert_pipeline(pipeline_document(_project()))
        with pytest.raises(TypeError):
            await config_store.list_pipelines({"$ne": ""})  # type: ignore[arg-type]


class TestIdCollision:
    async def test_inserting_an_existing_id_raises_duplicate_id(
        self, config_store: ConfigStore
    ) -> None:
        doc = pipeline_document(_project())
        await config_store.insert_pipeline(doc)
        with pytest.raises(DuplicateKey) as err:
            await config_store.insert_pipeline(doc.model_copy(update={"name": "another"}))
        assert err.value.key == "id"
