"""Records and the small value types that name where they live.

A :class:`Record` is the unit everything in millpond passes around. In the
log, ``key`` and ``value`` are bytes; inside a connector's pipeline, before a
converter serialises them (or after one deserialises them), they may be any
JSON-ready value.
"""

from __future__ import annotations

import struct
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


_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
#: one compiled ``<nI`` per word count seen (keys are short, so few of them)
_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``).

    The body reads the key as little-endian 32-bit words in one ``struct``
    call instead of assembling each word from four byte lookups: every CDC
    key is new, so this runs once per record and the per-byte indexing was
    most of its cost.
    """
    length = len(data)
    m = _M
    h = (0x9747B28C ^ length) & _MASK
    nwords = length >> 2
    if nwords:
        words = _WORDS.get(nwords)
        if words is None:
            words = _WORDS[nwords] = struct.Struct(f"<{nwords}I")
        for k in words.unpack_from(data):
            k = (k * m) & _MASK
            k = ((k ^ (k >> 24)) * m) & _MASK
            h = ((h * m) & _MASK) ^ k
    extra = length & 3
    if extra:
        tail = length - extra
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * m) & _MASK
    h ^= h >> 13
    h = (h * m) & _MASK
    h ^= h >> 15
    if h & 0x80000000:
        h -= 0x100000000
    return h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
