"""What the rebuild and training-set services share: their errors and the deployed
config they run under."""

from __future__ import annotations

from app.core.config_channel import running_config
from app.core.errors import Conflict, ServiceUnavailable
from app.db.config_store import ConfigStore
from app.schemas.deployment import ConfigSnapshot


class ArchiveNotConfigured(Conflict):
    """This deployment keeps no event archive (`ANALYTICS=none`): nothing to compute from."""


class ArchiveUnavailable(ServiceUnavailable):
    """The event archive did not answer; retry later."""


class ProjectNotDeployed(Conflict):
    """The project has no successful deployment: there are no features to compute."""


async def deployed_snapshot(store: ConfigStore, project_id: str) -> ConfigSnapshot:
    """Returns the config the runtimes run for the project (its latest successful
    deployment). Raises ProjectNotDeployed when there is none."""
    live = await store.latest_deployment(project_id)
    if live is None:
        raise ProjectNotDeployed(f"Project {project_id} has no successful deployment")
    return live.snapshot


async def running_snapshot(store: ConfigStore, project_id: str) -> ConfigSnapshot:
    """As `deployed_snapshot`, plus the features a `backfilling` deployment staged (what
    compute runs): a rebuild during a backfill rebuilds those too. Raises
    ProjectNotDeployed."""
    live = await store.latest_deployment(project_id)
    backfilling = await store.latest_deployment(project_id, ("backfilling",))
    running = running_config(live, backfilling)
    if running is None:
        raise ProjectNotDeployed(f"Project {project_id} has no successful deployment")
    return running
