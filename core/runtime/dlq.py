"""Dead letters go home: ``millpond dlq replay`` re-feeds a dead-letter topic to the stage that rejected it.

A dead letter carries where it came from (``policy.py``): the connector, the
stage, and either the topic, partition and offset it was read at (a **sink**
rejected it) or its position in the source (``millpond.error.source.*``
headers: a **source** rejected it before it reached the log). Once the cause
is fixed, a replay sends each one back:

- a record a sink rejected is appended again to the topic and partition it was
  read from. Its new offset is after the sink's position, so the sink reads it
  again; so does every other reader of that topic (it is a new record there);
- a record a source rejected is appended to the source's target topic as it
  was dead-lettered (key, value, timestamp, headers; partition by key). The
  source's converter and transforms are not run again.

The ``millpond.error.*`` headers are removed; the record's own headers stay.

Exactly once: the records and the DLQ offsets of the consumer group
``<dlq>.replay`` are committed in one log transaction (one per
``TRANSACTION_RECORDS`` records), under one transactional id per DLQ. A second
replay starts at that group's committed offsets, so nothing is replayed twice,
and a replay that stops half-way leaves whole transactions behind.

``--connector NAME`` replays only NAME's dead letters. The group's offset can
only move over records it has replayed, so such a replay stops (per DLQ
partition) at the first dead letter of another connector; the plan says where.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import IsolationLevel, LogBackend
from ..errors import MillpondError
from ..progress import Progress
from ..records import Record, TopicPartition
from .policy import H_CONNECTOR, H_ERROR, H_OFFSET, H_PARTITION, H_SOURCE, H_STAGE, H_TOPIC

log = logging.getLogger("millpond.runtime.dlq")

#: records per replay transaction
TRANSACTION_RECORDS = 10_000


def replay_group(dlq_topic: str) -> str:
    """The consumer group whose committed offsets say how far ``dlq_topic`` has been replayed."""
    return f"{dlq_topic}.replay"


def transactional_id(dlq_topic: str) -> str:
    return f"millpond-dlq-replay-{dlq_topic}"


@dataclass(slots=True)
class DeadLetter:
    """One dead letter and where it goes back to."""

    dlq: TopicPartition
    dlq_offset: int
    connector: str
    stage: str
    #: "sink" or "source": which side rejected it
    rejected_by: str
    #: where it came from, as the dead letter says (``lines-0@41``, ``path=a.log position=350``)
    origin: str
    topic: str
    #: the target partition; None: the topic's partitioner (by key) decides
    partition: int | None
    record: Record

    def shape(self) -> dict[str, Any]:
        return {"dlq_partition": self.dlq.partition, "dlq_offset": self.dlq_offset, "connector": self.connector,
                "stage": self.stage, "rejected_by": self.rejected_by, "origin": self.origin,
                "topic": self.topic, "partition": self.partition}


@dataclass(slots=True)
class ReplayPlan:
    dlq_topic: str
    connector: str | None
    letters: list[DeadLetter] = field(default_factory=list)
    #: per DLQ partition: the offset the replay group commits once the letters are replayed
    commit_to: dict[TopicPartition, int] = field(default_factory=dict)
    #: per DLQ partition where a ``--connector`` replay stopped early: (offset, the other connector)
    stopped: dict[TopicPartition, tuple[int, str]] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return replay_group(self.dlq_topic)

    def shape(self, *, executed: bool) -> dict[str, Any]:
        return {
            "dlq": self.dlq_topic, "group": self.group, "connector": self.connector, "executed": executed,
            "records": [d.shape() for d in self.letters],
            "commit_to": [{"partition": tp.partition, "offset": o} for tp, o in sorted(self.commit_to.items())],
            "stopped": [{"partition": tp.partition, "offset": o, "connector": other}
                        for tp, (o, other) in sorted(self.stopped.items())],
        }


def _text(headers: dict[str, bytes | None], name: str) -> str:
    value = headers.get(name)
    return "" if value is None else value.decode(errors="replace")


def _letter(record: Record) -> DeadLetter:
    """What a dead letter's headers say; MillpondError naming its offset when they say too little."""
    where = f"dead letter at {record.topic}-{record.partition} offset {record.offset}"
    headers = dict(record.headers)
    connector, stage, topic = _text(headers, H_CONNECTOR), _text(headers, H_STAGE), _text(headers, H_TOPIC)
    if not connector or not topic:
        raise MillpondError(f"{where} has no {H_CONNECTOR} / {H_TOPIC} header: it was not written by a "
                            f"millpond error policy, so where it goes back to is unknown")
    source = {k[len(H_SOURCE):]: _text(headers, k) for k in headers if k.startswith(H_SOURCE)}
    kept = [(k, v) for k, v in record.headers if not k.startswith(H_ERROR)]
    again = Record(record.value, record.key, record.timestamp, kept)
    dlq = record.topic_partition
    offset = record.offset or 0
    if source:
        origin = " ".join(f"{k}={v}" for k, v in source.items())
        return DeadLetter(dlq, offset, connector, stage, "source", origin, topic, None, again)
    partition, read_at = _text(headers, H_PARTITION), _text(headers, H_OFFSET)
    if not partition.isdigit():
        raise MillpondError(f"{where}: header {H_PARTITION} is {partition!r}, not a partition number")
    return DeadLetter(dlq, offset, connector, stage, "sink", f"{topic}-{partition}@{read_at}", topic,
                      int(partition), again)


