"""Rebuild and point-in-time training sets: HTTP only, the rules live in
`app.services.rebuild_service` and `app.services.training_set_service`."""

from __future__ import annotations

import csv
import io
from datetime import UTC
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from app.api.deps import ConfigStoreDep, ProjectDep, RebuildServiceDep, TrainingSetServiceDep
from app.core.errors import UnprocessableEntity, UnsupportedMediaType, error_responses
from app.schemas.history import RebuildRead, TrainingRowIn, TrainingSetRequest
from app.services.history_common import deployed_snapshot
from app.services.training_set_service import MAX_ROWS, TrainingRow

router = APIRouter(prefix="/api/v1/projects/{project_id}", tags=["history"])

_REBUILD = (
    "Recomputes every record of the project from the event archive under the deployed "
    "config, aggregated in ClickHouse, and writes each with a compare-and-set beside the "
    "running compute: events the rebuilt record holds are skipped by compute (offsets and "
    "event ids), a user compute is ahead of the archive for is left as it is and counted "
    "in `deferred`. Runs to the end before answering; the whole store is rebuilt with "
    "`python -m runtime.archive.rebuild --all`.\n\n"
    "- 409 `ProjectNotDeployed`, `ArchiveNotConfigured` (`ANALYTICS=none`)."
)
_TRAINING = (
    "Each requested feature's value for each (user, timestamp) row, as serving would have "
    "answered at that moment: events received by then, in the window's tile-aligned span "
    'at that timestamp. Body: JSON `{"rows": [{"user_id", "timestamp"}], '
    '"features"?}` or CSV (`content-type: text/csv`, header `user_id,timestamp`, '
    f"features as `?features=a_5m,b_1h`). At most {MAX_ROWS} rows (and the process's body "
    "limit). Answer: CSV (`user_id,timestamp,<keys>`, timestamps in epoch ms) or, with "
    "`?format=parquet`, Parquet.\n\n"
    "- 413 `TrainingSetTooLarge`; 415 for another body type; 422 `UnknownTrainingFeature`, "
    "`InvalidTrainingRows`.\n- 409 `ProjectNotDeployed`, `ArchiveNotConfigured`."
)


class InvalidTrainingRows(UnprocessableEntity):
    """A CSV body that is not `user_id,timestamp` rows."""


@router.post(
    "/rebuild",
    summary="Rebuild the project's records from the archive",
    description=_REBUILD,
    response_model=RebuildRead,
    responses=error_responses(401, 404, 409, 503),
)
async def rebuild(
    project_id: ProjectDep, store: ConfigStoreDep, service: RebuildServiceDep
) -> RebuildRead:
    report = await service.rebuild(await deployed_snapshot(store, project_id))
    return RebuildRead(
        project_id=report.project_id,
        version=report.version,
        users=report.users,
        written=report.written,
        deferred=report.deferred,
        deferred_users=report.deferred_users[:100],
    )


def _ms(row: TrainingRowIn) -> int:
    if isinstance(row.timestamp, int):
        return row.timestamp
    stamp = row.timestamp if row.timestamp.tzinfo else row.timestamp.replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def _csv_rows(body: bytes) -> list[TrainingRowIn]:
    try:
        reader = csv.DictReader(io.StringIO(body.decode("utf-8-sig")))
        if reader.fieldnames is None or not {"user_id", "timestamp"} <= set(reader.fieldnames):
            raise InvalidTrainingRows("CSV needs a header with user_id and timestamp")
        return [
            TrainingRowIn(
                user_id=r["user_id"],
                timestamp=int(r["timestamp"]) if r["timestamp"].isdigit() else r["timestamp"],
            )
            for r in reader
        ]
    except UnicodeDecodeError as exc:
        raise InvalidTrainingRows("CSV must be UTF-8") from exc
    except ValidationError as exc:
        raise InvalidTrainingRows(f"invalid row: {exc.errors()[0]['msg']}") from exc


@router.post(
    "/training-sets",
    summary="Point-in-time feature values for (user, timestamp) rows",
    description=_TRAINING,
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        **error_responses(401, 404, 409, 413, 415, 422, 503),
    },
)
async def training_set(
    project_id: ProjectDep,
    request: Request,
    store: ConfigStoreDep,
    service: TrainingSetServiceDep,
    format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    features: Annotated[str | None, Query(description="CSV bodies: comma-separated keys")] = None,
) -> Response:
    body = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind == "application/json":
        try:
            parsed = TrainingSetRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        rows, wanted = parsed.rows, parsed.features
    elif kind == "text/csv":
        rows = _csv_rows(body)
        wanted = [f for f in features.split(",") if f] if features else None
    else:
        raise UnsupportedMediaType("send application/json or text/csv")
    snapshot = await deployed_snapshot(store, project_id)
    answer = await service.build(snapshot, [TrainingRow(r.user_id, _ms(r)) for r in rows], wanted)
    if format == "parquet":
        return Response(answer.to_parquet(), media_type="application/vnd.apache.parquet")
    return Response(answer.to_csv(), media_type="text/csv; charset=utf-8")
