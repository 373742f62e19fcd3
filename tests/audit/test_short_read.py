"""A read through a consumer that stops short of a partition's end fails; it never passes as verified.

A stand-in backend is fine here: what is tested is verify's own loop, not a server (the real Kafka paths
are in test_kafka_audit.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from millpond.audit import verify
from millpond.backends.base import PartitionInfo
from millpond.records import TopicPartition


class _Stalled:
    """A consumer that never fetches anything: a broker that stopped answering mid-read."""

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.at

    async def poll(self, max_records: int, timeout: float) -> list[Any]:
        return []

    async def close(self) -> None:
        pass


class _Backend:
    async def describe_topic(self, topic: str) -> list[PartitionInfo]:
        return [PartitionInfo(topic, 0, 0, 10, 10, 10, 1000, 1)]

    async def list_topics(self) -> list[str]:
        return ["audit"]

    def consumer(self, *args: Any) -> _Stalled:
        return _Stalled()


def test_a_stalled_read_is_an_error_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "_IDLE_POLLS", 2)
    with pytest.raises(verify.ShortReadError, match=r"audit-0 only to offset 0 of its log end 10"):
        asyncio.run(verify.verify_through_backend(_Backend(), "audit"))
