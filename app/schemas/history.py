"""Rebuild and training-set bodies (`app/api/v1/history.py`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import RequestModel, ResponseModel


class TrainingRowIn(RequestModel):
    """One row: whose features, and as of when."""

    user_id: str = Field(min_length=1, max_length=256)
    timestamp: int | datetime = Field(
        description="Epoch milliseconds, or ISO 8601 with a time zone",
        examples=[1767225600000, "2026-01-01T00:00:00Z"],
    )


class TrainingSetRequest(RequestModel):
    """POST .../training-sets as JSON (CSV bodies carry `user_id,timestamp` rows and take
    `features` as a query parameter)."""

    rows: list[TrainingRowIn]
    features: list[str] | None = Field(
        default=None,
        description="Served keys `{feature}_{window}`; every served key when absent",
        examples=[["cart_adds_5m", "spend_30d"]],
    )


class RebuildRead(ResponseModel):
    """What a rebuild did."""

    project_id: str
    version: int = Field(description="The deployed version the records were rebuilt under")
    users: int = Field(description="Users with archived events")
    written: int = Field(description="Records written")
    deferred: int = Field(
        description="Users left as compute wrote them: compute is ahead of the archive for "
        "them (see the archive's lag on /archive); run the rebuild again later"
    )
    deferred_users: list[str] = Field(description="The first 100 deferred users")


class TrainingJobRead(ResponseModel):
    """A training-set job: its state, progress, and where its answer is once done."""

    job_id: str
    project_id: str
    version: int = Field(description="The deployed version the values are computed under")
    state: Literal["queued", "running", "succeeded", "failed"]
    rows_done: int = Field(description="Rows computed so far (by chunks of users)")
    rows_total: int
    format: Literal["csv", "parquet"]
    error: str | None = Field(description="Why the job failed")
    created_at: datetime
    updated_at: datetime = Field(description="The job's last heartbeat or change")
    status_url: str
    result_url: str | None = Field(description="The answer's download, once succeeded")
