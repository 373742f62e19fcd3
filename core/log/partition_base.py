"""What the parts of a partition share: its state, its offsets, and the methods one part calls on another.

``Partition`` (partition.py) is assembled from mixins, each in a module of its own:
``FetchMixin`` (fetch.py: reading), ``RecoveryMixin`` (recovery.py: recovery and
quarantine) and ``ProducerStateMixin`` (producer_state.py: transaction state and the
checkpoint). Each derives from ``PartitionBase``, so each is type-checked against the
partition's attributes without importing partition.py: the import graph runs one way,
from partition.py down to its parts and from them down to here.

A method one part calls but another part (or ``Partition`` itself) defines is declared
here as a stub raising ``NotImplementedError``. ``PartitionBase`` is last in
``Partition``'s MRO, so the real method always wins; tests/log/test_partition_parts.py
checks that every stub is overridden and that no two parts define the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CorruptRecordError
from .batch import BatchHeader
from .index import AbortedTxn
from .segment import LogSegment
from .settings import TopicSettings
from .timestamps import MaxTimestamps


@dataclass(slots=True)
class _ProducerState:
    """Open transactions and the ranges of aborted ones, rebuilt from batch headers."""

    ongoing: dict[int, int] = field(default_factory=dict)  # producer_id -> first offset
    aborted: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # pid -> [(first, last)]

    def is_aborted(self, producer_id: int, offset: int) -> bool:
        for first, last in self.aborted.get(producer_id, ()):
            if first <= offset <= last:
                return True
        return False


class PartitionBase:
    """The attributes every part of ``Partition`` reads or writes (set in ``Partition.__init__``)."""

    directory: Path
    #: ``directory`` as a string, for the paths built at every open (a Path per file costs more than the syscall)
    _path: str
    topic: str
    partition: int
    settings: TopicSettings
    writable: bool
    name: str
    #: opened lazily and not used yet: nothing below is set until first use (partition.py)
    _pending: bool
    #: opening it at first use failed: the store's close must not claim a clean shutdown
    _open_failed: bool
    _state: _ProducerState
    #: an aborted transaction is missing from (or torn in) a .txnindex; rewritten before the next checkpoint
    _aborted_index_torn: bool
    #: segment base offset -> its aborted transactions, as in its .txnindex
    _txn: dict[int, list[AbortedTxn]]
    #: segment base offset -> its entries encoded (a checkpoint's claim is a CRC of them); a stale
    #: one is caught by its length, and every place that replaces entries drops it
    _txn_encoded: dict[int, bytes]
    recovery_point: int
    log_start_offset: int
    #: damage a read-only view found and cannot repair (the writer's recovery will)
    _damage: CorruptRecordError | None
    _problems: list[str]
    _rebuilding: bool
    _rebuilt: bool  # the producer state was rebuilt from every header at open
    #: offset ranges whose quarantined data was discarded for good: reads pass over them
    _discarded: list[tuple[int, int]]
    #: offset ranges in quarantine, (first, end, folder, reason): reads into them fail until repaired
    _holes: list[tuple[int, int, str, str]]
    segments: list[LogSegment]
    _base_offsets: list[int]
    #: read-only view: (the folder's mtime, when it was listed), see refresh()
    _listing: tuple[int, int] | None
    #: each closed segment's largest timestamp, so a lookup by time reads one segment
    _max_timestamps: MaxTimestamps

    # -- offsets: derived from the state above alone, so every part reads them here --

    @property
    def log_end_offset(self) -> int:
        return self.segments[-1].next_offset if self.segments else self.log_start_offset

    @property
    def high_watermark(self) -> int:
        return self.log_end_offset

    @property
    def last_stable_offset(self) -> int:
        if self._state.ongoing:
            return min(self._state.ongoing.values())
        return self.high_watermark

    # -- defined in partition.py --

    def roll(self) -> LogSegment:
        raise NotImplementedError

    def flush(self, fsync: bool = True) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _open_segment(self, base_offset: int, *, contiguous: bool | None = None) -> LogSegment:
        raise NotImplementedError

    def _open_segment_rule(self) -> bool:
        raise NotImplementedError

    # -- defined in fetch.py --

    def segment_for(self, offset: int) -> int:
        raise NotImplementedError

    # -- defined in recovery.py --

    def _forget_from(self, offset: int) -> None:
        raise NotImplementedError

    def _hole_between(self, low: int, high: int) -> tuple[int, int, str, str] | None:
        raise NotImplementedError

    def _quarantined_error(self, hole: tuple[int, int, str, str]) -> CorruptRecordError:
        raise NotImplementedError

    # -- defined in producer_state.py --

    def _replay_headers(self, from_offset: int) -> None:
        raise NotImplementedError

    def _track(self, segment: LogSegment, header: BatchHeader, position: int) -> None:
        raise NotImplementedError

    def _write_checkpoint(self) -> None:
        raise NotImplementedError

    def _rewrite_aborted_index(self) -> None:
        raise NotImplementedError
