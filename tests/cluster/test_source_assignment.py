"""Source task assignment through Kafka's group protocol: each task on one worker, a leaver's
tasks go to the others, and a task is stopped before the group may give it to someone else."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from millpond.backends.kafka import KafkaBackend
from millpond.runtime.assignment import SourceAssignment, tasks_topic

pytestmark = pytest.mark.kafka

TASKS = ["src#0", "src#1", "src#2"]


class Runner:
    """Stands in for a worker's source supervisors: which tasks run, and a log of starts and stops."""

    def __init__(self, name: str, journal: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.running: set[int] = set()
        self.journal = journal

    def start(self, i: int) -> None:
        assert i not in self.running
        self.running.add(i)
        self.journal.append((self.name, "start", i))

    async def stop(self, i: int) -> None:
        await asyncio.sleep(0.2)  # a transaction finishing
        self.running.discard(i)
        self.journal.append((self.name, "stop", i))


def never_twice(journal: list[tuple[str, str, int]]) -> None:
    """Replay the journal: no task is ever started while it runs somewhere."""
    where: dict[int, str] = {}
    for who, what, i in journal:
        if what == "start":
            assert i not in where, f"task {i} started on {who} while running on {where[i]}"
            where[i] = who
        else:
            assert where.pop(i) == who


async def until(condition: object, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.05)


def test_tasks_are_spread_and_a_leavers_tasks_move_after_they_stopped(kafka_bootstrap: str) -> None:
    async def go() -> None:
        backend = KafkaBackend(kafka_bootstrap, config={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})
        await backend.open()
        pipeline = f"asg{uuid.uuid4().hex[:8]}"
        journal: list[tuple[str, str, int]] = []
        a, b = Runner("a", journal), Runner("b", journal)
        sa = SourceAssignment(backend, pipeline, TASKS, "a", a.start, a.stop)
        sb = SourceAssignment(backend, pipeline, TASKS, "b", b.start, b.stop)
        try:
            await sa.open()
            await until(lambda: a.running == {0, 1, 2}, "a alone runs every task")
            assert await backend.partitions_for(tasks_topic(pipeline)) == len(TASKS)
            await sb.open()
            await until(lambda: a.running and b.running and len(a.running | b.running) == 3,
                        "a and b share the tasks")
            assert not a.running & b.running
            await sb.close()  # leaves the group: a takes b's tasks without waiting for a session timeout
            await until(lambda: a.running == {0, 1, 2}, "a runs every task again", limit=10)
            never_twice(journal)
        finally:
            await sa.close()
            await sb.close()
            await backend.close()

    asyncio.run(go())
