"""Resetting a project's draft to a deployed snapshot (the last step of a rollback).

Without transactions the reset is a sequence of single-document writes, ordered so
that stopping anywhere and running it again finishes the job:

1. delete the features, then the pipelines, that the snapshot does not have
   (features first: no feature is ever left pointing at a deleted pipeline, and the
   names of what is deleted are free for what comes back);
2. move every kept pipeline/feature whose name changes to a temporary name
   `~rollback~{id}`, so two documents that swap names never clash;
3. replace the kept ones with the snapshot's values (webhook secrets untouched) and
   re-create the deleted ones with their original ids.

Each step is computed from what the store holds when it runs, so a re-run skips what
an earlier attempt finished. A re-created pipeline gets a new webhook secret (the old
one was deleted with it), published at once for ingestion.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from app.core.errors import DraftChanged
from app.core.secrets import secrets_of
from app.db.config_store import ConfigStore, DuplicateKey
from app.db.documents import FEATURE_DOCUMENT, FeatureDocument, PipelineDocument
from app.schemas.deployment import ConfigSnapshot, FeatureSnapshot, PipelineSnapshot
from app.services.common import utc_now
from app.services.config_diff import feature_snapshot, pipeline_snapshot
from app.services.secret_publisher import SecretPublisher
from app.services.webhook_secrets import generate_secret

D = TypeVar("D", PipelineDocument, FeatureDocument)
_ATTEMPTS = 3


def _temporary_name(doc_id: str) -> str:
    return f"~rollback~{doc_id}"


async def _replace(
    get: Callable[[], Awaitable[D | None]],
    replace: Callable[[D, int], Awaitable[bool]],
    change: Callable[[D], D | None],
) -> None:
    """Applies `change` to the stored document with the revision check, re-reading and
    retrying when someone else saved in between. `change` returns None for "as is"."""
    for _ in range(_ATTEMPTS):
        current = await get()
        if current is None:
            return
        updated = change(current)
        if updated is None:
            return
        updated = updated.model_copy(
            update={"revision": current.revision + 1, "updated_at": utc_now()}
        )
        try:
            if await replace(updated, current.revision):
                return
        except DuplicateKey as exc:
            raise DraftChanged(
                f"Name {getattr(updated, 'name', '')!r} is taken in the draft"
            ) from exc
    raise DraftChanged("The draft was edited during the rollback; retry it")


def _pipeline_values(p: PipelineSnapshot) -> dict[str, object]:
    return {
        "name": p.name,
        "description": p.description,
        "category": p.category,
        "status": p.status,
        "events": [e.model_copy(deep=True) for e in p.events],
    }


def _feature_values(f: FeatureSnapshot) -> dict[str, object]:
    """The snapshot's definition as document fields (everything but the id)."""
    return f.model_dump(exclude={"id"})


async def reset_draft(
    store: ConfigStore, secrets: SecretPublisher, snapshot: ConfigSnapshot
) -> None:
    """Makes the project's pipelines and features equal to `snapshot`'s.

    Raises DraftChanged (409) if concurrent edits kept winning; re-running it is safe.
    """
    project_id = snapshot.project_id
    want_p = {p.id: p for p in snapshot.pipelines}
    want_f = {f.id: f for f in snapshot.features}
    pipelines = {p.id: p for p in (await store.list_pipelines(project_id))[0]}
    features = {f.id: f for f in (await store.list_features(project_id))[0]}

    # 1. deletions, features first
    for fid in features.keys() - want_f.keys():
        await store.delete_feature(project_id, fid)
    for pid in pipelines.keys() - want_p.keys():
        await store.delete_pipeline(project_id, pid)
        await secrets.forget(project_id, pid)

    # 2. names out of the way
    for pid in pipelines.keys() & want_p.keys():
        if pipelines[pid].name != want_p[pid].name:
            await _rename_pipeline(store, project_id, pid, _temporary_name(pid))
    for fid in features.keys() & want_f.keys():
        if features[fid].name != want_f[fid].name:
            await _rename_feature(store, project_id, fid, _temporary_name(fid))

    # 3. the snapshot's values; pipelines before the features that point at them
    for pid, wanted in want_p.items():
        if pid in pipelines:
            await _restore_pipeline(store, project_id, wanted)
        else:
            await _recreate_pipeline(store, secrets, project_id, wanted)
    for fid, wanted_f in want_f.items():
        if fid in features:
            await _restore_feature(store, project_id, wanted_f)
        else:
            await _recreate_feature(store, project_id, wanted_f)


