"""An untouched log always verifies: random appends (records and columns, plain and transactional),
retention cuts, restarts and crashes that tear the tail, checked against a model of what the log holds."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from millpond.audit.verify import verify_topic
from millpond.backends.embedded import EmbeddedBackend
from millpond.log.store import CLEAN_SHUTDOWN, LogStore
from millpond.records import JsonRecords, Record

from .conftest import TOPIC, Keys, open_backend, partition_dir

KEYS = Keys(Path(tempfile.mkdtemp(prefix="audit-keys-")))

op = st.one_of(
    st.tuples(st.just("records"), st.integers(0, 1), st.integers(1, 30)),
    st.tuples(st.just("columns"), st.integers(0, 1), st.integers(1, 30)),
    st.tuples(st.just("transaction"), st.integers(0, 1), st.integers(1, 20)),
    st.tuples(st.just("retain"), st.integers(0, 1), st.integers(1, 3)),
    st.tuples(st.just("restart"), st.just(0), st.just(0)),
    st.tuples(st.just("crash"), st.integers(0, 1), st.integers(1, 400)),
)


def _value(i: int) -> bytes:
    return b'{"event":%d,"who":"u%d","what":"read"}' % (i, i % 5)


def _crash(backend: EmbeddedBackend, partition: int, cut: int) -> None:
    """The process dies: nothing more is flushed, and bytes past the partition's recovery point
    (what was not fsynced) may be lost from the end of its newest segment."""
    store = backend.store
    p = store.partition(TOPIC, partition)
    active = p.active_segment
    keep = 0
    for position, header in active.walk():
        if header.base_offset < p.recovery_point:
            keep = position + header.size
    backend._store = None
    store._unlock()
    (Path(store.directory) / CLEAN_SHUTDOWN).unlink(missing_ok=True)
    path = active.log_path
    os.truncate(path, max(keep, path.stat().st_size - cut))


async def _run(directory: Path, ops: list[tuple[str, int, int]]) -> None:
    backend = await open_backend(directory, KEYS, every_records=25, partitions=2, config={"segment.bytes": 2048})
    n = 0
    txn = 0
    for kind, partition, size in ops:
        if kind == "records":
            producer = backend.producer()
            await producer.send_batch(TOPIC, partition, [Record(_value(n + i), b"k", 1_000 + n + i) for i in range(size)])
            await producer.flush()
        elif kind == "columns":
            producer = backend.producer()
            values: list[bytes | None] = [_value(n + i) for i in range(size)]
            await producer.send_batch(TOPIC, partition, JsonRecords(TOPIC, [None] * size, values,
                                                                    [1_000 + n + i for i in range(size)]))
            await producer.flush()
        elif kind == "transaction":
            txn += 1
            producer = backend.producer(f"t{txn}")
            await producer.begin()
            for i in range(size):
                await producer.send(TOPIC, Record(_value(n + i), None, 1_000 + n + i), partition)
            await producer.commit()
        elif kind == "retain":
            backend.store.partition(TOPIC, partition).delete_oldest_segments(size)
        elif kind == "restart":
            await backend.close()
            backend = await open_backend(directory, KEYS, every_records=25, partitions=2)
        elif kind == "crash":
            _crash(backend, partition, size)
            backend = await open_backend(directory, KEYS, every_records=25, partitions=2)
        n += size
    await backend.close()


def _records_in_log(directory: Path) -> list[int]:
    store = LogStore(directory, writable=False)
    try:
        counts = []
        for p in store.topic(TOPIC).partitions:
            p.refresh()
            total, offset = 0, p.log_start_offset
            while offset < p.log_end_offset:
                result = p.read(offset, 1 << 20)  # read_uncommitted: aborted data is in the chain too
                if not result.batches:
                    break
                total += sum(b.header.last_offset_delta + 1 for b in result.batches)
                offset = result.next_offset
            counts.append(total)
        return counts
    finally:
        store.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, min_size=1, max_size=25))
def test_an_untouched_log_always_verifies(ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "log"
        asyncio.run(_run(directory, ops))
        store = LogStore(directory, writable=False)
        try:
            report = verify_topic(store, TOPIC, public_key=KEYS.private.public_key())
        finally:
            store.close()
        assert report.ok, report.summary()
        # the model: every record in the log was checked, none twice
        assert [p.records for p in report.partitions] == _records_in_log(directory)
        for p in report.partitions:
            assert p.proven_records + p.unsigned_records + p.before_chain + p.unterminated == p.records \
                or p.first_seq is None


def test_a_torn_tail_after_a_crash_restarts_the_chain_from_the_last_whole_block(tmp_path: Path) -> None:
    async def go() -> None:
        backend = await open_backend(tmp_path / "log", KEYS, every_records=1000, config={"segment.bytes": 1 << 20})
        producer = backend.producer()
        for block in range(3):
            await producer.send_batch(TOPIC, 0, [Record(_value(block * 10 + i), None, 5) for i in range(10)])
            await producer.flush()
        backend.store.partition(TOPIC, 0).flush()
        await producer.send_batch(TOPIC, 0, [Record(_value(99), None, 5)])
        await producer.flush()  # this block is torn by the crash
        _crash(backend, 0, 7)
        backend = await open_backend(tmp_path / "log", KEYS, every_records=1000)
        assert backend.store.partition(TOPIC, 0).log_end_offset == 30
        state = backend.chains.state(backend.store.partition(TOPIC, 0))
        assert state.seq == 30 and not state.pending
        producer = backend.producer()
        await producer.send_batch(TOPIC, 0, [Record(_value(100), None, 5)])
        await producer.flush()
        await backend.close()

    asyncio.run(go())
    store = LogStore(tmp_path / "log", writable=False)
    try:
        report = verify_topic(store, TOPIC, public_key=KEYS.private.public_key())
    finally:
        store.close()
    assert report.ok, report.summary()
    assert report.counts()["records"] == 31 and report.counts()["proven"] == 31
    assert partition_dir(tmp_path / "log").exists()
