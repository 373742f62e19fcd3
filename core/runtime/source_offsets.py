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
import time
from collections.abc import Mapping
from typing import Any

from ..backends.base import IsolationLevel, LogBackend, TopicSpec, send_in_transaction
from ..errors import ConnectorError, UnknownTopicError
from ..records import Record, TopicPartition

SOURCE_OFFSETS_TOPIC = "__source_offsets"
SOURCE_OFFSETS_CONFIG = {"cleanup.policy": "compact"}
#: where millpond cleans the log itself: small segments, so its cleaner (which never cleans the active
#: segment) keeps the topic to its live keys and a source's start reads a bounded log however long it has
#: run (issue 17). A Kafka broker cleans its own topics, and refuses segments under 1 MiB.
OWN_CLEANER_CONFIG = {"segment.bytes": 64 << 10, "segment.ms": 10 * 60 * 1000}


def offset_key(connector: str, task: int, tasks: int) -> str:
    """One key per source task: the connector's name (suffixed by the task number when it has several)."""
    return connector if tasks == 1 else f"{connector}#{task}"


async def ensure_source_offsets_topic(backend: LogBackend) -> None:
    config = SOURCE_OFFSETS_CONFIG if backend.maintenance is None else SOURCE_OFFSETS_CONFIG | OWN_CLEANER_CONFIG
    await backend.create_topic(TopicSpec(SOURCE_OFFSETS_TOPIC, partitions=1, config=config), exist_ok=True)


def encode_offset(key: str, offset: Any, timestamp: int) -> Record:
    try:
        value = json.dumps(offset, separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise ConnectorError(
            f"source offset of {key!r} is not JSON-serialisable ({exc}); a source offset must be JSON-ready"
        ) from exc
    return Record(value=value, key=key.encode(), timestamp=timestamp)


async def _latest_by_key(backend: LogBackend) -> dict[bytes, bytes | None]:
    """The last committed value of every key in ``__source_offsets`` (None: a tombstone).

    Reads the topic from the start to its last stable offset with a
    read-committed consumer that belongs to no group (it must not move any
    group's offsets). The topic is compacted, so the read stays short.
    """
    try:
        infos = await backend.describe_topic(SOURCE_OFFSETS_TOPIC)
    except UnknownTopicError:
        return {}
    ends = {TopicPartition(i.topic, i.partition): i.last_stable_offset for i in infos}
    latest: dict[bytes, bytes | None] = {}
    if all(end == 0 for end in ends.values()):
        return latest
    consumer = backend.consumer(
        [SOURCE_OFFSETS_TOPIC], group=None, isolation=IsolationLevel.read_committed, reset="earliest"
    )
    try:
        empty_polls = 0
        while True:
            records = await consumer.poll(max_records=10_000, timeout=0.05)
            for r in records:
                if r.key is not None:
                    latest[r.key] = r.value
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
    return latest


def _decode(key: str, value: bytes) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ConnectorError(f"stored source offset for {key!r} in {SOURCE_OFFSETS_TOPIC} is not JSON: {exc}") from exc


async def read_source_offset(backend: LogBackend, key: str) -> Any | None:
    """The last committed source offset stored under ``key``, or None if there is none."""
    found = (await _latest_by_key(backend)).get(key.encode())
    return None if found is None else _decode(key, found)


async def source_offsets_of(backend: LogBackend, connector: str) -> dict[str, Any]:
    """Every live source offset of ``connector``'s tasks, by offset key (``name`` or ``name#N``)."""
    out: dict[str, Any] = {}
    for raw, value in (await _latest_by_key(backend)).items():
        key = raw.decode("utf-8", "replace")
        if value is not None and (key == connector or key.startswith(connector + "#")):
            out[key] = _decode(key, value)
    return dict(sorted(out.items()))


async def write_source_offsets(backend: LogBackend, transactional_id: str, offsets: Mapping[str, Any]) -> None:
    """Replace source tasks' offsets in ``__source_offsets``, all in one transaction; None for a key
    writes a tombstone, so that task starts from the beginning (a file source from position 0, a
    Postgres source with a new snapshot).

    Written under ``transactional_id``: a task's own id fences any incarnation of it still running,
    as a restart would. Without a worker, the embedded log's writer lock keeps the tasks away.
    """
    now = int(time.time() * 1000)
    sends = [(SOURCE_OFFSETS_TOPIC, Record(value=None, key=key.encode(), timestamp=now) if offset is None
              else encode_offset(key, offset, now), 0) for key, offset in offsets.items()]
    await send_in_transaction(backend, transactional_id, sends)