async def _rename_pipeline(store: ConfigStore, project_id: str, pid: str, name: str) -> None:
    await _replace(
        lambda: store.get_pipeline(project_id, pid),
        store.replace_pipeline,
        lambda cur: cur.model_copy(update={"name": name}),
    )


async def _rename_feature(store: ConfigStore, project_id: str, fid: str, name: str) -> None:
    await _replace(
        lambda: store.get_feature(project_id, fid),
        store.replace_feature,
        lambda cur: cur.model_copy(update={"name": name}),
    )


async def _restore_pipeline(store: ConfigStore, project_id: str, wanted: PipelineSnapshot) -> None:
    def change(cur: PipelineDocument) -> PipelineDocument | None:
        if pipeline_snapshot(cur) == wanted:
            return None
        return cur.model_copy(update=_pipeline_values(wanted))

    await _replace(
        lambda: store.get_pipeline(project_id, wanted.id), store.replace_pipeline, change
    )


async def _restore_feature(store: ConfigStore, project_id: str, wanted: FeatureSnapshot) -> None:
    # mypy checks the lambda against the TypeVar itself, and a restore may change the
    # document's class (aggregate <-> derived), so it is not a `D -> D`.
    await _replace(  # type: ignore[misc]
        lambda: store.get_feature(project_id, wanted.id),
        store.replace_feature,
        lambda cur: None if feature_snapshot(cur) == wanted else _rebuilt(cur, wanted),
    )


def _rebuilt(cur: FeatureDocument, wanted: FeatureSnapshot) -> FeatureDocument:
    """Returns `cur` with `wanted`'s definition: validated anew, not
    model_copy(update=...), since the kind may change with it."""
    kept = cur.model_dump(include={"id", "project_id", "revision", "created_at", "updated_at"})
    return FEATURE_DOCUMENT.validate_python({**kept, **_feature_values(wanted)})


async def _recreate_pipeline(
    store: ConfigStore, secrets: SecretPublisher, project_id: str, wanted: PipelineSnapshot
) -> None:
    now = utc_now()
    doc = PipelineDocument.model_validate(
        {
            "id": wanted.id,
            "project_id": project_id,
            **_pipeline_values(wanted),
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "webhook_secret": generate_secret(),
        }
    )
    try:
        await store.insert_pipeline(doc)
    except DuplicateKey as exc:
        if exc.key != "id":
            raise DraftChanged(f"Pipeline name {wanted.name!r} is taken in the draft") from exc
        # Re-created by an earlier attempt, or concurrently: make it match instead.
        await _restore_pipeline(store, project_id, wanted)
        return
    await secrets.publish(project_id, doc.id, secrets_of(doc))


async def _recreate_feature(store: ConfigStore, project_id: str, wanted: FeatureSnapshot) -> None:
    now = utc_now()
    doc = FEATURE_DOCUMENT.validate_python(
        {
            "id": wanted.id,
            "project_id": project_id,
            **_feature_values(wanted),
            "revision": 1,
            "created_at": now,
            "updated_at": now,
        }
    )
    try:
        await store.insert_feature(doc)
    except DuplicateKey as exc:
        if exc.key != "id":
            raise DraftChanged(f"Feature name {wanted.name!r} is taken in the draft") from exc
        await _restore_feature(store, project_id, wanted)
