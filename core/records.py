"""Records and the small value types that name where they live.

A :class:`Record` is the unit everything in millpond passes around. In the
log, ``key`` and ``value`` are bytes; inside a connector's pipeline, before a
converter serialises them (or after one deserialises them), they may be any
JSON-ready value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


Headers = list[tuple[str, bytes | None]]


@dataclass(slots=True)
class Record:
    value: Any
    key: Any = None
    timestamp: int | None = None
    headers: Headers = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def topic_partition(self) -> TopicPartition:
        assert self.topic is not None and self.partition is not None
        return TopicPartition(self.topic, self.partition)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    tail = length & ~3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    if h & 0x80000000:
        h -= 0x100000000
    return h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
