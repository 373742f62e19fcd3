"""Consumers with a membership on a real broker: Kafka's group protocol splits the partitions
among the members, moves them when one leaves, and a member never commits what it does not own."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from millpond.backends.base import Membership, TopicSpec
from millpond.backends.kafka import KafkaBackend, KafkaConsumer
from millpond.errors import GroupRebalancedError
from millpond.records import Record, TopicPartition

pytestmark = pytest.mark.kafka

PARTITIONS = 6


class Listener:
    """Records what the group told one member, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, set[TopicPartition]]] = []

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.events.append(("revoked", set(revoked)))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.events.append(("assigned", set(assigned)))


async def until(condition: object, members: list[KafkaConsumer], what: str, limit: float = 30.0) -> None:
    """Poll every member (their callbacks run inside poll) until ``condition()`` holds."""
    deadline = time.monotonic() + limit
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        for m in members:
            await m.poll(100, 0.1)


def test_members_split_the_partitions_and_take_over_from_a_leaver(kafka_bootstrap: str) -> None:
    async def go() -> None:
        backend = KafkaBackend(kafka_bootstrap, config={"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000})
        await backend.open()
        topic, group = f"members-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
        await backend.create_topic(TopicSpec(topic, PARTITIONS))
        producer = backend.producer()
        for p in range(PARTITIONS):
            await producer.send_batch(topic, p, [Record(f"{p}-{i}".encode(), None, 0) for i in range(5)])
        await producer.flush()
        await producer.close()
        every = {TopicPartition(topic, p) for p in range(PARTITIONS)}
        la, lb = Listener(), Listener()
        a = backend.consumer([topic], group=group, membership=Membership(la, client_id="millpond-a"))
        b = backend.consumer([topic], group=group, membership=Membership(lb, client_id="millpond-b"))
        try:
            await until(lambda: a.assignment() and b.assignment() and len(a.assignment() | b.assignment()) == PARTITIONS,
                        [a, b], "both members own a share")
            assert not a.assignment() & b.assignment(), "a partition was given to two members"
            assert a.assignment() | b.assignment() == every
            # what a listener heard matches what the consumer reports
            assert la.events[-1] == ("assigned", a.assignment())

            # a member commits what it owns, and is refused what it does not
            mine = min(a.assignment())
            theirs = min(b.assignment())
            await a.commit({mine: 3})
            with pytest.raises(GroupRebalancedError, match=f"{theirs.topic}-{theirs.partition}"):
                await a.commit({theirs: 4})
            assert await backend.committed(group) == {mine: 3}

            # b leaves: a is given everything, after being asked to give up its share first
            await b.close()
            await until(lambda: a.assignment() == every, [a], "the remaining member owns every partition")
            assert [e[0] for e in la.events[-2:]] == ["revoked", "assigned"]
        finally:
            await a.close()
            await b.close()
            await backend.close()

    asyncio.run(go())
