"""The Cassandra sink's in-flight window: prepared statements on the driver's I/O thread, bounded.

Completions start the next queued statement right in the driver's callback
(as the driver's ``execute_concurrent`` does); the asyncio side is woken only
when ``write()`` may return or ``flush()`` may finish. Retriable failures
(timeouts, unavailable replicas) back off and keep their slot, so the bound
holds during an outage too.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from millpond.errors import ConnectorError, RetriableConnectorError
from millpond.records import Record

from .mapping import where

log = logging.getLogger("millpond.connectors.cassandra")


@dataclass(slots=True, eq=False)
class Job:
    statement: Any
    table: str
    records: list[Record]
    attempt: int = 0

    def describe(self) -> str:
        first = self.records[0]
        if len(self.records) == 1:
            return f"{self.table}, {where(first)}"
        offsets = [r.offset for r in self.records if r.offset is not None]
        return (
            f"{self.table}, batch of {len(self.records)} rows from topic {first.topic!r} "
            f"partition {first.partition} offsets {min(offsets)}..{max(offsets)}"
        )


def retriable(exc: BaseException) -> bool:
    from cassandra import OperationTimedOut, Unavailable, WriteTimeout
    from cassandra.cluster import NoHostAvailable
    from cassandra.connection import ConnectionException
    from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage

    return isinstance(
        exc,
        (
            OperationTimedOut,
            WriteTimeout,
            Unavailable,
            NoHostAvailable,
            ConnectionException,
            OverloadedErrorMessage,
            IsBootstrappingErrorMessage,
        ),
    )


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class InFlightWindow:
    """Statements queued and in flight; at most ``limit`` in flight at once.

    Thread-safe: ``submit`` runs on the asyncio thread, completions on the
    driver's I/O thread. Retries keep their slot while they back off, so the
    bound holds during an outage too.
    """

    def __init__(
        self,
        session: Any,
        loop: asyncio.AbstractEventLoop,
        limit: int,
        retries: int,
        backoff_s: float,
        backoff_max_s: float,
        timeout_s: float,
    ) -> None:
        self._session = session
        self._loop = loop
        self._limit = limit
        self._retries = retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._queue: deque[Job] = deque()
        self._in_flight = 0
        self._error: ConnectorError | None = None
        self._waiter: tuple[asyncio.Future[None], Callable[[], bool]] | None = None
        self._local = threading.local()
        self.acked_rows = 0
        self.retries_done = 0
        self.low_water = limit

    # asyncio side

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, jobs: list[Job]) -> None:
        with self._lock:
            if self._error is None:
                self._queue.extend(jobs)
        self.raise_error()
        self._pump()

    async def wait_low_water(self) -> None:
        await self._wait(lambda: len(self._queue) <= self.low_water)

    async def drain(self) -> None:
        await self._wait(lambda: not self._queue and self._in_flight == 0)

    async def _wait(self, ready: Callable[[], bool]) -> None:
        while True:
            with self._lock:
                if self._error is None and ready():
                    return
                if self._error is not None:
                    future = None
                else:
                    future = self._loop.create_future()
                    self._waiter = (future, ready)
            if future is None:
                self.raise_error()
                return
            await future

    # either side

    def _pump(self) -> None:
        local = self._local
        if getattr(local, "pumping", False):
            return  # a completion that ran synchronously inside _send: the outer loop goes on
        local.pumping = True
        try:
            while True:
                with self._lock:
                    if self._error is not None or not self._queue or self._in_flight >= self._limit:
                        return
                    job = self._queue.popleft()
                    self._in_flight += 1
                self._send(job)
        finally:
            local.pumping = False

    def _send(self, job: Job) -> None:
        try:
            future = self._session.execute_async(job.statement, timeout=self._timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported like a failed response
            self._failed(exc, job)
            return
        future.add_callbacks(self._done, self._failed, callback_args=(job,), errback_args=(job,))

    def _take_waiter(self) -> asyncio.Future[None] | None:
        """The waiter to wake, if its condition now holds; call with the lock held."""
        waiter = self._waiter
        if waiter is not None and (self._error is not None or waiter[1]()):
            self._waiter = None
            return waiter[0]
        return None

    def _wake(self, future: asyncio.Future[None] | None) -> None:
        if future is None:
            return
        try:
            self._loop.call_soon_threadsafe(_resolve, future)
        except RuntimeError:
            pass  # the loop is gone: nobody is waiting any more

    # driver I/O thread

    def _done(self, _rows: Any, job: Job) -> None:
        with self._lock:
            self._in_flight -= 1
            self.acked_rows += len(job.records)
        self._pump()
        with self._lock:
            waiter = self._take_waiter()
        self._wake(waiter)

    def _failed(self, exc: BaseException, job: Job) -> None:
        if retriable(exc) and job.attempt < self._retries:
            job.attempt += 1
            delay = min(self._backoff_s * 2 ** (job.attempt - 1), self._backoff_max_s)
            delay *= random.uniform(0.5, 1.0)
            log.debug("retrying %s in %.2fs after %r", job.describe(), delay, exc)
            try:
                self._loop.call_soon_threadsafe(self._loop.call_later, delay, self._retry, job)
                return
            except RuntimeError:
                pass  # the loop is gone: fail below
        error: ConnectorError
        if retriable(exc):
            error = RetriableConnectorError(
                f"Cassandra write failed after {job.attempt + 1} attempts: {job.describe()}: {exc}"
            )
        else:
            error = ConnectorError(f"Cassandra rejected a write: {job.describe()}: {exc}")
        with self._lock:
            self._in_flight -= 1
            if self._error is None:
                self._error = error
            self._queue.clear()
            waiter = self._take_waiter()
        self._wake(waiter)

    def _retry(self, job: Job) -> None:
        with self._lock:
            failed = self._error is not None
            if failed:
                self._in_flight -= 1
                waiter = self._take_waiter()
        if failed:
            self._wake(waiter)
            return
        self.retries_done += 1
        self._send(job)
