"""Resetting the draft to a deployed snapshot: ids kept, secrets kept, safe to re-run."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.secrets import secrets_key
from app.db.config_store import ConfigStore
from app.db.redis_cache import RedisCache
from app.schemas.deployment import ConfigSnapshot
from app.schemas.pipeline import EventDefinition, WebhookSecrets
from app.services.config_diff import diff, snapshot_from_draft
from app.services.draft_reset import reset_draft
from app.services.secret_publisher import SecretPublisher
from tests.factories import feature_document, pipeline_document

pytestmark = pytest.mark.redis


async def draft(store: ConfigStore, project_id: str) -> ConfigSnapshot:
    pipelines, _ = await store.list_pipelines(project_id)
    features, _ = await store.list_features(project_id)
    return snapshot_from_draft(project_id, 0, pipelines, features)


async def save(store: ConfigStore, doc: Any) -> Any:
    """Replaces a stored pipeline or feature with `doc` (revision bumped)."""
    is_pipeline = hasattr(doc, "webhook_secret")
    get = store.get_pipeline if is_pipeline else store.get_feature
    current = await get(doc.project_id, doc.id)
    assert current is not None
    updated = doc.model_copy(update={"revision": current.revision + 1})
    replace = store.replace_pipeline if is_pipeline else store.replace_feature
    assert await replace(updated, current.revision)
    return updated


@pytest.fixture
def publisher(cache: RedisCache) -> SecretPublisher:
    return SecretPublisher(cache)


class TestResetDraft:
    async def test_deleted_resources_come_back_with_their_ids_and_a_published_secret(
        self, config_store, cache, publisher, project_id
    ):
        p = pipeline_document(project_id, status="active")
        f = feature_document(project_id, p.id)
        await config_store.insert_pipeline(p)
        await config_store.insert_feature(f)
        target = await draft(config_store, project_id)
        await config_store.delete_feature(project_id, f.id)
        await config_store.delete_pipeline(project_id, p.id)

        await reset_draft(config_store, publisher, target)

        assert diff(target, await draft(config_store, project_id)) == []
        back = await config_store.get_pipeline(project_id, p.id)
        assert back is not None
        assert back.webhook_secret.startswith("whsec_")
        assert back.webhook_secret != p.webhook_secret
        raw = await cache.get(secrets_key(project_id, p.id))
        assert raw is not None
        assert WebhookSecrets.model_validate_json(raw).current == back.webhook_secret

    async def test_changed_resources_are_restored_in_place_keeping_webhook_secrets(
        self, config_store, publisher, project_id
    ):
        p = pipeline_document(project_id, status="active", previous_webhook_secret="whsec_old")
        f = feature_document(project_id, p.id, time_windows=["1h"])
        await config_store.insert_pipeline(p)
        await config_store.insert_feature(f)
        target = await draft(config_store, project_id)
        await save(
            config_store,
            p.model_copy(
                update={"status": "inactive", "events": [EventDefinition(name="other_event")]}
            ),
        )
        await save(config_store, f.model_copy(update={"time_windows": ["5m"], "enabled": False}))
        added = feature_document(project_id, p.id)
        await config_store.insert_feature(added)

        await reset_draft(config_store, publisher, target)

        assert diff(target, await draft(config_store, project_id)) == []
        assert await config_store.get_feature(project_id, added.id) is None
        kept = await config_store.get_pipeline(project_id, p.id)
        assert kept is not None
        assert (kept.webhook_secret, kept.previous_webhook_secret) == (
            p.webhook_secret,
            "whsec_old",
        )
        assert kept.revision == 3

    async def test_swapped_names_are_restored(self, config_store, publisher, project_id):
        a = pipeline_document(project_id, name="alpha")
        b = pipeline_document(project_id, name="beta")
        fa = feature_document(project_id, a.id, name="one")
        fb = feature_document(project_id, a.id, name="two")
        for doc in (a, b):
            await config_store.insert_pipeline(doc)
        for fdoc in (fa, fb):
            await config_store.insert_feature(fdoc)
        target = await draft(config_store, project_id)
        for doc, name in ((a, "tmp"), (b, "alpha"), (a, "beta")):
            current = await config_store.get_pipeline(project_id, doc.id)
            await save(config_store, current.model_copy(update={"name": name}))
        for fdoc, name in ((fa, "tmp"), (fb, "one"), (fa, "two")):
            current_f = await config_store.get_feature(project_id, fdoc.id)
            await save(config_store, current_f.model_copy(update={"name": name}))

        await reset_draft(config_store, publisher, target)

        assert diff(target, await draft(config_store, project_id)) == []

    async def test_a_second_run_changes_nothing(self, config_store, publisher, project_id):
        p = pipeline_document(project_id)
        await config_store.insert_pipeline(p)
        target = await draft(config_store, project_id)
        await save(config_store, p.model_copy(update={"description": "edited"}))

        await reset_draft(config_store, publisher, target)
        once = await config_store.get_pipeline(project_id, p.id)
        await reset_draft(config_store, publisher, target)
        twice = await config_store.get_pipeline(project_id, p.id)

        assert once == twice

    async def test_a_reset_interrupted_midway_finishes_when_run_again(
        self, config_store, publisher, project_id, monkeypatch
    ):
        p = pipeline_document(project_id, status="active")
        fs = [feature_document(project_id, p.id) for _ in range(3)]
        await config_store.insert_pipeline(p)
        for f in fs:
            await config_store.insert_feature(f)
        target = await draft(config_store, project_id)
        for f in fs:
            await config_store.delete_feature(project_id, f.id)
        await config_store.delete_pipeline(project_id, p.id)
        await config_store.insert_pipeline(pipeline_document(project_id))

        real_insert = config_store.insert_feature
        calls = 0

        async def crash_on_second_insert(doc: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise ConnectionError("store went away")
            await real_insert(doc)

        monkeypatch.setattr(config_store, "insert_feature", crash_on_second_insert)
        with pytest.raises(ConnectionError):
            await reset_draft(config_store, publisher, target)
        assert diff(target, await draft(config_store, project_id)) != []

        await reset_draft(config_store, publisher, target)
        assert diff(target, await draft(config_store, project_id)) == []
