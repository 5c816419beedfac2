"""Concurrent requests' cache calls sent together: one round trip for many requests.

Each single-event request needs two cache calls (its admission, then its confirm). Made
one by one, redis-py's per-call client CPU was the largest cost of a request (py-spy:
~11% of the process's CPU per call, four calls per event). A `Coalescer` sends the
items submitted while its previous call was in flight (or in the same event-loop turn)
as one call of the batch form (`admit_many`, `confirm_many`): the first caller pays one
loop turn, and under load every call carries the requests that arrived during the one
before. Each caller still waits for the call that carries its own item, so nothing is
acknowledged earlier than before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


class Coalescer(Generic[_T, _R]):
    """Calls `call(items)` with everything submitted meanwhile, at most `max_items` a
    call and one call at a time; each `submit` returns its own item's result."""

    def __init__(
        self,
        call: Callable[[list[_T]], Awaitable[Sequence[_R]]],
        *,
        max_items: int,
        failure: Callable[[Exception], Exception],
    ) -> None:
        """`failure(exc)` builds each caller's own exception when a call raised `exc`
        (one exception object raised in many tasks would grow one shared traceback)."""
        self._call = call
        self._max_items = max_items
        self._failure = failure
        self._waiting: list[tuple[_T, asyncio.Future[_R]]] = []
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: _T) -> _R:
        """Returns `item`'s result once the call carrying it answered; raises what
        `failure` made of that call's error. A caller cancelled meanwhile does not stop
        the call (its item may still take effect, as a lost reply would)."""
        future: asyncio.Future[_R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._draining:
            self._draining = True
            self._task = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        batch: list[tuple[_T, asyncio.Future[_R]]] = []
        try:
            while self._waiting:
                batch = self._waiting[: self._max_items]
                del self._waiting[: self._max_items]
                try:
                    results = await self._call([item for item, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(self._failure(exc))
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        except BaseException as exc:
            # Cancelled (shutdown) or a bug: nobody may wait forever.
            for _, future in [*batch, *self._waiting]:
                if not future.done():
                    future.set_exception(RuntimeError(f"cache calls stopped: {exc!r}"))
            self._waiting.clear()
            raise
        finally:
            self._draining = False