async def plan_replay(backend: LogBackend, dlq_topic: str, connector: str | None = None,
                      progress: Progress | None = None) -> ReplayPlan:
    """The dead letters of ``dlq_topic`` not replayed yet (of ``connector`` only, when given),
    up to the topic's last stable offsets now; ``progress`` counts the offsets read of those to read."""
    plan = ReplayPlan(dlq_topic, connector)
    infos = await backend.describe_topic(dlq_topic)
    committed = await backend.committed(plan.group)
    consumer = backend.consumer([dlq_topic], group=None, isolation=IsolationLevel.read_committed)
    try:
        ends: dict[TopicPartition, int] = {}
        for info in infos:
            tp = TopicPartition(dlq_topic, info.partition)
            start = min(max(committed.get(tp, info.log_start_offset), info.log_start_offset), info.last_stable_offset)
            ends[tp] = info.last_stable_offset
            await consumer.seek(tp, start)
        open_ = {tp for tp, end in ends.items() if await consumer.position(tp) < end}
        starts = {tp: await consumer.position(tp) for tp in ends}
        if progress is not None:
            progress.total = sum(max(0, ends[tp] - starts[tp]) for tp in ends)
        stalled = 0
        while open_ and stalled < 25:
            records = await consumer.poll(max_records=10_000, timeout=0.2)
            stalled = 0 if records else stalled + 1
            for record in records:
                tp = record.topic_partition
                offset = record.offset or 0
                if tp not in open_ or offset >= ends[tp]:
                    continue
                letter = _letter(record)
                if connector is not None and letter.connector != connector:
                    plan.stopped[tp] = (offset, letter.connector)
                    open_.discard(tp)
                    continue
                plan.letters.append(letter)
                plan.commit_to[tp] = offset + 1
            if progress is not None:
                progress.update(sum([min(await consumer.position(tp), ends[tp]) - starts[tp] for tp in ends]))
            for tp in list(open_):
                if await consumer.position(tp) >= ends[tp]:
                    open_.discard(tp)
                    if connector is None or tp not in plan.stopped:
                        # markers and aborted batches at the end: step over them too
                        plan.commit_to[tp] = max(plan.commit_to.get(tp, 0), ends[tp])
        if open_:
            raise MillpondError(f"reading dead-letter topic {dlq_topic!r} made no progress towards its end "
                                f"offsets {ends}; nothing was replayed")
    finally:
        await consumer.close()
    # nothing to do where the group is already there
    plan.commit_to = {tp: o for tp, o in plan.commit_to.items() if committed.get(tp) != o}
    existing = set(await backend.list_topics())
    missing = sorted({d.topic for d in plan.letters} - existing)
    if missing:
        raise MillpondError(f"dead letters of {dlq_topic!r} go back to topic(s) {', '.join(missing)}, which "
                            f"the log no longer has; create them first")
    for d in plan.letters:
        if d.partition is not None and d.partition >= await backend.partitions_for(d.topic):
            raise MillpondError(f"dead letter at {d.dlq.topic}-{d.dlq.partition} offset {d.dlq_offset} goes back to "
                                f"{d.topic}-{d.partition}, which topic {d.topic!r} does not have")
    return plan


async def replay(backend: LogBackend, plan: ReplayPlan, progress: Progress | None = None) -> int:
    """Append the plan's records and commit the replay group's offsets with them; returns records replayed
    (``progress`` counts them, a transaction at a time)."""
    if not plan.letters and not plan.commit_to:
        return 0
    producer = backend.producer(transactional_id=transactional_id(plan.dlq_topic))
    try:
        await producer.init()
        chunks: Sequence[list[DeadLetter]] = [plan.letters[i:i + TRANSACTION_RECORDS]
                                              for i in range(0, len(plan.letters), TRANSACTION_RECORDS)] or [[]]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            offsets: dict[TopicPartition, int] = dict(plan.commit_to) if last else {}
            if not last:
                for d in chunk:
                    offsets[d.dlq] = d.dlq_offset + 1
            await producer.begin()
            try:
                for d in chunk:
                    await producer.send(d.topic, d.record, d.partition)
                await producer.send_offsets(plan.group, offsets)
                await producer.commit()
                if progress is not None:
                    progress.add(len(chunk))
            except BaseException:
                await producer.abort()
                raise
    finally:
        await producer.close()
    log.info("replayed %d dead letter(s) of %r", len(plan.letters), plan.dlq_topic)
    return len(plan.letters)
