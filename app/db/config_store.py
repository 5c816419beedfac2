"""The config store interface: pipelines and features (the draft) and deployments.

Two implementations: MongoDB through PyMongo's async client (`app/db/mongodb.py`, also
run against FerretDB) and SQLite for standalone (`app/db/sqlite_config.py`). Both must
work without multi-document transactions (FerretDB has none), so every method is a
single-document operation or safe to retry, and concurrency is settled by unique keys
and revision checks rather than locks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

from app.db.documents import DeploymentDocument, FeatureDocument, PipelineDocument
from app.schemas.deployment import BackfillProgress, DeploymentStatus
from app.schemas.pipeline import Category, PipelineStatus


class DuplicateKey(Exception):
    """A unique key (pipeline name, feature name, deployment version) is taken."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class ConfigStoreUnavailable(Exception):
    """The store did not answer in time (down, unreachable, overloaded): retrying later may
    succeed. Every method may raise it; nothing of the call may be assumed written."""


class ConfigStore(ABC):
    """Every query on config data lives behind this interface."""

    async def initialize(self) -> None:
        """Connects and creates indexes/tables; idempotent."""

    async def close(self) -> None:
        """Releases connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Returns when the store answers; raises otherwise."""

    # -- pipelines (draft) -------------------------------------------------------------
    @abstractmethod
    async def list_pipelines(
        self,
        project_id: str,
        *,
        status: PipelineStatus | None = None,
        category: Category | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[PipelineDocument], int]:
        """Returns one page ordered by (created_at, id) and the total matching count."""

    @abstractmethod
    async def get_pipeline(self, project_id: str, pipeline_id: str) -> PipelineDocument | None:
        """Returns the pipeline, or None if absent in this project."""

    @abstractmethod
    async def insert_pipeline(self, doc: PipelineDocument) -> None:
        """Raises DuplicateKey('name') if the project has a pipeline of that name."""

    @abstractmethod
    async def replace_pipeline(self, doc: PipelineDocument, expected_revision: int) -> bool:
        """Replaces the stored pipeline if its revision is `expected_revision`.

        Returns False when it is absent or its revision differs (someone else saved first).
        Raises DuplicateKey('name') on a name clash.
        """

    @abstractmethod
    async def delete_pipeline(self, project_id: str, pipeline_id: str) -> bool:
        """Returns whether a pipeline was deleted."""

    # -- features (draft) --------------------------------------------------------------
    @abstractmethod
    async def list_features(
        self,
        project_id: str,
        *,
        pipeline_id: str | None = None,
        enabled: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[FeatureDocument], int]:
        """Returns one page ordered by (created_at, id) and the total matching count."""

    @abstractmethod
    async def get_feature(self, project_id: str, feature_id: str) -> FeatureDocument | None:
        """Returns the feature, or None if absent in this project."""

    @abstractmethod
    async def insert_feature(self, doc: FeatureDocument) -> None:
        """Raises DuplicateKey('name') if the project has a feature of that name."""

    @abstractmethod
    async def replace_feature(self, doc: FeatureDocument, expected_revision: int) -> bool:
        """As replace_pipeline."""

    @abstractmethod
    async def delete_feature(self, project_id: str, feature_id: str) -> bool:
        """Returns whether a feature was deleted."""

    @abstractmethod
    async def delete_features_of_pipeline(self, project_id: str, pipeline_id: str) -> int:
        """Deletes every feature built on the pipeline; returns how many."""

    # -- deployments -------------------------------------------------------------------
    @abstractmethod
    async def insert_deployment(self, doc: DeploymentDocument) -> None:
        """Raises DuplicateKey('version') if (project_id, version) exists: of two concurrent
        deploys computing the same next version, exactly one insert wins."""

    @abstractmethod
    async def update_deployment_status(
        self,
        project_id: str,
        deployment_id: str,
        status: DeploymentStatus,
        *,
        deployed_at: datetime | None = None,
        error: str | None = None,
    ) -> None:
        """Moves a deployment to `status` (and stamps deployed_at / error when given)."""

    @abstractmethod
    async def update_backfill(
        self, project_id: str, deployment_id: str, progress: BackfillProgress
    ) -> bool:
        """Stores the progress of a deployment that is `backfilling`. Returns False, and
        writes nothing, when it is not (failed as abandoned, or finished) any more."""

    @abstractmethod
    async def deployments_in_status(self, status: DeploymentStatus) -> list[DeploymentDocument]:
        """Returns every project's deployments in `status`, oldest first (the backfill
        runner looks for `backfilling` ones)."""

    @abstractmethod
    async def mark_rolled_back(self, project_id: str, after_version: int) -> int:
        """Sets status `rolled_back` on successful deployments with version > after_version;
        returns how many."""

    @abstractmethod
    async def list_deployments(
        self, project_id: str, *, limit: int | None = None, offset: int = 0
    ) -> tuple[list[DeploymentDocument], int]:
        """Returns one page, newest first, and the total count."""

    @abstractmethod
    async def get_deployment(
        self, project_id: str, deployment_id: str
    ) -> DeploymentDocument | None:
        """Returns the deployment, or None if absent in this project."""

    @abstractmethod
    async def latest_deployment(
        self, project_id: str, statuses: Sequence[DeploymentStatus] = ("success",)
    ) -> DeploymentDocument | None:
        """Returns the highest-version deployment whose status is in `statuses`."""

    @abstractmethod
    async def deployed_projects(self) -> list[str]:
        """Returns every project id with a successful deployment (runtimes warm up on it)."""
