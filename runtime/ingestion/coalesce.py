"""Concurrent requests' cache calls sent together: one round trip for many requests.

Each single-event request needs its admission before it produces, and its confirm after.
Made one by one, redis-py's per-call client CPU was the largest cost of a request
(py-spy: ~11% of the process's CPU per call, four calls per event). A `Coalescer` sends
the items submitted while its previous call was in flight (or in the same event-loop
turn) as one call of the batch form (`admit_many`): the first caller pays one loop turn,
and under load every call carries the requests that arrived during the one before. Each
caller still waits for the call that carries its own item.

Riders (the confirms) are items nobody waits for: each is carried by the next call,
before that call's items (so a request admitted after a confirm was queued sees it
done), or by a call of its own when no item comes. Under load the confirms of one
call's requests ride on the next call's admissions, and an event costs a share of one
round trip instead of two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")
_N = TypeVar("_N")


class Coalescer(Generic[_T, _R, _N]):
    """Calls `call(items, riders)` with everything submitted or sent meanwhile, at most
    `max_items` items a call (riders: all of them) and one call at a time; each `submit`
    returns its own item's result."""

    def __init__(
        self,
        call: Callable[[list[_T], list[_N]], Awaitable[Sequence[_R]]],
        *,
        max_items: int,
        failure: Callable[[Exception], Exception],
        riders_lost: Callable[[list[_N], BaseException], None],
    ) -> None:
        """`failure(exc)` builds each caller's own exception when a call raised `exc`
        (one exception object raised in many tasks would grow one shared traceback);
        `riders_lost(riders, exc)` is told of the riders of a call that raised `exc`
        (or that could not be sent: stopped)."""
        self._call = call
        self._max_items = max_items
        self._failure = failure
        self._riders_lost = riders_lost
        self._waiting: list[tuple[_T, asyncio.Future[_R]]] = []
        self._riders: list[_N] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: _T) -> _R:
        """Returns `item`'s result once the call carrying it answered; raises what
        `failure` made of that call's error. A caller cancelled meanwhile does not stop
        the call (its item may still take effect, as a lost reply would)."""
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        self._start()
        return await future

    def send(self, rider: _N) -> None:
        """Queues `rider` for the next call, and returns at once."""
        self._riders.append(rider)
        self._start()

    async def drain(self) -> None:
        """Returns once everything queued so far was sent (shutdown)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        batch: list[tuple[_T, asyncio.Future[_R]]] = []
        riders: list[_N] = []
        try:
            while self._waiting or self._riders:
                batch = self._waiting[: self._max_items]
                del self._waiting[: self._max_items]
                riders, self._riders = self._riders, []
                try:
                    results = await self._call([item for item, _ in batch], riders)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(self._failure(exc))
                    if riders:
                        self._riders_lost(riders, exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            batch, riders = [], []
        except BaseException as exc:
            # Cancelled (shutdown) or a bug: nobody may wait forever.
            for _, future in [*batch, *self._waiting]:
                if not future.done():
                    future.set_exception(RuntimeError(f"cache calls stopped: {exc!r}"))
            self._waiting.clear()
            lost, self._riders = [*riders, *self._riders], []
            if lost:
                self._riders_lost(lost, exc)
            raise
        finally:
            self._task = None
