"""Dead-letter replay on the embedded log: where each record goes, exactly once, all or nothing.

The dead letters are made by the real error policy (``ErrorPolicyHandler``), as a sink task and a
source task make them, so the replay is checked against the headers the runtime writes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from millpond.backends.base import IsolationLevel, LogBackend, TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.backends.embedded.backend import EmbeddedProducer
from millpond.config import ErrorPolicy
from millpond.errors import MillpondError, RecordError
from millpond.records import Record, TopicPartition
from millpond.runtime.dlq import plan_replay, replay, replay_group

DLQ = "lines-dlq"


def sink_letter(connector: str, value: bytes, offset: int, partition: int = 0) -> Record:
    from millpond.runtime.policy import ErrorPolicyHandler

    policy = ErrorPolicyHandler(connector, ErrorPolicy(policy="dead_letter", topic=DLQ))
    read = Record(value, b"k", 1_000 + offset, [("trace", b"abc")], "lines", partition, offset)
    letter = policy.handle(RecordError("the store said no"), read, "write")
    assert letter is not None
    return letter


def source_letter(connector: str, value: bytes, position: int) -> Record:
    from millpond.runtime.policy import ErrorPolicyHandler

    policy = ErrorPolicyHandler(connector, ErrorPolicy(policy="dead_letter", topic=DLQ))
    letter = policy.handle(RecordError("not JSON"), Record(value, None, 5_000), "convert", topic="lines",
                           source={"path": "in/a.log", "position": position})
    assert letter is not None
    return letter


async def dead_letter(backend: LogBackend, *letters: Record) -> None:
    producer = backend.producer(transactional_id="test-policy")
    await producer.begin()
    for letter in letters:
        await producer.send(DLQ, letter, 0)
    await producer.commit()
    await producer.close()


async def read_all(backend: LogBackend, topic: str) -> list[Record]:
    consumer = backend.consumer([topic], group=None, isolation=IsolationLevel.read_committed)
    out: list[Record] = []
    try:
        empty = 0
        while empty < 3:
            records = await consumer.poll(timeout=0.01)
            out += records
            empty = 0 if records else empty + 1
    finally:
        await consumer.close()
    return out


def scenario(tmp_path: Path, body: Any) -> None:
    async def main() -> None:
        backend = EmbeddedBackend(tmp_path / "log", fsync=False)
        await backend.open()
        try:
            await backend.create_topic(TopicSpec("lines", 2))
            await backend.create_topic(TopicSpec(DLQ, 1))
            await body(backend)
        finally:
            await backend.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_replay_sends_each_letter_home_once(tmp_path: Path) -> None:
    async def body(backend: LogBackend) -> None:
        await dead_letter(backend, sink_letter("out", b"row 41", 41, partition=1), source_letter("tail", b"{bad", 350))
        plan = await plan_replay(backend, DLQ)
        assert [(d.rejected_by, d.connector, d.stage, d.topic, d.partition, d.origin) for d in plan.letters] == [
            ("sink", "out", "write", "lines", 1, "lines-1@41"),
            ("source", "tail", "convert", "lines", None, "path=in/a.log position=350"),
        ]
        assert await read_all(backend, "lines") == []  # a plan changes nothing
        assert await backend.committed(replay_group(DLQ)) == {}

        assert await replay(backend, plan) == 2
        home = await read_all(backend, "lines")
        by_value = {r.value: r for r in home}
        assert set(by_value) == {b"row 41", b"{bad"}
        sunk = by_value[b"row 41"]
        # back in the partition it was read from, after what the sink had read, as it was
        assert (sunk.partition, sunk.key, sunk.timestamp, sunk.headers) == (1, b"k", 1_041, [("trace", b"abc")])
        assert by_value[b"{bad"].timestamp == 5_000 and by_value[b"{bad"].headers == []
        dlq_end = (await backend.describe_topic(DLQ))[0].last_stable_offset
        assert await backend.committed(replay_group(DLQ)) == {TopicPartition(DLQ, 0): dlq_end}

        # a second replay moves nothing
        again = await plan_replay(backend, DLQ)
        assert again.letters == [] and again.commit_to == {}
        assert await replay(backend, again) == 0
        assert len(await read_all(backend, "lines")) == 2

        # a new dead letter: only it goes
        await dead_letter(backend, sink_letter("out", b"row 77", 77))
        third = await plan_replay(backend, DLQ)
        assert [d.record.value for d in third.letters] == [b"row 77"]
        await replay(backend, third)
        assert sorted(r.value for r in await read_all(backend, "lines")) == [b"row 41", b"row 77", b"{bad"]

    scenario(tmp_path, body)


def test_records_and_the_replay_offsets_are_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(backend: LogBackend) -> None:
        await dead_letter(backend, sink_letter("out", b"row 1", 1), sink_letter("out", b"row 2", 2))
        plan = await plan_replay(backend, DLQ)
        real_commit = EmbeddedProducer.commit

        async def fail(self: EmbeddedProducer) -> None:
            raise MillpondError("the commit failed")

        # a replay whose commit fails leaves neither the records nor the group's offsets
        monkeypatch.setattr(EmbeddedProducer, "commit", fail)
        with pytest.raises(MillpondError, match="the commit failed"):
            await replay(backend, plan)
        assert await read_all(backend, "lines") == []
        assert await backend.committed(replay_group(DLQ)) == {}
        ends = {p.partition: p.log_end_offset for p in await backend.describe_topic("lines")}
        assert ends == {0: 0, 1: 0}

        # and one that commits shows both, to a reader opened beside the writer
        monkeypatch.setattr(EmbeddedProducer, "commit", real_commit)
        await replay(backend, plan)
        reader = EmbeddedBackend(backend.directory, readonly=True)  # type: ignore[attr-defined]
        await reader.open()
        try:
            assert sorted(r.value for r in await read_all(reader, "lines")) == [b"row 1", b"row 2"]
            assert await reader.committed(replay_group(DLQ)) == {TopicPartition(DLQ, 0): 3}
        finally:
            await reader.close()

    scenario(tmp_path, body)


def test_connector_filter_stops_at_another_connectors_letter(tmp_path: Path) -> None:
    async def body(backend: LogBackend) -> None:
        await dead_letter(backend, sink_letter("a", b"a1", 1), sink_letter("b", b"b1", 2), sink_letter("a", b"a2", 3))
        only_a = await plan_replay(backend, DLQ, "a")
        assert [d.record.value for d in only_a.letters] == [b"a1"]
        assert only_a.stopped == {TopicPartition(DLQ, 0): (1, "b")}
        await replay(backend, only_a)
        assert await backend.committed(replay_group(DLQ)) == {TopicPartition(DLQ, 0): 1}
        # b's letter is next: an 'a' replay replays nothing more, a 'b' one takes it, then 'a' again
        assert (await plan_replay(backend, DLQ, "a")).letters == []
        await replay(backend, await plan_replay(backend, DLQ, "b"))
        await replay(backend, await plan_replay(backend, DLQ, "a"))
        assert sorted(r.value for r in await read_all(backend, "lines")) == [b"a1", b"a2", b"b1"]
        assert (await plan_replay(backend, DLQ)).letters == []

    scenario(tmp_path, body)


def test_a_letter_without_its_headers_or_its_topic_is_refused(tmp_path: Path) -> None:
    async def body(backend: LogBackend) -> None:
        await dead_letter(backend, Record(b"who knows", None, 1))
        with pytest.raises(MillpondError, match=r"dead letter at lines-dlq-0 offset 0 has no millpond.error.connector"):
            await plan_replay(backend, DLQ)

    scenario(tmp_path, body)

    async def gone(backend: LogBackend) -> None:
        await backend.create_topic(TopicSpec("elsewhere", 1))
        letter = sink_letter("out", b"x", 1)
        letter.headers = [(k, b"elsewhere" if k == "millpond.error.topic" else v) for k, v in letter.headers]
        await dead_letter(backend, letter)
        await backend.delete_topic("elsewhere")
        with pytest.raises(MillpondError, match="go back to topic\\(s\\) elsewhere, which the log no longer has"):
            await plan_replay(backend, DLQ)

    scenario(tmp_path / "second", gone)
