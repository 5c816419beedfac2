"""The consumer-group loop compute and the archive share: join, fetch, process, commit.

A subclass says what "storing a batch" means (`process`); this class owns the rest of
at-least-once consumption, identically for both: joining the group while the log is
down (retrying with backoff), fetching, reading the lag in the background, retrying a
batch that cannot be stored with jittered backoff without ever skipping it, committing
only after the store, and leaving the group when stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from app.core.errors import ErrorEnvelope
from app.core.service import Resources, get_resources
from app.db.event_log import EventLogConsumer, LogRecord
from app.schemas.event import EventMessage

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def wall_clock_ms() -> int:
    """Returns the current wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


class LoopOptions(Protocol):
    """The tuning every loop reads (each process's options class has these fields)."""

    @property
    def max_batch_messages(self) -> int: ...
    @property
    def poll_timeout_ms(self) -> int: ...
    @property
    def retry_first_s(self) -> float: ...
    @property
    def retry_max_s(self) -> float: ...
    @property
    def lag_refresh_s(self) -> float: ...


class _Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class LoopMetrics(Protocol):
    """The series the loop updates (each process names them with its own prefix)."""

    @property
    def batches(self) -> _Counter: ...
    @property
    def commit_failures(self) -> _Counter: ...
    @property
    def decode_errors(self) -> _Counter: ...
    def set_lag(self, lag: Mapping[int, int]) -> None: ...


@dataclass(slots=True)
class LoopState:
    """What /ready and /consumer report about the consumer."""

    consumer_started: bool = False
    batches_committed: int = 0
    last_commit_ms: int | None = None
    retrying: bool = False
    last_error: str | None = None
    lag: dict[int, int] = field(default_factory=dict)


class LoopStatus(BaseModel):
    """A consumer loop as /ready and its status route (`/consumer`, `/archive`) report it."""

    running: bool
    consumer_started: bool
    retrying: bool
    last_error: str | None
    batches_committed: int
    last_commit_ms: int | None
    lag: dict[str, int]


class LoopNotRunning(Exception):
    """The consumer loop has stopped (or crashed): its records are not being stored."""


class LoopNotStarted(Exception):
    """The consumer has not joined its group yet (event log unreachable)."""


class LoopRetrying(Exception):
    """A batch cannot be stored (its store is unavailable) and is being retried."""


