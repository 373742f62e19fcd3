"""The chain travels with the records: a copy of the topic (new offsets, new batches) verifies through
the backend's consumer, and an edit or a cut tail in the copy is found."""

from __future__ import annotations

import asyncio
from pathlib import Path

from millpond.audit.checkpoints import CHECKPOINT_TOPIC
from millpond.audit.verify import EDITED, TAIL_CUT, Report, verify_through_backend
from millpond.backends.base import IsolationLevel, LogBackend, TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.records import Record

from .conftest import TOPIC, Keys, append, open_backend


async def copy_topic(source: LogBackend, target: LogBackend, topic: str, *, edit_offset: int | None = None,
                     drop_last: int = 0, flush_every: int = 4) -> None:
    """Every record (read_uncommitted, headers and all) into ``target``, re-batched: ``flush_every``
    records per flush, so the framing differs from the source's."""
    infos = await source.describe_topic(topic)
    await target.create_topic(TopicSpec(topic, len(infos)), exist_ok=True)
    consumer = source.consumer([topic], None, IsolationLevel.read_uncommitted, "earliest")
    producer = target.producer()
    by_partition: dict[int, list[Record]] = {i.partition: [] for i in infos}
    ends = {i.partition: i.log_end_offset for i in infos}
    while any(by_partition[p][-1].offset + 1 < ends[p] if by_partition[p] else ends[p] > 0 for p in ends):
        for r in await consumer.poll(10_000, 0.5):
            assert r.partition is not None
            by_partition[r.partition].append(r)
    await consumer.close()
    for partition, records in by_partition.items():
        if drop_last:
            records = records[:-drop_last]
        for i, r in enumerate(records):
            value = r.value
            if r.offset == edit_offset and partition == 0:
                value = value.replace(b"file.read", b"file.RAED")
            await producer.send(topic, Record(value, r.key, r.timestamp, list(r.headers)), partition)
            if i % flush_every == flush_every - 1:
                await producer.flush()
        await producer.flush()


def run(tmp_path: Path, keys: Keys, **copy: int) -> Report:
    async def go() -> Report:
        source = await open_backend(tmp_path / "log", keys, every_records=10, partitions=2)
        await append(source, 0, [6, 9, 5], partition=0)
        await append(source, 100, [7, 3], partition=1)
        await source.close()
        source = EmbeddedBackend(tmp_path / "log", readonly=True)
        await source.open()
        target = EmbeddedBackend(tmp_path / "copy")
        await target.open()
        await copy_topic(source, target, TOPIC, **copy)
        await copy_topic(source, target, CHECKPOINT_TOPIC)
        await source.close()
        try:
            return await verify_through_backend(target, TOPIC, public_key=keys.private.public_key())
        finally:
            await target.close()

    return asyncio.run(go())


def test_a_copy_with_other_batches_verifies(tmp_path: Path, keys: Keys) -> None:
    report = run(tmp_path, keys)
    assert report.ok, report.summary()
    assert report.counts()["records"] == 30 and report.counts()["proven"] == 30


def test_an_edit_in_the_copy_is_found(tmp_path: Path, keys: Keys) -> None:
    report = run(tmp_path, keys, edit_offset=8)
    assert not report.ok
    broken = report.partitions[0].broken
    assert broken is not None and broken.kind == EDITED and broken.offset == 6  # the block of offsets 6..14
    assert report.partitions[1].broken is None


def test_a_tail_cut_in_the_copy_is_found(tmp_path: Path, keys: Keys) -> None:
    report = run(tmp_path, keys, drop_last=3)
    broken = report.partitions[0].broken
    assert broken is not None and broken.kind == TAIL_CUT, report.summary()
