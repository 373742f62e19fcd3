"""What a Kafka partition holds, batch by batch, read with aiokafka's own protocol classes:
the producer id and epoch of each batch are what prove who wrote what (the same fields
Kafka's ``DumpLogSegments --print-data-log`` shows, without needing the broker's files)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition as KafkaTP

FETCH_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class Batch:
    base_offset: int
    last_offset: int
    producer_id: int
    producer_epoch: int
    transactional: bool
    control: bool


async def batches(bootstrap: str, topic: str, partition: int) -> list[Batch]:
    """Every batch of ``topic``-``partition`` up to its high watermark, in offset order
    (read uncommitted: aborted batches and transaction markers included)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        leader = client.cluster.leader_for_partition(KafkaTP(topic, partition))
        assert leader is not None and leader >= 0, f"no leader for {topic}-{partition}"
        out: list[Batch] = []
        offset = 0
        while True:
            request = FetchRequest(100, 1, FETCH_BYTES, 0, [(topic, [(partition, offset, FETCH_BYTES)])])
            response = await client.send(leader, request)
            fetched = response.topics[0][1][0]
            error, high_watermark, data = fetched[1], fetched[2], fetched[-1]
            assert error == 0, f"fetch {topic}-{partition}@{offset}: error {error}"
            records = MemoryRecords(bytes(data or b""))
            moved = False
            while (b := records.next_batch()) is not None:
                last = b.base_offset + b.last_offset_delta  # type: ignore[union-attr]
                if last < offset:
                    continue
                out.append(Batch(b.base_offset, last, b.producer_id, b.producer_epoch,  # type: ignore[union-attr]
                                 b.is_transactional, b.is_control_batch))  # type: ignore[union-attr]
                offset, moved = last + 1, True
            if offset >= high_watermark or not moved:
                return out
    finally:
        await client.close()


def epochs_interleave(log: list[Batch]) -> list[str]:
    """Places where a producer id writes with an older epoch after a newer one appeared:
    a fenced ("zombie") producer writing after its successor started. Empty when none."""
    newest: dict[int, int] = {}
    problems = []
    for b in log:
        if b.producer_id < 0:
            continue
        seen = newest.get(b.producer_id, -1)
        if b.producer_epoch < seen:
            problems.append(f"offset {b.base_offset}: producer {b.producer_id} epoch {b.producer_epoch} "
                            f"after epoch {seen}")
        newest[b.producer_id] = max(seen, b.producer_epoch)
    return problems
