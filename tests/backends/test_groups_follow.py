"""A read-only backend follows ``__consumer_offsets`` instead of replaying it per question (issue 17)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.backends.embedded.groups import OFFSETS_TOPIC
from millpond.log.partition import Partition
from millpond.records import TopicPartition


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def writer_at(path: Path) -> EmbeddedBackend:
    backend = EmbeddedBackend(path, fsync=False)
    await backend.open()
    await backend.create_topic(TopicSpec("t", 3), exist_ok=True)
    return backend


def test_reader_sees_what_the_writer_commits_after_it_opened(tmp_path: Path) -> None:
    """Against a dict model: plain commits, deletes, committed and aborted transactional offsets."""

    async def go() -> None:
        rng = random.Random(17)
        writer = await writer_at(tmp_path)
        model: dict[str, dict[TopicPartition, int]] = {}
        reader = EmbeddedBackend(tmp_path, readonly=True)
        await reader.open()
        producer = writer.producer("tx")
        await producer.init()
        for step in range(200):
            group = f"g{rng.randrange(8)}"
            offsets = {TopicPartition("t", rng.randrange(3)): rng.randrange(1000)}
            action = rng.random()
            if action < 0.5:
                await writer.reset_offsets(group, offsets)
                model.setdefault(group, {}).update(offsets)
            elif action < 0.6:
                writer.groups.delete(group)
                model.pop(group, None)
            else:
                await producer.begin()
                await producer.send_offsets(group, offsets)
                if action < 0.85:
                    await producer.commit()
                    model.setdefault(group, {}).update(offsets)
                else:
                    await producer.abort()
            if step % 7 == 0:
                expected = sorted(g for g, o in model.items() if o)
                assert await reader.list_groups() == expected, step
                for g in expected:
                    assert await reader.committed(g) == model[g], (step, g)
        # a reader opened now, reading everything at once, agrees with the one that followed
        fresh = EmbeddedBackend(tmp_path, readonly=True)
        await fresh.open()
        for g in sorted(model):
            assert await fresh.committed(g) == await reader.committed(g) == model[g]
        await producer.close()
        await fresh.close()
        await reader.close()
        await writer.close()

    run(go())


def test_groups_list_reads_the_offsets_topic_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``groups list`` asks (list, then every group) reads each record of the topic once, not once per
    group: the quadratic replay made 1,000 groups take 25 s."""

    async def go() -> None:
        writer = await writer_at(tmp_path)
        for g in range(50):
            await writer.reset_offsets(f"g{g:02d}", {TopicPartition("t", g % 3): g})
        await writer.close()

        read_from: list[int] = []
        real_read = Partition.read

        def counting_read(self: Partition, offset: int, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if self.topic == OFFSETS_TOPIC:
                read_from.append(offset)
            return real_read(self, offset, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Partition, "read", counting_read)
        reader = EmbeddedBackend(tmp_path, readonly=True)
        await reader.open()
        groups = await reader.list_groups()
        assert len(groups) == 50
        for group in groups:
            assert len(await reader.describe_group(group)) == 1
        assert read_from.count(0) == 1, read_from  # the topic's start was read once, at open
        assert len(read_from) <= 2 + 2 * 51  # then one empty read at its end per question
        await reader.close()

    run(go())


def test_a_writer_reads_the_offsets_topic_once_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The transaction coordinator's recovery follows the groups' state from where its load stopped, and
    offsets of a transaction completed by that recovery still count."""

    async def go() -> None:
        writer = await writer_at(tmp_path)
        for g in range(20):
            await writer.reset_offsets(f"g{g:02d}", {TopicPartition("t", 0): g})
        producer = writer.producer("tx")
        await producer.init()
        await producer.begin()
        await producer.send_offsets("late", {TopicPartition("t", 1): 7})
        await producer.commit()
        await writer.close()

        read_from: list[int] = []
        real_read = Partition.read

        def counting_read(self: Partition, offset: int, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if self.topic == OFFSETS_TOPIC:
                read_from.append(offset)
            return real_read(self, offset, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Partition, "read", counting_read)
        again = await writer_at(tmp_path)
        assert read_from.count(0) == 1, read_from
        assert await again.committed("late") == {TopicPartition("t", 1): 7}
        assert await again.committed("g19") == {TopicPartition("t", 0): 19}
        await again.close()

    run(go())
