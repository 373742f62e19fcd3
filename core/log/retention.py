"""Retention: delete whole closed segments by age or by the partition's size.

For topics whose ``cleanup.policy`` includes ``delete``, the oldest closed
segments go, never the active one, when

- their largest record timestamp (``segment.max_timestamp``: CreateTime
  unless the topic uses LogAppendTime; never the file's mtime) is older than
  ``now - retention.ms`` (``-1``: kept forever);
- the partition is larger than ``retention.bytes`` (``-1``: unlimited). As in
  Kafka, a segment goes only while the partition stays at least
  ``retention.bytes`` large without it, so a partition keeps its newest
  ``retention.bytes`` and at most one segment more. Same answer as the Kafka
  backend for the same settings;
- they end at or before the log start offset (left over when a crash came
  between the checkpoint and the unlink).

Only a prefix of the log is deleted (the first segment that must stay stops
the scan), and the log start offset moves to the first remaining segment and
is checkpointed before any file is unlinked. A reader that holds a deleted
segment keeps reading it through its open descriptor.
"""

from __future__ import annotations

from dataclasses import dataclass

from .partition import Partition


@dataclass(slots=True)
class RetentionResult:
    segments_deleted: int
    bytes_deleted: int
    new_log_start_offset: int


def enforce_retention(partition: Partition, now_ms: int) -> RetentionResult:
    """Apply retention.ms / retention.bytes of the partition's topic at ``now_ms``."""
    settings = partition.settings
    if not settings.delete or not partition.writable:
        return RetentionResult(0, 0, partition.log_start_offset)
    closed = list(partition.segments)[:-1]
    log_start = partition.log_start_offset
    size_over = partition.size_bytes - settings.retention_bytes if settings.retention_bytes >= 0 else -1
    cutoff = now_ms - settings.retention_ms if settings.retention_ms >= 0 else None
    count = 0
    for segment in closed:
        if segment.next_offset <= log_start:
            pass
        elif cutoff is not None and segment.max_timestamp < cutoff:
            pass
        elif 0 <= segment.size <= size_over:
            pass
        else:
            break
        size_over -= segment.size
        count += 1
    gone = partition.delete_oldest_segments(count) if count else []
    if gone:
        prune_aborted_transactions(partition)
    return RetentionResult(len(gone), sum(s.size for s in gone), partition.log_start_offset)


def prune_aborted_transactions(partition: Partition) -> int:
    """Forget aborted-transaction ranges that end before the log start; returns how many.

    Their entries left with the deleted segments' .txnindex files: nothing to rewrite.
    """
    aborted = partition._state.aborted  # the partition's transaction state; owned by partition.py
    start = partition.log_start_offset
    dropped = 0
    for producer_id in list(aborted):
        ranges = aborted[producer_id]
        kept = [r for r in ranges if r[1] >= start]
        dropped += len(ranges) - len(kept)
        if not kept:
            del aborted[producer_id]
        elif len(kept) != len(ranges):
            aborted[producer_id] = kept
    return dropped
