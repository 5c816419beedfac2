"""Rebuild and point-in-time training sets: HTTP only, the rules live in
`app.services.rebuild_service` and `app.services.training_set_service`."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import ValidationError

from app.api.deps import (
    ConfigStoreDep,
    ProjectDep,
    RebuildServiceDep,
    TrainingJobsDep,
    TrainingSetServiceDep,
)
from app.core.errors import UnprocessableEntity, UnsupportedMediaType, error_responses
from app.db.training_jobs import TrainingJob
from app.schemas.history import RebuildRead, TrainingJobRead, TrainingRowIn, TrainingSetRequest
from app.services.history_common import deployed_snapshot, running_snapshot
from app.services.training_job_service import JOB_MAX_ROWS
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
    f"features as `?features=a_5m,b_1h`). Up to {MAX_ROWS:,} rows the answer comes at "
    "once: CSV (`user_id,timestamp,<keys>`, timestamps in epoch ms) or, with "
    f"`?format=parquet`, Parquet. Above that (or with `?job=true`), up to {JOB_MAX_ROWS:,} "
    "rows (and the process's body limit, API_MAX_BODY_BYTES), it runs as a job: 202 with "
    "the job (`job_id`, `state`, `status_url`; `Location` is the status URL); poll "
    "`GET .../training-sets/jobs/{job_id}` for `rows_done`/`rows_total` and the state "
    "(queued, running, succeeded, failed), then download `result_url`.\n\n"
    "- 413 `TrainingJobTooLarge` above the job limit; 415 for another body type; 422 "
    "`UnknownTrainingFeature`, `InvalidTrainingRows`.\n"
    "- 409 `ProjectNotDeployed`, `ArchiveNotConfigured`."
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
    report = await service.rebuild(await running_snapshot(store, project_id))
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
        202: {"model": TrainingJobRead, "description": "A job was started"},
        **error_responses(401, 404, 409, 413, 415, 422, 503),
    },
)
async def training_set(
    project_id: ProjectDep,
    request: Request,
    store: ConfigStoreDep,
    service: TrainingSetServiceDep,
    jobs: TrainingJobsDep,
    format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    features: Annotated[str | None, Query(description="CSV bodies: comma-separated keys")] = None,
    job: Annotated[bool, Query(description="Run as a job whatever the size")] = False,
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
    training_rows = [TrainingRow(r.user_id, _ms(r)) for r in rows]
    if job or len(training_rows) > MAX_ROWS:
        started = await jobs.submit(snapshot, training_rows, wanted, format)
        read = _job_read(request, started)
        return JSONResponse(
            read.model_dump(mode="json"), status_code=202, headers={"Location": read.status_url}
        )
    answer = await service.build(snapshot, training_rows, wanted)
    if format == "parquet":
        return Response(answer.to_parquet(), media_type="application/vnd.apache.parquet")
    return Response(answer.to_csv(), media_type="text/csv; charset=utf-8")


def _job_read(request: Request, job: TrainingJob) -> TrainingJobRead:
    base = f"/api/v1/projects/{job.project_id}/training-sets/jobs/{job.id}"
    return TrainingJobRead(
        job_id=job.id,
        project_id=job.project_id,
        version=job.version,
        state=job.state,
        rows_done=job.rows_done,
        rows_total=job.rows_total,
        format=job.format,
        error=job.error,
        created_at=datetime.fromtimestamp(job.created_ms / 1000, UTC),
        updated_at=datetime.fromtimestamp(job.updated_ms / 1000, UTC),
        status_url=base,
        result_url=f"{base}/result" if job.state == "succeeded" else None,
    )


@router.get(
    "/training-sets/jobs/{job_id}",
    summary="A training-set job's state and progress",
    description="State (queued, running, succeeded, failed), rows done of the total, and "
    "`result_url` once succeeded. A job whose process died shows `failed` (within "
    "API_TRAINING_JOB_STALE_SECONDS).\n\n- 404 `TrainingJobNotFound` (also for another "
    "project's job).",
    response_model=TrainingJobRead,
    responses=error_responses(401, 404, 409, 503),
)
async def training_job(
    project_id: ProjectDep, job_id: str, request: Request, jobs: TrainingJobsDep
) -> TrainingJobRead:
    return _job_read(request, await jobs.get(project_id, job_id))


@router.get(
    "/training-sets/jobs/{job_id}/result",
    summary="A succeeded training-set job's answer",
    description="The CSV or Parquet answer, as the synchronous request gives it.\n\n"
    "- 404 `TrainingJobNotFound`; 409 `TrainingJobNotFinished` (queued, running or failed).",
    response_class=FileResponse,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        **error_responses(401, 404, 409, 503),
    },
)
async def training_job_result(
    project_id: ProjectDep, job_id: str, jobs: TrainingJobsDep
) -> FileResponse:
    job, path = await jobs.result(project_id, job_id)
    media = "application/vnd.apache.parquet" if job.format == "parquet" else "text/csv"
    return FileResponse(path, media_type=media, filename=f"training-set-{job.id}.{job.format}")
