"""The rebuild command: `python -m runtime.archive.rebuild --project P [--project Q]` or
`--all` (every project with a deployment), from the event archive into the online store.

It reads the same settings as the other processes (`CONFIG_STORE`, `ONLINE_STORE`,
`ANALYTICS`...), rebuilds each project under its deployed config
(`app/services/rebuild_service.py` says how it stays safe beside a running compute),
prints one JSON report per project and exits 1 when a user was deferred (compute ahead
of the archive: run it again once the archive caught up), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence

from app.core.consumer_loop import wall_clock_ms
from app.core.settings import BackendSettings, ComputeSettings
from app.db import factory
from app.db.clickhouse import ClickHouseClientSink
from app.services.history_common import running_snapshot
from app.services.rebuild_service import RebuildReport, RebuildService
from app.tiles.record import DedupPolicy


async def rebuild_projects(
    settings: BackendSettings,
    projects: Sequence[str] | None,
    dedup: DedupPolicy | None = None,
) -> list[RebuildReport]:
    """Rebuilds `projects` (None: every deployed project the archive holds events of)
    and returns their reports. Raises RuntimeError without an archive, and
    ProjectNotDeployed for a named project without a deployment."""
    archive = factory.make_analytics(settings)
    if not isinstance(archive, ClickHouseClientSink):
        raise RuntimeError("rebuild needs the event archive: set ANALYTICS=clickhouse (or chdb)")
    config_store = factory.make_config_store(settings)
    store = factory.make_online_store(settings)
    await archive.initialize()
    await config_store.initialize()
    await store.initialize()
    try:
        service = RebuildService(archive, store, now_ms=wall_clock_ms, dedup=dedup)
        if projects is None:
            deployed = set(await config_store.deployed_projects())
            projects = [p for p in await service.projects() if p in deployed]
        reports = []
        for project_id in projects:
            reports.append(await service.rebuild(await running_snapshot(config_store, project_id)))
        return reports
    finally:
        await store.close()
        await config_store.close()
        await archive.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m runtime.archive.rebuild", description=__doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--project", action="append", help="a project id (repeatable)")
    which.add_argument("--all", action="store_true", help="every deployed project")
    args = parser.parse_args(argv)
    # The event-id horizon of the rebuilt records is compute's (COMPUTE_DEDUP_*).
    compute = ComputeSettings()
    dedup = DedupPolicy(compute.dedup_horizon_seconds * 1000, compute.dedup_max_ids)
    reports = asyncio.run(
        rebuild_projects(compute.backends, None if args.all else args.project, dedup)
    )
    for report in reports:
        print(json.dumps(dataclasses.asdict(report)), flush=True)
    return 1 if any(r.deferred for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
