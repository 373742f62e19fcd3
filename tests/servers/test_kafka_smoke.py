"""The Kafka fixture serves a real broker: records round-trip and transactions hold."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

pytestmark = pytest.mark.kafka


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout=120))


async def create_topic(bootstrap: str, partitions: int = 1) -> str:
    topic = f"smoke-{uuid.uuid4().hex[:12]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def read_until(consumer: AIOKafkaConsumer, last: bytes) -> list[bytes]:
    """Values in offset order up to and including ``last``."""
    seen: list[bytes] = []
    while last not in seen:
        batches = await consumer.getmany(timeout_ms=1000)
        for records in batches.values():
            seen.extend(r.value for r in records)
    return seen


def test_round_trip_with_a_consumer_group(kafka_bootstrap: str) -> None:
    async def scenario() -> None:
        topic = await create_topic(kafka_bootstrap, partitions=2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            sent = [await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k", partition=0)
                    for i in range(3)]
        finally:
            await producer.stop()
        assert [m.offset for m in sent] == [0, 1, 2]

        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{topic}",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        try:
            assert await read_until(consumer, b"v2") == [b"v0", b"v1", b"v2"]
            await consumer.commit()
            partition = next(tp for tp in consumer.assignment() if tp.partition == 0)
            assert await consumer.committed(partition) == 3
        finally:
            await consumer.stop()

    run(scenario())


def test_read_committed_consumer_skips_an_aborted_transaction(kafka_bootstrap: str) -> None:
    async def scenario() -> None:
        topic = await create_topic(kafka_bootstrap)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                    transactional_id=f"tx-{topic}", enable_idempotence=True)
        await producer.start()
        try:
            for value, commit in ((b"kept", True), (b"dropped", False), (b"after", True)):
                await producer.begin_transaction()
                await producer.send_and_wait(topic, value)
                if commit:
                    await producer.commit_transaction()
                else:
                    await producer.abort_transaction()
        finally:
            await producer.stop()

        seen: dict[str, list[bytes]] = {}
        for isolation in ("read_committed", "read_uncommitted"):
            consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap,
                                        isolation_level=isolation, auto_offset_reset="earliest")
            await consumer.start()
            try:
                seen[isolation] = await read_until(consumer, b"after")
            finally:
                await consumer.stop()
        assert seen["read_committed"] == [b"kept", b"after"]
        # The aborted record was written to the log: the broker, not the client, hid it.
        assert seen["read_uncommitted"] == [b"kept", b"dropped", b"after"]

    run(scenario())
