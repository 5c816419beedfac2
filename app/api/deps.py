"""Typed dependency aliases of the config API: routes read like a sentence."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.auth import PrincipalDep, ProjectDep
from app.core.consumer_loop import wall_clock_ms
from app.core.errors import ServiceUnavailable
from app.core.service import Resources, get_resources
from app.core.settings import ConfigApiSettings
from app.db.cache import Cache
from app.db.clickhouse import ClickHouseClientSink
from app.db.config_store import ConfigStore
from app.services.deployment_service import DeploymentService
from app.services.feature_service import FeatureService
from app.services.history_common import ArchiveNotConfigured
from app.services.pipeline_service import PipelineService
from app.services.rebuild_service import RebuildService
from app.services.secret_publisher import SecretPublisher
from app.services.training_job_service import TrainingJobs
from app.services.training_set_service import TrainingSetService

ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_config_store(resources: ResourcesDep) -> ConfigStore:
    if resources.config_store is None:
        raise ServiceUnavailable("Config store is not configured in this process")
    return resources.config_store


def get_cache(resources: ResourcesDep) -> Cache:
    if resources.cache is None:
        raise ServiceUnavailable("Cache is not configured in this process")
    return resources.cache


ConfigStoreDep = Annotated[ConfigStore, Depends(get_config_store)]
CacheDep = Annotated[Cache, Depends(get_cache)]


def get_feature_service(store: ConfigStoreDep) -> FeatureService:
    return FeatureService(store)


def get_pipeline_service(store: ConfigStoreDep, resources: ResourcesDep) -> PipelineService:
    settings = resources.settings
    # The config API's routes only run in processes with config API settings (the API
    # itself and standalone, whose settings extend them).
    if not isinstance(settings, ConfigApiSettings):
        raise ServiceUnavailable("The config API is not configured in this process")
    publisher = SecretPublisher(resources.cache) if resources.cache is not None else None
    return PipelineService(
        store,
        FeatureService(store),
        ingest_url=settings.public_ingest_url,
        default_grace_hours=settings.default_rotation_grace_hours,
        publisher=publisher,
    )


FeatureServiceDep = Annotated[FeatureService, Depends(get_feature_service)]
PipelineServiceDep = Annotated[PipelineService, Depends(get_pipeline_service)]


def get_deployment_service(
    store: ConfigStoreDep, cache: CacheDep, resources: ResourcesDep
) -> DeploymentService:
    # With an event archive, new and changed features are backfilled before going live
    # (the archive process, or standalone, runs the backfills).
    backfill = resources.settings.backends.analytics != "none"
    return DeploymentService(store, cache, backfill=backfill)


DeploymentServiceDep = Annotated[DeploymentService, Depends(get_deployment_service)]


def get_archive(resources: ResourcesDep) -> ClickHouseClientSink:
    if not isinstance(resources.analytics, ClickHouseClientSink):
        raise ArchiveNotConfigured("This deployment keeps no event archive (ANALYTICS=none)")
    return resources.analytics


ArchiveDep = Annotated[ClickHouseClientSink, Depends(get_archive)]


def get_rebuild_service(archive: ArchiveDep, resources: ResourcesDep) -> RebuildService:
    if resources.online_store is None:
        raise ServiceUnavailable("The online store is not configured in this process")
    return RebuildService(archive, resources.online_store, now_ms=wall_clock_ms)


def get_training_set_service(archive: ArchiveDep) -> TrainingSetService:
    return TrainingSetService(archive)


def get_training_jobs(archive: ArchiveDep, resources: ResourcesDep) -> TrainingJobs:
    if resources.training_jobs is None:
        raise ServiceUnavailable("Training-set jobs do not run in this process")
    return resources.training_jobs


RebuildServiceDep = Annotated[RebuildService, Depends(get_rebuild_service)]
TrainingJobsDep = Annotated[TrainingJobs, Depends(get_training_jobs)]
TrainingSetServiceDep = Annotated[TrainingSetService, Depends(get_training_set_service)]

__all__ = [
    "ArchiveDep",
    "CacheDep",
    "ConfigStoreDep",
    "DeploymentServiceDep",
    "FeatureServiceDep",
    "PipelineServiceDep",
    "PrincipalDep",
    "ProjectDep",
    "RebuildServiceDep",
    "Request",
    "ResourcesDep",
    "TrainingJobsDep",
    "TrainingSetServiceDep",
]
