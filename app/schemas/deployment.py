"""Deployments: versioned snapshots of a project's config, and the change list."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag

from app.schemas.common import USER_ENTITY, ObjectIdStr, RequestModel, ResponseModel
from app.schemas.feature import Aggregation, FeatureEntity, FeatureFilter, feature_kind
from app.schemas.pipeline import Category, EventDefinition, PipelineStatus

DeploymentStatus = Literal[
    "pending", "deploying", "backfilling", "success", "failed", "rolled_back"
]
BackfillPhase = Literal["catching_up", "filling", "done"]
ChangeType = Literal["create", "update", "delete"]
ResourceType = Literal["pipeline", "event", "feature"]


class Change(ResponseModel):
    type: ChangeType
    resource_type: ResourceType
    resource_id: str = Field(description="Pipeline/feature id; `{pipeline_id}/{event}` for events")
    description: str = Field(examples=["feature cart_adds: windows 1h,24h → 5m,1h,24h"])


class PipelineSnapshot(ResponseModel):
    """A pipeline as deployed (no secrets: those rotate without a deploy)."""

    id: str
    name: str
    description: str = ""
    category: Category
    status: PipelineStatus
    events: list[EventDefinition]


class AggregateFeatureSnapshot(ResponseModel):
    """An aggregate feature as deployed."""

    kind: Literal["aggregate"] = "aggregate"
    id: str
    name: str
    description: str = ""
    pipeline_id: str
    source_event: str
    aggregation: Aggregation
    field: str | None
    time_windows: list[str]
    size: int | None = None
    filter: FeatureFilter | None = None
    entity: FeatureEntity = USER_ENTITY
    enabled: bool


class DerivedFeatureSnapshot(ResponseModel):
    """A derived feature as deployed."""

    kind: Literal["derived"] = "derived"
    id: str
    name: str
    description: str = ""
    pipeline_id: str
    expression: str
    enabled: bool


FeatureSnapshot = Annotated[
    Annotated[AggregateFeatureSnapshot, Tag("aggregate")]
    | Annotated[DerivedFeatureSnapshot, Tag("derived")],
    Discriminator(feature_kind),
]


class ConfigSnapshot(ResponseModel):
    """The whole config of one project at one version: what the runtimes run.

    `staged` is set only on the copy published while version `staged_version` is being
    backfilled (`app/services/backfill_service.py`): its new and changed features, which
    compute fills from the stream under staged names beside the live ones while serving
    and ingestion keep running `features`. Deployments never store it.
    """

    project_id: str
    version: int
    pipelines: list[PipelineSnapshot]
    features: list[FeatureSnapshot]
    staged: list[FeatureSnapshot] = Field(default_factory=list)
    staged_version: int | None = None


class DeploymentCreate(RequestModel):
    """POST /deployments body (optional)."""

    description: str = Field(default="", max_length=1000)


class BackfillProgress(ResponseModel):
    """Where a deployment's backfill is: which features it fills from the archive and how
    far it got. `users_total` is the project's archived users when the fill started."""

    features: list[str] = Field(description="New or changed features filled from the archive")
    phase: BackfillPhase = Field(
        default="catching_up",
        description="`catching_up`: waiting for the archive to hold what compute applied "
        "before the new features were staged; `filling`: rebuilding users; `done`",
    )
    users_done: int = 0
    users_total: int | None = None
    deferred: int = Field(default=0, description="Users retried because compute was ahead")
    after: str | None = Field(default=None, description="Last user filled (where a resume starts)")
    started_at: datetime | None = None
    heartbeat_at: datetime | None = Field(
        default=None, description="Last progress; a backfill silent too long is failed"
    )


class DeploymentRead(ResponseModel):
    id: ObjectIdStr
    project_id: str
    version: int
    status: DeploymentStatus
    changes: list[Change]
    description: str = ""
    deployed_by: str
    deployed_at: datetime | None
    created_at: datetime
    error: str | None = None
    rolled_back_from: int | None = Field(
        default=None, description="For a rollback: the version whose snapshot was re-activated"
    )
    backfill: BackfillProgress | None = Field(
        default=None,
        description="Set when the deployment added or changed features: their fill from "
        "the event archive (status `backfilling` until it is done)",
    )


class RollbackRead(DeploymentRead):
    """A rollback's answer: the new deployment, and what happened to the draft."""

    draft_reset: bool = Field(
        default=True,
        description="Always true: a rollback makes the draft equal to the target's config",
    )
    discarded_changes: list[Change] = Field(
        default_factory=list,
        description="The draft's pending changes (against the version live before the "
        "rollback) that the reset discarded; empty when nothing was pending",
    )


class PendingChanges(ResponseModel):
    base_version: int | None = Field(description="Version the diff is against; null if none")
    changes: list[Change]
