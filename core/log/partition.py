"""A partition: an ordered list of segments and the offsets that describe it.

Offsets of a partition (Kafka's names)::

    log_start_offset    first offset still retained
    recovery_point      everything before it is fsynced and was checked
    last_stable_offset  first offset of the oldest open transaction (or the high watermark)
    high_watermark      offsets below it are visible to readers (= log_end_offset here)
    log_end_offset      the next offset to be assigned

Files in the partition folder besides the segments::

    partition.checkpoint   JSON {recovery_point, log_start_offset, ongoing, index_format,
                           txn_index_entries, txn_index_crc32c}: the durable
                           claims, rewritten atomically after an fsync
    NNN.txnindex           beside segment NNN: its aborted transactions, in Kafka's
                           layout (see index.py), so a broker can adopt the folder
    quarantine/<when>/     segments moved aside by recovery, with reason.json

Only segments past the recovery point are re-validated after an unclean stop,
so opening a partition costs the same for ten records or ten million.

What is read at open is checked before it is trusted, cheaply: a checkpoint
that does not parse or claims more than the segments hold makes the partition
recover from its segments; an aborted index that does not match the checksum
the checkpoint keeps is rebuilt from the transaction markers. A log written by
an older millpond (no ``index_format`` in its checkpoint: index entries named a
batch's first offset, and one text ``aborted.txnindex`` per partition) is
upgraded in place at open; see ``_upgrade``. Recovery never
deletes: only the torn tail of the active segment past the recovery point is
cut (a normal crash); a bad batch anywhere else moves the segment (a copy) and
every later one into ``quarantine/``, for ``millpond topics repair`` to put back
or discard. Offsets are never reused: appends go on after the quarantined ones,
and reads fail when they reach them until they are put back or discarded.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CorruptRecordError
from . import batch as batch_format
from . import fsio, observe
from .batch import BatchHeader, Encodable
from .fetch import _RELIST_MARGIN_NS, CLEANER_CHECKPOINT, FetchedBatch, FetchMixin, FetchResult
from .index import encode_aborted
from .partition_base import _ProducerState
from .producer_state import ABORTED_INDEX, CHECKPOINT, INDEX_FORMAT, ProducerStateMixin
from .recovery import QUARANTINE, REASON, RecoveryMixin
from .segment import LogSegment
from .settings import TopicSettings
from .timestamps import MaxTimestamps

__all__ = [
    "ABORTED_INDEX", "CHECKPOINT", "CLEANER_CHECKPOINT", "INDEX_FORMAT", "QUARANTINE", "REASON", "_RELIST_MARGIN_NS",
    "FetchedBatch", "FetchResult", "Partition",
]

log = logging.getLogger(__name__)

#: held while a lazy partition is opened (see ``Partition._open_pending``)
_OPENING = threading.RLock()


class Partition(FetchMixin, RecoveryMixin, ProducerStateMixin):
    """One partition's log: opening and recovery, appends, rolls, flushes and segment swaps here;
    reads in FetchMixin (fetch.py), recovery and quarantine in RecoveryMixin (recovery.py),
    transaction state and the checkpoint in ProducerStateMixin (producer_state.py). The
    attributes they share are declared on PartitionBase (partition_base.py)."""

    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        settings: TopicSettings,
        *,
        writable: bool = True,
        clean_shutdown: bool = True,
        lazy: bool = False,
    ) -> None:
        """``lazy``: a writable partition after a clean shutdown with no open transaction (the store's
        marker says which have one) reads nothing now; it is opened as it would have been at its first
        use, see ``_open_pending``. A store of 5,000 partitions that a worker touches a few of opens in
        the time it takes to list them (Kafka's recovery point idea carried one step further: after a
        clean shutdown, a partition nobody uses needs nothing read)."""
        self.directory = directory
        self._path = os.fspath(directory)
        self.topic = topic
        self.partition = partition
        self.settings = settings
        self.writable = writable
        self.name = f"{topic}-{partition}"
        self._open_failed = False
        if lazy and writable and clean_shutdown:
            self._pending = True
            return
        self._pending = False
        self._state = _ProducerState()
        self._aborted_index_torn = False
        self._txn = {}
        self._txn_encoded = {}
        self.recovery_point = 0
        self.log_start_offset = 0
        self._damage = None
        self._problems = []
        self._rebuilding = False
        self._rebuilt = False
        self._discarded = []
        self._holes = []
        self._unflushed_messages = 0
        self._last_flush = time.monotonic()
        #: the log end offset at the last fsyncing flush (-1: none yet); a flush with nothing new is skipped
        self._durable_end = -1
        self.segments = []
        self._base_offsets = []
        self._listing = None
        self._max_timestamps = MaxTimestamps(directory, writable=writable)
        self._load(clean_shutdown)

    # -- a partition opened lazily --

    if not TYPE_CHECKING:  # to mypy every attribute stays declared (partition_base.py), none is Any

        def __getattr__(self, name: str) -> Any:
            # only called for an attribute not set: a pending partition's state, read for the first time
            if name.startswith("__") or not self.__dict__.get("_pending", False):
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            self._open_pending()
            return object.__getattribute__(self, name)

    def _open_pending(self) -> None:
        """Open a lazy partition now, as the store would have at its own open.

        It is opened into a separate object and its state moved over in one step, under a
        lock: the compaction thread and the event loop may both be the first to touch it,
        and neither may see a half-opened partition. A failure (a disk error) leaves it
        pending, so the next use tries again and fails the same way, and ``_open_failed``
        set: its recovery may have stopped half-way, so the store's close is not a clean one."""
        with _OPENING:
            if not self.__dict__.get("_pending", False):
                return
            try:
                opened = Partition(self.directory, self.topic, self.partition, self.settings,
                                   writable=self.writable, clean_shutdown=True)
            except BaseException:
                self._open_failed = True
                raise
            self.__dict__.update(opened.__dict__)

    # -- opening and recovery --

    def _load(self, clean_shutdown: bool) -> None:
        checkpoint = self._read_checkpoint()
        trusted = checkpoint is not None
        if checkpoint is not None:
            self.recovery_point = checkpoint.get("recovery_point", 0)
            self.log_start_offset = checkpoint.get("log_start_offset", 0)
            self._state.ongoing = {int(k): v for k, v in checkpoint.get("ongoing", {}).items()}
            self._discarded = [(first, end) for first, end in checkpoint.get("discarded", [])]
        listed_mtime = os.stat(self.directory).st_mtime_ns if not self.writable else 0
        bases, names = self._list_folder()
        if self.writable and not names and not self.directory.is_dir():
            fsio.mkdir(self.directory, parents=True, exist_ok=True)
        if self.writable and any(name.endswith((".cleaned", ".swap")) for name in names):
            self._finish_interrupted_swaps()
            bases, names = self._list_folder()
        if not self.writable:
            self._listing = (listed_mtime, time.time_ns())
        compacted = CLEANER_CHECKPOINT in names
        for base in bases:
            self.segments.append(self._open_segment(base, contiguous=not (compacted or self.settings.compact)))
        if not self.segments:
            if not self.writable:
                self._base_offsets = []
                return
            self.segments.append(self._open_segment(max(self.log_start_offset, self.recovery_point)))
            fsio.fsync_dir(self.directory, why="roll.dir")
        self._base_offsets = [s.base_offset for s in self.segments]
        for segment, following in zip(self.segments, self.segments[1:]):
            segment.next_offset = following.base_offset
            segment.sealed = True
        self.segments[-1].contiguous = True  # the active segment is never compacted
        if QUARANTINE in names or self._discarded:
            self._mark_holes()
        legacy = ABORTED_INDEX in names
        if (checkpoint or legacy) and (checkpoint or {}).get("index_format", 1) < INDEX_FORMAT:
            self._upgrade()
            aborted_ok = True
        else:
            aborted_ok = self._load_aborted_index(checkpoint, names)
            if legacy and self.writable:  # an upgrade stopped after its checkpoint: finish it
                fsio.unlink(self.directory / ABORTED_INDEX, missing_ok=True)
                fsio.fsync_dir(self.directory, why="upgrade.dir")
        if trusted and self.log_start_offset > self.segments[0].base_offset and (
            self.log_start_offset not in self._base_offsets  # retention moves it to a segment's base only
        ):
            trusted = self._distrust(f"log_start_offset {self.log_start_offset} is not where a segment starts")
        if not aborted_ok:
            self._rebuild_producer_state()
        # Nothing was written since the checkpoint (Kafka's recovery point idea): its active segment
        # is still the size it was when the data up to the recovery point was fsynced
        end = (checkpoint or {}).get("end")
        active = self.segments[-1]
        untouched = bool(trusted and aborted_ok and isinstance(end, list) and len(end) == 3
                         and end[:2] == [active.base_offset, active.size] and type(end[2]) is int
                         and self.recovery_point >= active.base_offset
                         and (active.ends_with(end[2], self.recovery_point) if active.size
                              else self.recovery_point == active.base_offset))
        if self.writable and not ((clean_shutdown or untouched) and trusted):
            self._recover(trusted)
        else:
            self._open_clean(trusted, untouched)
        self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)

    def _upgrade(self) -> None:
        """Bring a log written by an older millpond to Kafka's layout, in place.

        Every segment's indexes are rebuilt with entries naming a batch's last offset, and
        the aborted transactions are found again from the markers (the old text file has no
        last stable offsets) and written to each segment's .txnindex. Crash-safe without a
        journal: each file is replaced atomically, the checkpoint naming ``index_format`` is
        written only after all of them are durable, and only then is ``aborted.txnindex``
        removed; a crash before the checkpoint redoes the whole upgrade at the next open,
        one after it only removes the old file. A read-only view upgrades in memory.
        """
        log.info("%s: upgrading %s to Kafka's index layout (index entries name a batch's last offset; "
                 "aborted transactions in a .txnindex per segment)", self.name, self.directory)
        for segment in self.segments:
            if segment.size:
                segment.rebuild_indexes("written by an older millpond, entries name a batch's first offset",
                                        level=logging.INFO)
        self._rebuild_producer_state(logging.INFO)
        if self.writable:
            self._write_checkpoint()
            fsio.unlink(self.directory / ABORTED_INDEX, missing_ok=True)
            fsio.fsync_dir(self.directory, why="upgrade.dir")

    def _distrust(self, why: str) -> bool:
        """The checkpoint disagrees with the segments: forget its claims (returns False, for ``trusted``)."""
        log.warning("%s: %s (%s); treating %s as not cleanly shut down and recovering it from its segments",
                    self.directory / CHECKPOINT, why, self.name, self.name)
        self.recovery_point = 0
        self.log_start_offset = 0
        self._state.ongoing = {}
        return False

    def _open_clean(self, trusted: bool, untouched: bool = False) -> None:
        """Open without re-validating: find the log end from the last index entry, check the checkpoint's claims.

        ``untouched``: the checkpoint names the active segment at its present size, so the log ends at
        the recovery point; no index is read, and a clean close has nothing to fsync.
        """
        active = self.segments[-1]
        if untouched:
            active.next_offset = self.recovery_point
            stop = None
            if self.writable:
                self._durable_end = self.recovery_point
        else:
            stop = active.scan_next_offset()
        damaged = stop is not None and (self.writable or not stop.torn)
        claims_more = trusted and self.recovery_point > self.log_end_offset
        why = ""
        if damaged:
            assert stop is not None
            why = f"segment {active.log_path.name} is damaged at position {stop.position} ({stop.why})"
        elif claims_more:
            why = (f"it claims offsets up to {self.recovery_point} but the data ends at {self.log_end_offset}")
        elif trusted and not self._ongoing_ok():
            why = "an open transaction it names is not in the segments"
        if why and self.writable:
            if damaged or claims_more:
                # the data is short of what was fsynced: recovery quarantines or notes what is missing
                log.warning("%s: %s; recovering it", self.name, why if damaged else f"{CHECKPOINT}: {why}")
            else:
                trusted = self._distrust(why)
            self._recover(trusted)
            return
        if why and not damaged:
            if self.recovery_point > self.log_end_offset:
                self._damage = CorruptRecordError(f"{self.name}: {self.directory / CHECKPOINT} {why}")
                self._problems.append(str(self._damage))
            trusted = self._distrust(why)
        if not trusted and not self._rebuilt:
            self._rebuild_producer_state()
        if damaged:
            assert stop is not None
            self._damage = active.corrupt(stop.position, stop.why, self.name)
            self._problems.append(str(self._damage))
            log.error("%s", self._damage)
        try:
            if self.recovery_point < self.log_end_offset:
                self._replay_headers(self.recovery_point)
        except CorruptRecordError as exc:
            if self.writable:
                raise
            self._damage = exc
            self._problems.append(str(exc))

    def _ongoing_ok(self) -> bool:
        """Each open transaction the checkpoint names starts with a batch of that producer (one lookup each)."""
        for producer_id, first in self._state.ongoing.items():
            if not self.log_start_offset <= first < self.log_end_offset:
                return False
            segment = self.segments[self.segment_for(first)]
            try:
                position = segment.position_of(first)
            except CorruptRecordError:
                return False
            if position is None:
                return False
            header = batch_format.read_header(segment.read_bytes(position, batch_format.HEADER_SIZE))
            if header.base_offset != first or header.producer_id != producer_id or not header.is_transactional:
                return False
        return True

    def _open_segment(self, base_offset: int, *, contiguous: bool | None = None) -> LogSegment:
        """``contiguous``: the rule below, when the caller knows it already (from a listing of the folder)."""
        segment = LogSegment(self.directory, base_offset, writable=self.writable, label=self.name)
        segment.contiguous = self._open_segment_rule() if contiguous is None else contiguous
        return segment

    def _open_segment_rule(self) -> bool:
        """Never compacted: batches follow each other without offset gaps, which catches a damaged base offset."""
        return not self.settings.compact and not (self.directory / CLEANER_CHECKPOINT).exists()

    @property
    def problems(self) -> list[str]:
        """What is wrong with this partition's files, one line each (empty when nothing is)."""
        out = list(self._problems)
        for q in self.quarantined():
            span = (f"offsets {q['first_offset']}..{q['end_offset'] - 1}"
                    if isinstance(q.get("first_offset"), int) and isinstance(q.get("end_offset"), int)
                    else "data")
            out.append(f"{span} quarantined in {q['folder']}: {q.get('reason')} "
                       f"(millpond topics repair {self.topic} --partition {self.partition} --restore|--discard)")
        return out

    def _finish_interrupted_swaps(self) -> None:
        """A compaction swap interrupted by a crash: complete it if committed, else drop the leftovers.

        The protocol (and which old segment files a completed swap deletes) is in cleaner.py.
        """
        from .swap import finish_interrupted_swaps

        finish_interrupted_swaps(self.directory)

    # -- offsets (log_end_offset, high_watermark and last_stable_offset: partition_base.py) --

    @property
    def active_segment(self) -> LogSegment:
        return self.segments[-1]

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # -- writing --

    def append(
        self,
        rows: Sequence[Encodable],
        *,
        producer_id: int = batch_format.NO_PRODUCER_ID,
        producer_epoch: int = -1,
        transactional: bool = False,
    ) -> int:
        """Encode ``rows`` as one batch and append it; returns its base offset."""
        settings = self.settings
        log_append_time = (
            int(time.time() * 1000) if settings.message_timestamp_type == "LogAppendTime" else None
        )
        codec = batch_format.CODECS.get(settings.compression_type, 0)
        buf = batch_format.build_batch(
            rows,
            compression=codec,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            transactional=transactional,
            log_append_time=log_append_time,
        )
        return self.append_batches([buf])

    def append_batches(self, buffers: Sequence[bytearray]) -> int:
        """Append pre-built batches, assigning offsets; returns the first base offset."""
        assert self.writable, f"{self.name} is open read-only"
        next_offset = self.log_end_offset
        first = next_offset
        headers: list[BatchHeader] = []
        for buf in buffers:
            batch_format.set_base_offset(buf, next_offset)
            header = batch_format.read_header(buf)
            headers.append(header)
            next_offset = header.next_offset
        self._maybe_roll(sum(h.size for h in headers))
        segment = self.active_segment
        position = segment.size
        segment.append(b"".join(buffers) if len(buffers) > 1 else buffers[0], headers)
        for header in headers:
            if header.is_transactional:
                self._track(segment, header, position)
            position += header.size
        self._unflushed_messages += sum(h.last_offset_delta + 1 for h in headers)
        self._maybe_flush()
        return first

    def append_control(self, producer_id: int, producer_epoch: int, *, commit: bool) -> int:
        """Write a COMMIT or ABORT marker for the producer's open transaction."""
        return self.append_batches([batch_format.build_control_batch(producer_id, producer_epoch, commit)])

    def ongoing_producers(self) -> list[int]:
        if self._pending:
            return []  # the store opens a partition with an open transaction at once
        return list(self._state.ongoing)

    def _maybe_roll(self, incoming: int) -> None:
        active = self.active_segment
        if active.size == 0:
            return
        age = time.time() * 1000 - active.created_ms
        if active.size + incoming > self.settings.segment_bytes or age >= self.settings.segment_ms:
            self.roll()

    def roll(self) -> LogSegment:
        """Seal the active segment and start a new one at the log end offset."""
        active = self.active_segment
        if active.size == 0:
            return active
        active.seal()
        self._max_timestamps.note_roll(active.base_offset, active.next_offset, active.max_timestamp,
                                       self._max_timestamp_between)
        segment = self._open_segment(active.next_offset)
        fsio.fsync_dir(self.directory, why="roll.dir")  # else a power cut may drop the file a checkpoint claims
        segment.next_offset = active.next_offset
        segment.contiguous = True  # the active segment is never compacted
        self.segments.append(segment)
        self._base_offsets.append(segment.base_offset)
        return segment

    def _maybe_flush(self) -> None:
        settings = self.settings
        due = settings.flush_messages is not None and self._unflushed_messages >= settings.flush_messages
        if settings.flush_ms is not None:
            due = due or (time.monotonic() - self._last_flush) * 1000 >= settings.flush_ms
        if due:
            self.flush()

    def flush(self, fsync: bool = True) -> None:
        """fsync the data, then move the recovery point that claims it."""
        if not self.writable or self._pending:
            return  # a pending partition is as durable as the clean close that left it
        end = self.log_end_offset
        if end == (self._durable_end if fsync else self.recovery_point) and not self._aborted_index_torn:
            # nothing appended since: a clean close of a partition nobody wrote to fsyncs nothing
            self._unflushed_messages = 0
            self._last_flush = time.monotonic()
            return
        start = max(0, bisect.bisect_right(self._base_offsets, self.recovery_point) - 1)
        began = time.perf_counter()
        for segment in self.segments[start:]:
            segment.flush(fsync=fsync)
        if fsync and observe.fsync_observer is not None:
            observe.fsync_observer(time.perf_counter() - began)
        if self._aborted_index_torn:
            self._rewrite_aborted_index()
        self.recovery_point = end
        if fsync:
            self._durable_end = end
        self._unflushed_messages = 0
        self._last_flush = time.monotonic()
        self._write_checkpoint()

    # -- retention and compaction hooks --

    def delete_oldest_segments(self, count: int) -> list[LogSegment]:
        """Drop the ``count`` oldest segments (never the active one); advance the log start offset."""
        count = min(count, len(self.segments) - 1)
        if count <= 0:
            return []
        gone = self.segments[:count]
        self.segments = self.segments[count:]
        self._base_offsets = self._base_offsets[count:]
        self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        for segment in gone:
            self._txn.pop(segment.base_offset, None)  # its .txnindex goes with it
            self._txn_encoded.pop(segment.base_offset, None)
        self._write_checkpoint()
        self._max_timestamps.prune(self.log_start_offset)
        for segment in gone:
            segment.delete()
        return gone

    def replace_segments(self, old: Sequence[LogSegment]) -> LogSegment:
        """Swap ``old`` (consecutive, sealed) for the cleaned segment written beside them.

        The cleaner has written ``<base>.{log,index,timeindex}.cleaned`` with
        base = ``old[0].base_offset``; the rename of the log to ``.swap`` is the
        commit point (see cleaner.py). Readers holding ``old`` keep reading the
        old bytes: their descriptors stay open and their indexes are loaded
        before the files under those names change.
        """
        from .swap import cleaned_path, commit_swap, complete_swap

        i = self.segments.index(old[0])
        n = len(old)
        if self.segments[i : i + n] != list(old) or i + n >= len(self.segments):
            raise ValueError(f"{self.name}: segments to replace must be consecutive and sealed")
        for segment in old:
            segment.index, segment.time_index, segment.max_timestamp  # load before the files change
            segment.keep_open()
        base = old[0].base_offset
        # the cleaned segment carries the aborted transactions of those it replaces (Kafka's cleaner
        # does the same), swapped in with its indexes
        merged = [t for s in old for t in self._txn.get(s.base_offset, ())]
        if merged:
            fsio.write_file(cleaned_path(self.directory, base, ".txnindex", "cleaned"), encode_aborted(merged))
        commit_swap(self.directory, base, [s.base_offset for s in old], old[-1].next_offset)
        for segment in old:
            self._txn.pop(segment.base_offset, None)
            self._txn_encoded.pop(segment.base_offset, None)
        if merged:
            self._txn[base] = merged
        complete_swap(self.directory, base)
        new = self._open_segment(base)
        new.next_offset = old[-1].next_offset
        new.sealed = True
        self.segments[i : i + n] = [new]  # in place: a reader's copy of the list keeps the old ones
        self._base_offsets[i : i + n] = [base]
        return new

    def close(self) -> None:
        if self._pending:
            return  # nothing opened, nothing written
        if self.writable:
            self.flush()
        for segment in self.segments:
            segment.close()
