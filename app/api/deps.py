"""Typed dependency aliases of the config API: routes read like a sentence."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.core.auth import PrincipalDep, ProjectDep
from app.core.errors import ServiceUnavailable
from app.core.service import Resources, get_resources
from app.db.cache import Cache
from app.db.config_store import ConfigStore

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

__all__ = ["CacheDep", "ConfigStoreDep", "PrincipalDep", "ProjectDep", "Request", "ResourcesDep"]
