"""What the fault cases share: the shared test servers' addresses, and a helper that waits
for a condition with a bound (a hang becomes a failure; nothing is timed)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.conftest import KAFKA_BOOTSTRAP, MONGODB_URL, REDIS_URL
from tests.faults.platform import Servers


def shared_servers(**private: str) -> Servers:
    """The servers of scripts/servers.sh, with `private` ones (that the case stops) instead:
    `kafka_bootstrap=`, `redis_url=`, `mongodb_url=`."""
    servers = {
        "kafka_bootstrap": KAFKA_BOOTSTRAP,
        "redis_url": REDIS_URL,
        "mongodb_url": MONGODB_URL,
        **private,
    }
    return Servers(**servers)


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, bound_s: float = 90
) -> None:
    """Returns once `check()` is true; fails with `what` after `bound_s`."""
    try:
        async with asyncio.timeout(bound_s):
            while True:
                result = check()
                if result if isinstance(result, bool) else await result:
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {bound_s:g} s: {what}") from None
