"""Consumer groups: committed offsets kept in the compacted topic ``__consumer_offsets``.

Each commit appends one record per partition::

    key   = JSON ["<group>", "<topic>", <partition>]
    value = JSON {"offset": <next offset to read>, "ts": <commit time ms>}
            (null value: the group forgot this partition)

The topic is compacted like any other, so it stays about as large as the
number of (group, partition) pairs. Offsets committed inside a transaction are
appended as transactional records and take effect only with its COMMIT marker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping

from ...errors import UnknownTopicError
from ...log.batch import Row
from ...log.partition import Partition
from ...log.store import LogStore
from ...records import TopicPartition
from .storage import partition_writes

OFFSETS_TOPIC = "__consumer_offsets"
#: segments the cleaner reaches (never the active one): the topic stays near its live keys
OFFSETS_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.bytes": 1 << 20, "segment.ms": 60 * 60 * 1000}


def offset_rows(group: str, offsets: Mapping[TopicPartition, int]) -> list[Row]:
    now = int(time.time() * 1000)
    return [
        Row(
            json.dumps([group, tp.topic, tp.partition]).encode(),
            json.dumps({"offset": offset, "ts": now}).encode(),
            now,
            [],
        )
        for tp, offset in offsets.items()
    ]


def flush_claimed(store: LogStore, offsets: Mapping[TopicPartition, int]) -> None:
    """fsync the records that committed offsets claim, before the offsets are written.

    An offset that reaches the disk before the records below it would, after a
    power cut, point past the log end offset: the group would skip the records
    written at those offsets next.
    """
    for tp, offset in offsets.items():
        topic = store.topics.get(tp.topic)
        if topic is None or not 0 <= tp.partition < len(topic.partitions):
            continue
        partition = topic.partitions[tp.partition]
        if partition.writable and offset > partition.recovery_point:
            with partition_writes(partition):
                partition.flush()


class GroupCoordinator:
    """The committed offsets of every group, materialised from ``__consumer_offsets``."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self._committed: dict[str, dict[TopicPartition, int]] = {}
        #: the offset of ``__consumer_offsets`` read up to (None: not read yet)
        self._position: int | None = None
        if store.writable and OFFSETS_TOPIC not in store.topics:
            store.create_topic(OFFSETS_TOPIC, 1, OFFSETS_TOPIC_CONFIG)
        self.follow()

    @property
    def _partition(self) -> Partition:
        return self.store.partition(OFFSETS_TOPIC, 0)

    def reload(self) -> None:
        """Forget what is in memory and read the whole topic (read_committed) again."""
        self._committed = {}
        self._position = None
        self.follow()

    def follow(self) -> None:
        """Apply what was committed to the topic since the last read (the first call reads it all).

        A read-only store (every CLI command) asks again before each answer:
        it tails the topic from where it stopped rather than replaying it, so
        ``groups list`` over many groups costs one pass, not one per group.
        A read_committed read stops at the last stable offset, so what lies
        below the position is settled and never needs reading again. When
        the position is no longer in the log (retention moved the log start
        past it), the topic is read from its start once more.
        """
        if OFFSETS_TOPIC not in self.store.topics and not self.store.writable:
            try:
                self.store.topic(OFFSETS_TOPIC)
            except UnknownTopicError:  # a log without groups yet
                return
        partition = self._partition
        if not partition.writable:
            partition.refresh()
        offset = self._position
        if offset is None or not partition.log_start_offset <= offset <= partition.log_end_offset:
            self._committed = {}
            offset = partition.log_start_offset
        committed = self._committed
        while True:
            result = partition.read(offset, 4 << 20, read_committed=True)
            for batch in result.batches:
                self._apply(committed, ((r.key, r.value) for r in batch.records()))
            if result.next_offset == offset:
                break
            offset = result.next_offset
        self._position = offset

    @staticmethod
    def _apply(
        committed: dict[str, dict[TopicPartition, int]], items: Iterable[tuple[bytes | None, bytes | None]]
    ) -> None:
        for key, value in items:
            if key is None:
                continue
            group, topic, partition = json.loads(key)
            tp = TopicPartition(topic, int(partition))
            if value is None:
                committed.get(group, {}).pop(tp, None)
            else:
                committed.setdefault(group, {})[tp] = int(json.loads(value)["offset"])

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        flush_claimed(self.store, offsets)
        partition = self._partition
        with partition_writes(partition):
            partition.append(offset_rows(group, offsets))
        self.apply(group, offsets)

    def apply(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Make offsets visible in memory (after a plain append, or a transaction's commit)."""
        self._committed.setdefault(group, {}).update(offsets)

    def committed(self, group: str) -> dict[TopicPartition, int]:
        return dict(self._committed.get(group, {}))

    def groups(self) -> list[str]:
        return sorted(g for g, offsets in self._committed.items() if offsets)

    def delete(self, group: str) -> None:
        offsets = self._committed.get(group, {})
        if offsets:
            partition = self._partition
            with partition_writes(partition):
                partition.append(
                    [Row(json.dumps([group, tp.topic, tp.partition]).encode(), None, None, []) for tp in offsets]
                )
        self._committed.pop(group, None)  # forgotten in memory only once the tombstones are written
