"""Source offsets: where every source task is, kept in the log itself.

The internal compacted topic ``__source_offsets`` holds one record per source
task: key = the task's offset key (the connector name), value = the source's
source offset as JSON. A source task writes its source offset in the same
transaction as the records it belongs to, so a read-committed reader never
sees one without the other. Compaction keeps only the latest source offset per
key.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends.base import IsolationLevel, LogBackend, TopicSpec
from ..errors import ConnectorError
from ..records import Record, TopicPartition

SOURCE_OFFSETS_TOPIC = "__source_offsets"
SOURCE_OFFSETS_SPEC = TopicSpec(
    SOURCE_OFFSETS_TOPIC, partitions=1, config={"cleanup.policy": "compact"}
)


def offset_key(connector: str, task: int, tasks: int) -> str:
    """One key per source task: the connector's name (suffixed by the task number when it has several)."""
    return connector if tasks == 1 else f"{connector}#{task}"


async def ensure_source_offsets_topic(backend: LogBackend) -> None:
    await backend.create_topic(SOURCE_OFFSETS_SPEC, exist_ok=True)


def encode_offset(key: str, offset: Any, timestamp: int) -> Record:
    try:
        value = json.dumps(offset, separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise ConnectorError(
            f"source offset of {key!r} is not JSON-serialisable ({exc}); a source offset must be JSON-ready"
        ) from exc
    return Record(value=value, key=key.encode(), timestamp=timestamp)


async def read_source_offset(backend: LogBackend, key: str) -> Any | None:
    """The last committed source offset stored under ``key``, or None if there is none.

    Reads ``__source_offsets`` from the start to the last stable offset with a
    read-committed consumer that belongs to no group (it must not move any
    group's offsets). The topic is compacted, so the read stays short.
    """
    infos = await backend.describe_topic(SOURCE_OFFSETS_TOPIC)
    ends = {TopicPartition(i.topic, i.partition): i.last_stable_offset for i in infos}
    if all(end == 0 for end in ends.values()):
        return None
    consumer = backend.consumer(
        [SOURCE_OFFSETS_TOPIC], group=None, isolation=IsolationLevel.read_committed, reset="earliest"
    )
    wanted = key.encode()
    found: bytes | None = None
    seen = False
    try:
        empty_polls = 0
        while True:
            records = await consumer.poll(max_records=10_000, timeout=0.05)
            for r in records:
                if r.key == wanted:
                    found = r.value
                    seen = True
            if records:
                empty_polls = 0
                continue
            # Nothing more to read: at the last stable offset, or only
            # transaction markers / aborted data remain before it.
            done = True
            for tp, end in ends.items():
                if await consumer.position(tp) < end:
                    done = False
            empty_polls += 1
            if done or empty_polls >= 3:
                break
    finally:
        await consumer.close()
    if not seen or found is None:
        return None
    try:
        return json.loads(found)
    except ValueError as exc:
        raise ConnectorError(f"stored source offset for {key!r} in {SOURCE_OFFSETS_TOPIC} is not JSON: {exc}") from exc
