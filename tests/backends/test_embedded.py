"""The embedded backend: producers, consumers, groups and transactions."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from millpond.backends.base import IsolationLevel, TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.errors import ConfigError, LogLockedError, TransactionError
from millpond.log.batch import Row
from millpond.records import JsonRecords, Record, TopicPartition

TP0 = TopicPartition("t", 0)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def opened(path: Path, partitions: int = 1) -> EmbeddedBackend:
    backend = EmbeddedBackend(path, fsync=False)
    await backend.open()
    await backend.create_topic(TopicSpec("t", partitions), exist_ok=True)
    return backend


async def values(backend: EmbeddedBackend, isolation: IsolationLevel) -> list[bytes]:
    consumer = backend.consumer(["t"], None, isolation)
    out: list[bytes] = []
    while batch := await consumer.poll(timeout=0.05):
        out.extend(r.value for r in batch)
    return out


def test_keyed_records_land_where_kafka_puts_them(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path, 4)
        producer = backend.producer()
        for key in (b"foobar", b"21", b"abc"):
            await producer.send("t", Record(b"v", key))
        await producer.flush()
        consumer = backend.consumer(["t"])
        got = {r.key: r.partition for r in await consumer.poll(timeout=0.1)}
        # toPositive(murmur2) % 4 for Kafka's known hashes of these keys
        assert got == {b"foobar": (-790332482 & 0x7FFFFFFF) % 4, b"21": (-973932308 & 0x7FFFFFFF) % 4,
                       b"abc": 479470107 % 4}
        await backend.close()

    run(go())


def test_records_and_columns_keep_their_order_in_a_partition(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path)
        producer = backend.producer(transactional_id="mixed")
        await producer.begin()
        await producer.send_batch("t", 0, JsonRecords("t", [b"1", b"2"], [b"a", b"b"], [5, 5]))
        await producer.send_batch("t", 0, JsonRecords("t", [b"3"], [None], [6]))
        await producer.send("t", Record(b"d", b"4", 7), partition=0)
        await producer.send_batch("t", 0, JsonRecords("t", [b"5"], [b"e"], [8]))
        await producer.commit()
        consumer = backend.consumer(["t"])
        got = [(r.offset, r.key, r.value, r.timestamp) for r in await consumer.poll(timeout=0.1)]
        assert got == [(0, b"1", b"a", 5), (1, b"2", b"b", 5), (2, b"3", None, 6), (3, b"4", b"d", 7),
                       (4, b"5", b"e", 8)]
        await backend.close()

    run(go())


def test_abort_is_invisible_to_read_committed_only(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path)
        producer = backend.producer("tx")
        await producer.begin()
        await producer.send("t", Record(b"committed"))
        await producer.commit()
        # an abort after the data reached the log: the coordinator writes an ABORT marker
        state = backend._txns.init_producer("tx2")  # type: ignore[union-attr]
        backend.partition(TP0).append([Row(None, b"aborted", None, [])], producer_id=state.producer_id,
                                      producer_epoch=state.epoch, transactional=True)
        assert backend.partition(TP0).last_stable_offset < backend.partition(TP0).high_watermark
        assert await values(backend, IsolationLevel.read_committed) == [b"committed"]  # stops at the LSO
        state.state, state.partitions = "ongoing", [TP0]
        backend._txns._settle(state)  # type: ignore[union-attr]
        await producer.begin()
        await producer.send("t", Record(b"after"))
        await producer.commit()
        assert await values(backend, IsolationLevel.read_committed) == [b"committed", b"after"]
        assert await values(backend, IsolationLevel.read_uncommitted) == [b"committed", b"aborted", b"after"]
        await backend.close()

    run(go())


def test_records_and_offsets_commit_together(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path)
        producer = backend.producer("tx")
        await producer.begin()
        await producer.send("t", Record(b"a"))
        await producer.send_offsets("g", {TopicPartition("src", 0): 42})
        assert await backend.committed("g") == {}
        await producer.abort()
        assert await backend.committed("g") == {}
        assert await values(backend, IsolationLevel.read_committed) == []
        await producer.begin()
        await producer.send("t", Record(b"b"))
        await producer.send_offsets("g", {TopicPartition("src", 0): 43})
        await producer.commit()
        assert await backend.committed("g") == {TopicPartition("src", 0): 43}
        await backend.close()
        backend = await opened(tmp_path)
        assert await backend.committed("g") == {TopicPartition("src", 0): 43}
        assert await values(backend, IsolationLevel.read_committed) == [b"b"]
        await backend.close()

    run(go())


def test_a_newer_producer_fences_the_older(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path)
        old, new = backend.producer("tx"), backend.producer("tx")
        await old.begin()
        await new.begin()
        await old.send("t", Record(b"zombie"))
        with pytest.raises(TransactionError, match="fenced"):
            await old.commit()
        await new.send("t", Record(b"live"))
        await new.commit()
        await old.begin()  # a fenced producer stays fenced: begin() does not register it again
        await old.send("t", Record(b"zombie"))
        with pytest.raises(TransactionError, match="fenced"):
            await old.commit()
        assert await values(backend, IsolationLevel.read_committed) == [b"live"]
        await backend.close()

    run(go())


CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from millpond.backends.embedded import EmbeddedBackend
    from millpond.backends.base import TopicSpec
    from millpond.records import JsonRecords, Record, TopicPartition
    from millpond.log.batch import Row

    async def main():
        backend = EmbeddedBackend(sys.argv[1])
        await backend.open()
        await backend.create_topic(TopicSpec("t", 2), exist_ok=True)
        coordinator = backend._txns
        state = coordinator.init_producer("tx")
        for p in (0, 1):
            backend.partition(TopicPartition("t", p)).append(
                [Row(None, b"in-flight", None, [])], producer_id=state.producer_id,
                producer_epoch=state.epoch, transactional=True)
        if sys.argv[2] == "decided":
            # the decision is durable, the markers are not written yet
            state.state = "prepare_commit"
            state.partitions = [TopicPartition("t", 0), TopicPartition("t", 1)]
            coordinator._write_state(state, durable=True)
        os._exit(0)

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("moment,expected", [("open", []), ("decided", [b"in-flight", b"in-flight"])])
def test_crash_recovery_of_transactions(tmp_path: Path, moment: str, expected: list[bytes]) -> None:
    subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path), moment], check=True)

    async def go() -> None:
        backend = EmbeddedBackend(tmp_path)
        await backend.open()
        for p in (0, 1):
            partition = backend.partition(TopicPartition("t", p))
            assert partition.last_stable_offset == partition.high_watermark  # nothing left open
        assert await values(backend, IsolationLevel.read_committed) == expected
        assert len(await values(backend, IsolationLevel.read_uncommitted)) == 2
        await backend.close()

    run(go())


def test_groups_lag_and_reset(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path, 2)
        producer = backend.producer()
        for i in range(10):
            await producer.send("t", Record(b"v%d" % i), partition=i % 2)
        await producer.flush()
        consumer = backend.consumer(["t"], "g")
        records = await consumer.poll(timeout=0.1)
        assert len(records) == 10
        await consumer.commit({TopicPartition("t", 0): 3, TopicPartition("t", 1): 5})
        assert await backend.list_groups() == ["g"]
        lag = {row.topic_partition.partition: row.lag for row in await backend.describe_group("g")}
        assert lag == {0: 2, 1: 0}
        await backend.reset_offsets("g", {TopicPartition("t", 0): 0})
        again = backend.consumer(["t"], "g")
        assert [r.offset for r in await again.poll(timeout=0.1) if r.partition == 0] == [0, 1, 2, 3, 4]
        await backend.close()

    run(go())


def test_read_only_backend_refuses_writes_with_a_reason(tmp_path: Path) -> None:
    async def go() -> None:
        writer = await opened(tmp_path)
        reader = EmbeddedBackend(tmp_path, readonly=True)
        await reader.open()
        assert await reader.list_topics() == ["__consumer_offsets", "__transaction_state", "t"]
        with pytest.raises(LogLockedError, match="read-only"):
            await reader.reset_offsets("g", {TP0: 0})
        with pytest.raises(LogLockedError):
            await EmbeddedBackend(tmp_path).open()
        await reader.close()
        await writer.close()

    run(go())


def test_consumer_wakes_on_append(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path)
        consumer = backend.consumer(["t"])
        producer = backend.producer()

        async def later() -> None:
            await asyncio.sleep(0.05)
            await producer.send("t", Record(b"x"))
            await producer.flush()

        task = asyncio.create_task(later())
        loop = asyncio.get_running_loop()
        started = loop.time()
        records = await consumer.poll(timeout=5)
        assert [r.value for r in records] == [b"x"] and loop.time() - started < 4
        await task
        await backend.close()

    run(go())


def test_declared_settings_are_applied_to_an_existing_topic(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await opened(tmp_path, 2)
        changed = await backend.alter_topic(TopicSpec("t", 2, {"retention.ms": 1000, "cleanup.policy": "compact"}))
        assert changed["retention.ms"][1] == 1000 and changed["cleanup.policy"] == ("delete", "compact")
        assert await backend.alter_topic(TopicSpec("t", 2, {"retention.ms": 1000, "cleanup.policy": "compact"})) == {}
        assert backend.partition(TopicPartition("t", 1)).settings.retention_ms == 1000
        with pytest.raises(ConfigError, match="has 2 partitions"):
            await backend.alter_topic(TopicSpec("t", 3))
        await backend.close()
        backend = await opened(tmp_path, 2)  # the change is stored
        assert (await backend.topic_settings("t"))["cleanup.policy"] == "compact"
        await backend.close()

    run(go())
