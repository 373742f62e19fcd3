"""Unit tests of the sink's in-flight window: bound, retries with backoff, errors.

A fake session stands in for the driver here (this is a test of our own
scheduling logic); the real driver and server are in test_sink_cassandra.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from cassandra import OperationTimedOut
from cassandra.protocol import SyntaxException

from millpond.connectors.cassandra.window import InFlightWindow, Job
from millpond.errors import ConnectorError, RetriableConnectorError
from millpond.records import Record


class FakeFuture:
    def __init__(self, session: FakeSession, statement: Any) -> None:
        self.session = session
        self.statement = statement

    def add_callbacks(self, callback: Any, errback: Any, callback_args: tuple[Any, ...] = (),
                      errback_args: tuple[Any, ...] = ()) -> None:
        def complete() -> None:
            time.sleep(0.001)
            with self.session.lock:
                self.session.in_flight -= 1
                attempts = self.session.attempts.get(self.statement, 0) + 1
                self.session.attempts[self.statement] = attempts
            failure = self.session.failure(self.statement, attempts)
            if failure is None:
                callback(None, *callback_args)
            else:
                errback(failure, *errback_args)

        threading.Thread(target=complete, daemon=True).start()  # as the driver's I/O thread would


class FakeSession:
    def __init__(self, failure: Any) -> None:
        self.failure = failure
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: dict[Any, int] = {}

    def execute_async(self, statement: Any, timeout: float) -> FakeFuture:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return FakeFuture(self, statement)


def jobs(n: int) -> list[Job]:
    return [Job(i, "ks.t", [Record(value={}, topic="t", partition=0, offset=i)]) for i in range(n)]


def run(session: FakeSession, n: int, retries: int = 3, limit: int = 8) -> InFlightWindow:
    async def go() -> InFlightWindow:
        window = InFlightWindow(session, asyncio.get_running_loop(), limit=limit, retries=retries,
                         backoff_s=0.001, backoff_max_s=0.01, timeout_s=1)
        window.submit(jobs(n))
        await window.wait_low_water()
        await window.drain()
        return window

    return asyncio.run(go())


def test_bound_and_all_acknowledged() -> None:
    session = FakeSession(lambda statement, attempt: None)
    window = run(session, 300, limit=8)
    assert window.acked_rows == 300
    assert session.max_in_flight <= 8
    assert sorted(session.attempts) == list(range(300))


def test_timeouts_are_retried() -> None:
    session = FakeSession(lambda s, attempt: OperationTimedOut("slow") if s % 3 == 0 and attempt <= 2 else None)
    window = run(session, 60, retries=3)
    assert window.acked_rows == 60
    assert window.retries_done == 2 * 20
    assert session.attempts[0] == 3 and session.attempts[1] == 1


def test_retries_exhausted_is_retriable_error_naming_the_record() -> None:
    session = FakeSession(lambda s, attempt: OperationTimedOut("slow") if s == 7 else None)
    with pytest.raises(RetriableConnectorError, match=r"after 3 attempts: ks.t, topic 't' partition 0 offset 7"):
        run(session, 20, retries=2)


def test_rejection_is_terminal() -> None:
    session = FakeSession(lambda s, attempt: SyntaxException(0, "bad", None) if s == 4 else None)
    with pytest.raises(ConnectorError, match=r"rejected a write: ks.t, topic 't' partition 0 offset 4") as info:
        run(session, 20)
    assert not isinstance(info.value, RetriableConnectorError)
    assert session.attempts[4] == 1