class ConsumerLoop(ABC):
    """Consumes the event log until stopped; `process` stores and commits one batch."""

    def __init__(
        self, consumer: EventLogConsumer, options: LoopOptions, metrics: LoopMetrics
    ) -> None:
        self._consumer = consumer
        self._loop_options = options
        self._loop_metrics = metrics
        self._stopping = asyncio.Event()
        self._last_lag_refresh = 0.0
        self._lag_task: asyncio.Task[None] | None = None
        self.state = LoopState()

    @abstractmethod
    async def process(self, records: Sequence[LogRecord]) -> bool:
        """Stores the effect of `records`, then commits past them (`_commit`). Returns
        False when stopped before the batch was stored (nothing committed)."""

    # -- lifetime ------------------------------------------------------------------------
    async def run(self) -> None:
        """Joins the group (retrying while the log is down) and processes batches until
        `stop()`; leaves the group on the way out."""
        try:
            if not await self._start_consumer():
                return
            while not self._stopping.is_set():
                records = await self._fetch()
                self._refresh_lag()
                if records:
                    await self.process(records)
        finally:
            if self._lag_task is not None:
                self._lag_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._lag_task
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self.state.consumer_started = False

    def stop(self) -> None:
        """Asks the loop to leave after the in-flight batch (returns at once)."""
        self._stopping.set()

    async def stop_running(self, task: asyncio.Task[None], timeout_s: float) -> None:
        """Stops the loop that `task` runs: lets the in-flight batch be stored and
        committed for up to `timeout_s`, then cancels it (the batch is redelivered)."""
        self.stop()
        name = type(self).__name__
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            logger.warning("%s did not stop in time; cancelling it", name)
        except Exception:
            logger.exception("%s had failed", name)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def check(self, task: asyncio.Task[None]) -> None:
        """The loop's entry in /ready (beside the backends' pings): raises LoopNotRunning,
        LoopNotStarted or LoopRetrying; returns when it consumes normally."""
        if task.done():
            raise LoopNotRunning(f"the {type(self).__name__} loop is not running")
        if not self.state.consumer_started:
            raise LoopNotStarted("the consumer has not joined its group")
        if self.state.retrying:
            raise LoopRetrying(f"batch retrying after {self.state.last_error}")

    def status(self, task: asyncio.Task[None]) -> LoopStatus:
        """Returns the state of the loop that `task` runs."""
        s = self.state
        return LoopStatus(
            running=not task.done(),
            consumer_started=s.consumer_started,
            retrying=s.retrying,
            last_error=s.last_error,
            batches_committed=s.batches_committed,
            last_commit_ms=s.last_commit_ms,
            lag={str(p): v for p, v in sorted(s.lag.items())},
        )

    # -- for `process` -------------------------------------------------------------------
    def _decode(
        self, records: Sequence[LogRecord]
    ) -> tuple[list[tuple[LogRecord, EventMessage]], list[LogRecord]]:
        """Returns the records that are event messages, with their message, and the ones
        that are not (counted as decode errors and logged by position only: the payload
        is untrusted and may hold personal data). Ingestion never produces the latter."""
        events: list[tuple[LogRecord, EventMessage]] = []
        undecodable: list[LogRecord] = []
        for record in records:
            try:
                events.append((record, EventMessage.decode(record.value)))
            except (ValidationError, ValueError):
                self._loop_metrics.decode_errors.inc()
                logger.error(
                    "a record that is not an event message",
                    extra={"partition": record.partition, "offset": record.offset},
                )
                undecodable.append(record)
        return events, undecodable

    async def _until_stored(
        self,
        store: Callable[[], Awaitable[_T]],
        failed: Callable[[Exception, float], None],
    ) -> tuple[bool, _T | None]:
        """Calls `store` until it returns, with jittered exponential backoff between
        attempts (`failed(exc, delay)` is told of each failure first); the batch is never
        skipped. Returns (True, its result), or (False, None) once stopped meanwhile."""
        delay = self._loop_options.retry_first_s
        while True:
            try:
                result = await store()
            except Exception as exc:  # any failure: keep the batch, never skip it
                self.state.retrying = True
                self.state.last_error = type(exc).__name__
                failed(exc, delay)
                if await self._sleep_unless_stopped(delay * random.uniform(0.5, 1.0)):
                    return False, None
                delay = min(delay * 2, self._loop_options.retry_max_s)
                continue
            self.state.retrying = False
            self.state.last_error = None
            return True, result

    async def _commit(self, records: Sequence[LogRecord]) -> None:
        """Commits past `records`. A failed commit is counted and logged, not raised:
        the records are stored, and their redelivery is harmless (each process says why
        in its own docstring)."""
        next_offsets: dict[int, int] = {}
        for record in records:
            next_offsets[record.partition] = max(
                next_offsets.get(record.partition, 0), record.offset + 1
            )
        try:
            await self._consumer.commit(next_offsets)
        except Exception as exc:
            self._loop_metrics.commit_failures.inc()
            logger.warning("offset commit failed after the store", exc_info=exc)
            return
        self._loop_metrics.batches.inc()
        self.state.batches_committed += 1
        self.state.last_commit_ms = wall_clock_ms()

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleeps; returns True (early) if stop() was called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    # -- consumer plumbing ---------------------------------------------------------------
    async def _start_consumer(self) -> bool:
        delay = self._loop_options.retry_first_s
        while not self._stopping.is_set():
            try:
                await self._consumer.start()
            except Exception as exc:
                self.state.last_error = type(exc).__name__
                logger.warning("event log unavailable at start; retrying", exc_info=exc)
                if await self._sleep_unless_stopped(delay):
                    return False
                delay = min(delay * 2, self._loop_options.retry_max_s)
                continue
            self.state.consumer_started = True
            self.state.last_error = None
            return True
        return False

    async def _fetch(self) -> list[LogRecord]:
        try:
            return await self._consumer.getmany(
                self._loop_options.max_batch_messages, self._loop_options.poll_timeout_ms
            )
        except Exception as exc:
            self.state.last_error = type(exc).__name__
            logger.warning("event log read failed; retrying", exc_info=exc)
            await self._sleep_unless_stopped(self._loop_options.retry_first_s)
            return []

    def _refresh_lag(self) -> None:
        """Starts a lag read in the background, at most every `lag_refresh_s`.

        Not awaited by the loop: the offsets request can queue behind the consumer's
        long-poll fetch on the broker connection (measured: 200-330 ms), which would
        stall every batch behind a diagnostic."""
        now = time.monotonic()
        if now - self._last_lag_refresh < self._loop_options.lag_refresh_s:
            return
        if self._lag_task is not None and not self._lag_task.done():
            return
        self._last_lag_refresh = now
        self._lag_task = asyncio.create_task(self._read_lag())

    async def _read_lag(self) -> None:
        try:
            lag = await self._consumer.lag()
        except Exception as exc:  # lag is diagnostics; the loop goes on without it
            logger.debug("consumer lag unavailable: %r", exc)
            return
        self.state.lag = dict(lag)
        self._loop_metrics.set_lag(lag)


def status_router(
    path: str, summary: str, status_of: Callable[[Resources], LoopStatus | None]
) -> APIRouter:
    """Returns `GET {path}`: the loop's state (200 while it runs, 503 otherwise or when
    the process runs no such loop)."""
    router = APIRouter(tags=["health"])

    @router.get(
        path, summary=summary, response_model=LoopStatus, responses={503: {"model": LoopStatus}}
    )
    async def loop_status(request: Request) -> JSONResponse:
        status = status_of(get_resources(request))
        if status is None:
            envelope = ErrorEnvelope(error="NotRunning", detail=f"no loop behind {path}")
            return JSONResponse(envelope.model_dump(), status_code=503)
        return JSONResponse(status.model_dump(), status_code=200 if status.running else 503)

    return router
