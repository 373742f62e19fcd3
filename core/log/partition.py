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
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import crc32c
import orjson

from ..errors import CorruptRecordError, MillpondError, OffsetOutOfRangeError, StorageError
from ..progress import Progress
from . import batch as batch_format
from . import fsio, observe
from .batch import BatchHeader, Encodable
from .index import ABORTED_TXN, AbortedTxn, encode_aborted, parse_aborted
from .segment import LogSegment, ScanStop
from .settings import TopicSettings
from .timestamps import MaxTimestamps

CHECKPOINT = "partition.checkpoint"
#: the per-partition text file of aborted transactions that older millpond logs kept (upgraded at open)
ABORTED_INDEX = "aborted.txnindex"
#: 2: Kafka's index semantics (entries name a batch's last offset) and a .txnindex per segment
INDEX_FORMAT = 2
QUARANTINE = "quarantine"
REASON = "reason.json"
CLEANER_CHECKPOINT = "cleaner-offset-checkpoint"  # written by cleaner.py once a partition was compacted
#: a folder listing taken this soon after the folder's mtime may have missed a change in the same clock tick
_RELIST_MARGIN_NS = 100_000_000

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FetchedBatch:
    """One CRC-checked batch as read from disk."""

    header: BatchHeader
    data: bytes

    def records(self, from_offset: int = 0) -> Iterator[Any]:
        """Decoded records with offset >= ``from_offset`` (each has offset, timestamp, key, value, headers)."""
        if from_offset <= self.header.base_offset:
            return batch_format.iter_records(self.data)
        return (r for r in batch_format.iter_records(self.data) if r.offset >= from_offset)


@dataclass(slots=True)
class FetchResult:
    batches: list[FetchedBatch]
    #: where the next read should start (past the last batch returned, or unchanged)
    next_offset: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int


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


class Partition:
    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        settings: TopicSettings,
        *,
        writable: bool = True,
        clean_shutdown: bool = True,
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.settings = settings
        self.writable = writable
        self.name = f"{topic}-{partition}"
        self._state = _ProducerState()
        #: an aborted transaction is missing from (or torn in) a .txnindex; rewritten before the next checkpoint
        self._aborted_index_torn = False
        #: segment base offset -> its aborted transactions, as in its .txnindex
        self._txn: dict[int, list[AbortedTxn]] = {}
        #: segment base offset -> its entries encoded (a checkpoint's claim is a CRC of them); a stale
        #: one is caught by its length, and every place that replaces entries drops it
        self._txn_encoded: dict[int, bytes] = {}
        self.recovery_point = 0
        self.log_start_offset = 0
        #: damage a read-only view found and cannot repair (the writer's recovery will)
        self._damage: CorruptRecordError | None = None
        self._problems: list[str] = []
        self._rebuilding = False
        self._rebuilt = False  # the producer state was rebuilt from every header at open
        #: offset ranges whose quarantined data was discarded for good: reads pass over them
        self._discarded: list[tuple[int, int]] = []
        #: offset ranges in quarantine, (first, end, folder, reason): reads into them fail until repaired
        self._holes: list[tuple[int, int, str, str]] = []
        self._unflushed_messages = 0
        self._last_flush = time.monotonic()
        #: the log end offset at the last fsyncing flush (-1: none yet); a flush with nothing new is skipped
        self._durable_end = -1
        self.segments: list[LogSegment] = []
        self._base_offsets: list[int] = []
        #: read-only view: (the folder's mtime, when it was listed), see refresh()
        self._listing: tuple[int, int] | None = None
        #: each closed segment's largest timestamp, so a lookup by time reads one segment
        self._max_timestamps = MaxTimestamps(directory, writable=writable)
        self._load(clean_shutdown)

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

    def _recover(self, trusted: bool) -> None:
        """Re-validate segments from the one holding the recovery point (all of them when the
        checkpoint is not trusted). Cut a torn tail of the active segment; move anything else
        that is bad, and every segment after it, into quarantine."""
        if not trusted:
            self.recovery_point = 0
            self._state.ongoing = {}
        start = max(0, bisect.bisect_right(self._base_offsets, self.recovery_point) - 1)
        hole_end = 0
        for i in range(start, len(self.segments)):
            segment = self.segments[i]
            valid, stop = segment.check()
            if stop is not None:
                first_bad = valid[-1][1].next_offset if valid else segment.base_offset
                was_sealed = i < len(self.segments) - 1
                segment.data_end = None
                if i == len(self.segments) - 1 and trusted and first_bad >= self.recovery_point:
                    log.warning(
                        "%s: cut the torn tail of segment %s at position %d (%d bytes from offset %d: %s); "
                        "this is what a crash mid-append leaves",
                        self.name, segment.log_path.name, stop.position, segment.size - stop.position,
                        first_bad, stop.why,
                    )
                else:
                    hole_end = self._quarantine(i, stop, first_bad)
                segment.sealed = False
            segment.cut(valid)
            for position, header in valid:
                if header.base_offset >= self.recovery_point:
                    self._track(segment, header, position)
            if stop is not None:
                if was_sealed and valid and hole_end <= segment.next_offset:
                    # it may have been compacted (offset gaps): it stays sealed, appends go to a new segment
                    self._base_offsets = [s.base_offset for s in self.segments]
                    self.roll()
                break
        self._base_offsets = [s.base_offset for s in self.segments]
        for segment in self.segments[start:-1]:  # those before were fsynced before the checkpoint
            segment.seal()
        cut_at = self.log_end_offset
        self._forget_from(cut_at)
        if trusted and cut_at < self.recovery_point and hole_end <= cut_at:
            # noted, but the offsets are given out again: the claim may be the damaged part
            self._record_lost(cut_at, self.recovery_point)
        if hole_end > cut_at:
            self._skip_to(hole_end)
        self._mark_holes()
        self.recovery_point = min(self.recovery_point, self.log_end_offset)
        self._max_timestamps.check(self.log_end_offset)
        self.flush()

    def _skip_to(self, offset: int) -> None:
        """Start a new active segment at ``offset``, past quarantined offsets: offsets are never
        reused, so the quarantined data can be put back and a consumer past it never skips new records."""
        active = self.segments[-1]
        active.seal()
        active.data_end = active.next_offset
        active.next_offset = offset
        segment = self._open_segment(offset)
        segment.next_offset = offset
        segment.contiguous = True
        self.segments.append(segment)
        self._base_offsets.append(offset)

    def _mark_holes(self) -> None:
        """Load the quarantined and discarded offset ranges; tell the segment before each where its data ends."""
        self._holes = []
        for q in self.quarantined():
            first, end = q.get("first_offset"), q.get("end_offset")
            if q.get("files") and type(first) is int and type(end) is int and first < end:
                self._holes.append((first, end, q["folder"], str(q.get("reason"))))
        for first, end in [(h[0], h[1]) for h in self._holes] + self._discarded:
            i = self.segment_for(first)
            if i + 1 < len(self.segments) and self.segments[i + 1].base_offset == end:
                self.segments[i].data_end = max(first, self.segments[i].base_offset)

    def _quarantined_error(self, hole: tuple[int, int, str, str]) -> CorruptRecordError:
        first, end, folder, why = hole
        return CorruptRecordError(
            f"{self.name}: offsets {first}..{end - 1} are quarantined in {folder} ({why}); put them back "
            f"or drop them with: millpond topics repair {self.topic} --partition {self.partition} --restore|--discard"
        )

    def _hole_between(self, low: int, high: int) -> tuple[int, int, str, str] | None:
        """The quarantined range that offsets [low, high) reach into, if any."""
        for hole in self._holes:
            if hole[0] < max(high, low + 1) and low < hole[1]:
                return hole
        return None

    def _record_lost(self, first: int, end: int) -> None:
        """Data the checkpoint says was fsynced is gone (a file cut short): nothing to move
        aside, but said at ERROR and kept in a quarantine folder of its own, so describe shows it."""
        now = datetime.now(timezone.utc)
        folder = self.directory / QUARANTINE / now.strftime("%Y%m%dT%H%M%S%fZ")
        fsio.mkdir(folder, parents=True)
        why = (f"{CHECKPOINT} says offsets up to {end - 1} were written and fsynced, "
               f"but the segments end at offset {first}: that data is gone")
        reason = {"time": now.isoformat(), "topic": self.topic, "partition": self.partition, "reason": why,
                  "first_offset": first, "end_offset": end, "files": []}
        fsio.write_file(folder / REASON, (json.dumps(reason, indent=2) + "\n").encode())
        log.error("%s: %s (noted in %s; clear the note with: millpond topics repair %s --partition %d --discard)",
                  self.name, why, folder, self.topic, self.partition)

    def _forget_from(self, offset: int) -> None:
        """Drop transaction state about offsets at or past ``offset`` (they were cut or moved aside)."""
        self._state.ongoing = {pid: first for pid, first in self._state.ongoing.items() if first < offset}
        changed = False
        for pid, ranges in self._state.aborted.items():
            kept = [(first, last) for first, last in ranges if first < offset]
            changed = changed or len(kept) != len(ranges)
            ranges[:] = kept
        bases = {s.base_offset for s in self.segments}  # a segment moved to quarantine took its entries
        self._txn_encoded = {}
        for base in list(self._txn):
            entries = self._txn[base]
            kept_txns = [t for t in entries if t.first_offset < offset] if base in bases else []
            if len(kept_txns) != len(entries):
                changed = True
                if kept_txns:
                    self._txn[base] = kept_txns
                else:
                    del self._txn[base]
        if changed and self.writable:
            self._rewrite_aborted_index()

    def _quarantine(self, i: int, stop: ScanStop, first_bad: int) -> int:
        """Move segment ``i`` (a copy: its good prefix stays) and every later segment aside, with the reason."""
        segment = self.segments[i]
        later = self.segments[i + 1 :]
        end = max(first_bad, self.recovery_point)
        if later:
            later[-1].sealed = False
            later[-1].scan_next_offset()
            end = max(end, later[-1].next_offset)
        now = datetime.now(timezone.utc)
        folder = self.directory / QUARANTINE / now.strftime("%Y%m%dT%H%M%S%fZ")
        fsio.mkdir(folder, parents=True)
        shutil.copyfile(segment.log_path, folder / segment.log_path.name)
        moved = [segment.log_path.name]
        for other in later:
            other.close()
            for path in (other.log_path, other.index_path, other.time_index_path, other.txn_index_path):
                if path.exists():
                    fsio.replace(path, folder / path.name)
                    moved.append(path.name)
        reason = {
            "time": now.isoformat(),
            "topic": self.topic,
            "partition": self.partition,
            "reason": stop.why,
            "segment": segment.log_path.name,
            "position": stop.position,
            "first_offset": first_bad,
            "end_offset": end,
            "files": moved,
        }
        fsio.write_file(folder / REASON, (json.dumps(reason, indent=2) + "\n").encode())
        for name in moved:
            fsio.sync_file(folder / name)
        fsio.fsync_dir(folder)
        fsio.fsync_dir(self.directory)
        del self.segments[i + 1 :]
        log.error(
            "%s: segment %s is corrupt at position %d (%s); offsets %d..%d moved aside to %s "
            "(put back or drop them with: millpond topics repair %s --partition %d --restore|--discard)",
            self.name, segment.log_path.name, stop.position, stop.why, first_bad, end - 1, folder,
            self.topic, self.partition,
        )
        return end

    def quarantined(self) -> list[dict[str, Any]]:
        """reason.json of every quarantine folder (oldest first), each with its ``folder``."""
        out: list[dict[str, Any]] = []
        root = self.directory / QUARANTINE
        if not root.is_dir():
            return out
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            try:
                reason = json.loads((folder / REASON).read_text())
                if not isinstance(reason, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as exc:
                reason = {"reason": f"{folder / REASON} is unreadable ({exc})"}
            reason["folder"] = str(folder)
            out.append(reason)
        return out

    def discard_quarantine(self) -> None:
        """Delete the quarantined files for good; their offsets stay absent (reads pass over them)."""
        for first, end, _, _ in self._holes:
            self._discarded.append((first, end))
        shutil.rmtree(self.directory / QUARANTINE)
        self._mark_holes()
        self._write_checkpoint()

    def restore_quarantine(self, progress: Progress | None = None) -> None:
        """Check the quarantined segments and put them back (then this object is closed: reopen the partition).

        Refused, changing nothing, while any of them is still damaged or would
        overlap what the partition holds now. ``progress`` counts the bytes checked.
        """
        events = self.quarantined()
        moves: list[tuple[Path, Path]] = []
        live = {s.base_offset: s for s in self.segments}
        for q in events:
            folder = Path(q["folder"])
            first, end = q.get("first_offset"), q.get("end_offset")
            logs = sorted(folder.glob("*.log"))
            if not logs or type(first) is not int or type(end) is not int:
                raise MillpondError(f"cannot restore {folder}: it holds no segments to put back "
                                    "(the data was gone, not moved aside); --discard clears the note")
            bases = [int(path.name[:-4]) for path in logs]
            for j, path in enumerate(logs):
                segment = LogSegment(folder, bases[j], writable=False, label=self.name)
                segment.contiguous = self._open_segment_rule()
                segment.sealed = True
                segment.next_offset = bases[j + 1] if j + 1 < len(bases) else end
                try:
                    valid, stop = segment.check()
                finally:
                    segment.close()
                if progress is not None:
                    progress.add(path.stat().st_size)
                reached = valid[-1][1].next_offset if valid else segment.base_offset
                if stop is not None:
                    raise MillpondError(f"cannot restore {folder}: {path.name} is still damaged at position "
                                        f"{stop.position} ({stop.why}); fix it and try again, or --discard")
                if segment.contiguous and reached != segment.next_offset:
                    raise MillpondError(f"cannot restore {folder}: {path.name} ends at offset {reached}, "
                                        f"short of {segment.next_offset}; --discard, or put the rest there")
            taken = [b for b in live if bases[0] < b < end]
            if taken:
                raise MillpondError(f"cannot restore {folder}: offsets {bases[0]}..{end - 1} are held by "
                                    f"segment {taken[0]} of {self.name} now; copy the files out, or --discard")
            moves += [(path, self.directory / path.name) for path in folder.iterdir() if path.name != REASON]
        self.close()
        self._max_timestamps.forget()  # it may not bound the records put back
        for source, target in moves:
            fsio.replace(source, target)
        fsio.fsync_dir(self.directory)
        shutil.rmtree(self.directory / QUARANTINE)

    def rebuild_producer_state(self) -> None:
        """Aborted ranges and open transactions from every header (after segments were put back)."""
        self._rebuild_producer_state(logging.INFO)
        self._forget_from(self.log_end_offset)
        self._write_checkpoint()

    def check_tails(self) -> list[str]:
        """Damage at the end of each sealed segment, one line each: what ``topics describe`` checks
        so that it does not show an end offset the data does not reach without saying so. Cheap:
        the last index interval of each segment, not the whole log."""
        out = []
        for segment in list(self.segments[:-1]):
            try:
                stop = segment.check_tail()
            except CorruptRecordError as exc:
                out.append(str(exc))
                continue
            if stop is not None:
                out.append(str(segment.corrupt(stop.position, stop.why, self.name)))
        return out

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

    def _replay_headers(self, from_offset: int) -> None:
        """Rebuild open-transaction state from headers past ``from_offset`` (no CRC, headers only)."""
        start = max(0, bisect.bisect_right(self._base_offsets, from_offset) - 1)
        for segment in self.segments[start:]:
            first = segment.position_of(from_offset) if segment.base_offset < from_offset else 0
            if first is None:
                continue
            for position, header in segment.walk(first):
                if header.base_offset >= from_offset:
                    self._track(segment, header, position)

    def _rebuild_producer_state(self, level: int = logging.WARNING) -> None:
        """Open transactions and aborted ranges from every batch header of the partition
        (the aborted index or the checkpoint could not be trusted). A damaged segment
        ends its own scan, not the rebuild: reads of it fail on their own."""
        log.log(level, "%s: rebuilding %s and the open transactions from the transaction markers in %s",
                self.name, ABORTED_INDEX, self.directory)
        self._state = _ProducerState()
        self._txn = {}
        self._txn_encoded = {}
        self._rebuilt = self._rebuilding = True
        try:
            for segment in self.segments:
                scan = segment._scan(0, segment.size)
                while True:
                    try:
                        position, header = next(scan)
                        self._track(segment, header, position)
                    except (StopIteration, CorruptRecordError):
                        break
        finally:
            self._rebuilding = False
        if self.writable:
            self._rewrite_aborted_index()  # all at once: one fsync per segment, not per transaction

    def _track(self, segment: LogSegment, header: BatchHeader, position: int) -> None:
        if not header.is_transactional:
            return
        pid = header.producer_id
        if header.is_control:
            first = self._state.ongoing.pop(pid, None)
            if first is None:
                if not self._rebuilding:
                    return
                first = self.segments[0].base_offset  # its first batch is gone (retention)
            data = segment.read_bytes(position, header.size)
            if len(data) < header.size or not batch_format.crc_ok(data, 0, header):
                raise segment.corrupt(position, "CRC-32C mismatch in a transaction marker", self.name)
            if batch_format.control_type(data) == batch_format.CONTROL_ABORT:
                self._record_abort(pid, first, header.base_offset, segment)
        elif pid not in self._state.ongoing:
            self._state.ongoing[pid] = header.base_offset

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint's claims, checked for shape; None when it is damaged (said in a WARNING)."""
        try:
            fd = os.open(os.path.join(self.directory, CHECKPOINT), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            self._damaged_checkpoint(f"it cannot be read ({exc})")
            return None
        try:
            raw = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
        finally:
            os.close(fd)
        try:
            data = orjson.loads(raw)
        except (ValueError, OSError) as exc:  # orjson.JSONDecodeError is a ValueError
            self._damaged_checkpoint(f"it does not parse ({exc})")
            return None
        if not isinstance(data, dict):
            self._damaged_checkpoint("it is not a JSON object")
            return None
        for key in ("recovery_point", "log_start_offset", "aborted_index_bytes", "aborted_index_crc32c",
                    "index_format", "txn_index_entries", "txn_index_crc32c"):
            value = data.get(key, 0)
            if type(value) is not int or value < 0:
                self._damaged_checkpoint(f"{key} is {value!r}, not an offset")
                return None
        discarded = data.get("discarded", [])
        if not isinstance(discarded, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r) and r[0] < r[1]
            for r in discarded
        ):
            self._damaged_checkpoint(f"discarded is {discarded!r}, not offset ranges")
            return None
        ongoing = data.get("ongoing", {})
        if not isinstance(ongoing, dict) or not all(
            isinstance(k, str) and k.lstrip("-").isdigit() and type(v) is int and v >= 0 for k, v in ongoing.items()
        ):
            self._damaged_checkpoint(f"ongoing is {ongoing!r}, not producer ids and offsets")
            return None
        return data

    def _damaged_checkpoint(self, why: str) -> None:
        log.warning("%s is damaged: %s; treating %s as not cleanly shut down and recovering it from its segments",
                    self.directory / CHECKPOINT, why, self.name)

    def _write_checkpoint(self) -> None:
        body = {
            "recovery_point": self.recovery_point,
            "log_start_offset": self.log_start_offset,
            "ongoing": {str(k): v for k, v in self._state.ongoing.items()},
            "index_format": INDEX_FORMAT,
            # the .txnindex files are appended between checkpoints; these entries of them are claimed
            **self._txn_claim(),
            "discarded": [list(r) for r in self._discarded],
        }
        active = self.segments[-1] if self.segments else None
        if active is not None and self.recovery_point == self.log_end_offset and (
            active.last_batch is not None or not active.size
        ):
            # what an open after a stop checks to see nothing was written since (see _load)
            body["end"] = [active.base_offset, active.size, -1 if active.last_batch is None else active.last_batch]
        fsio.replace_file(self.directory / CHECKPOINT, orjson.dumps(body), why="checkpoint")

    def _txn_claim(self) -> dict[str, int]:
        """How many aborted transactions the .txnindex files hold below the recovery point, and their
        CRC-32C (of their entries, segment by segment): what a checkpoint claims of them. Segments
        wholly before the log start (retention deleted them, or is about to) are left out."""
        count = crc = 0
        bases = self._base_offsets or [s.base_offset for s in self.segments]
        for i, base in enumerate(bases):
            if i + 1 < len(bases) and bases[i + 1] <= self.log_start_offset:
                continue
            entries = self._txn.get(base)
            if not entries:
                continue
            claimed = len(entries)
            while claimed and entries[claimed - 1].last_offset >= self.recovery_point:
                claimed -= 1  # in marker order: only the newest can be past the recovery point
            data = self._txn_encoded.get(base)
            if data is None or len(data) != len(entries) * ABORTED_TXN.size:
                data = self._txn_encoded[base] = encode_aborted(entries)
            count += claimed
            crc = crc32c.crc32c(data[: claimed * ABORTED_TXN.size], crc)
        return {"txn_index_entries": count, "txn_index_crc32c": crc}

    def _load_aborted_index(self, checkpoint: dict[str, Any] | None, names: set[str]) -> bool:
        """Load the aborted transactions from the segments' .txnindex files; False when they
        cannot be trusted (then they are rebuilt from the markers).

        Entries at or past the recovery point were appended after the checkpoint and are
        left out (and cut off by the writer): replaying the headers past the recovery
        point finds them again. The rest must match what the checkpoint claims.
        """
        if checkpoint is None:
            return False
        txn: dict[int, list[AbortedTxn]] = {}
        problem = ""
        with_txns = self.segments if any(name.endswith(".txnindex") for name in names) else []
        for segment in with_txns:
            path = segment.txn_index_path
            if path.name not in names:
                continue
            data = path.read_bytes()
            entries, why = parse_aborted(data, segment.base_offset)
            if why is not None:
                problem = f"{path}: {why}"
                break
            kept = [t for t in entries if t.last_offset < self.recovery_point]
            if len(kept) != len(entries) and self.writable:
                fd = fsio.open(path, os.O_WRONLY)
                try:
                    fsio.ftruncate(fd, len(kept) * ABORTED_TXN.size)
                finally:
                    fsio.close(fd)
            if kept:
                txn[segment.base_offset] = kept
        if not problem:
            self._txn = txn
            self._txn_encoded = {}
            claim = self._txn_claim()
            expected = {key: checkpoint.get(key, 0) for key in claim}
            if claim != expected:
                problem = (f"the .txnindex files hold {claim['txn_index_entries']} aborted transactions before "
                           f"offset {self.recovery_point}, not the {expected['txn_index_entries']} (with their "
                           f"checksum) that {CHECKPOINT} claims")
        if problem:
            self._txn = {}
            log.warning("%s: %s", self.name, problem)
            return False
        aborted: dict[int, list[tuple[int, int]]] = {}
        for entries in txn.values():
            for t in entries:
                aborted.setdefault(t.producer_id, []).append((t.first_offset, t.last_offset))
        self._state.aborted = aborted
        return True

    def _rewrite_aborted_index(self) -> None:
        """Write every segment's .txnindex from memory (atomically each); remove those left empty."""
        names = set(os.listdir(self.directory))
        for segment in self.segments:
            entries = self._txn.get(segment.base_offset)
            if entries:
                fsio.replace_file(segment.txn_index_path, encode_aborted(entries), why="aborted index")
            elif segment.txn_index_path.name in names:
                fsio.unlink(segment.txn_index_path, missing_ok=True)
        self._aborted_index_torn = False

    def _record_abort(self, producer_id: int, first: int, last: int, segment: LogSegment) -> None:
        """Note an aborted transaction whose ABORT marker (at ``last``) is in ``segment``, as Kafka
        does: in that segment's .txnindex, with the partition's last stable offset once the
        marker is written (the first offset of the oldest other open transaction, or the
        offset after the marker)."""
        ranges = self._state.aborted.setdefault(producer_id, [])
        if (first, last) in ranges:
            return
        ranges.append((first, last))
        others = [start for pid, start in self._state.ongoing.items() if pid != producer_id]
        entry = AbortedTxn(producer_id, first, last, min([last + 1, *others]))
        self._txn.setdefault(segment.base_offset, []).append(entry)
        if segment.base_offset in self._txn_encoded:
            self._txn_encoded[segment.base_offset] += entry.encode()
        if self.writable and not self._rebuilding:
            try:
                if self._aborted_index_torn:
                    self._rewrite_aborted_index()
                else:
                    path = segment.txn_index_path
                    new = not path.exists()
                    # durable before a checkpoint can claim the ABORT marker: past the recovery point
                    # nothing re-reads it
                    fsio.append_file(path, entry.encode(), sync=True)
                    if new:
                        fsio.fsync_dir(self.directory)
            except BaseException:
                # The ABORT marker is in the segment already: the checkpoint must
                # not move past it until the index holds its entry (rewritten whole).
                self._aborted_index_torn = True
                raise

    def _finish_interrupted_swaps(self) -> None:
        """A compaction swap interrupted by a crash: complete it if committed, else drop the leftovers.

        The protocol (and which old segment files a completed swap deletes) is in cleaner.py.
        """
        from .swap import finish_interrupted_swaps

        finish_interrupted_swaps(self.directory)

    # -- offsets --

    @property
    def active_segment(self) -> LogSegment:
        return self.segments[-1]

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
        if not self.writable:
            return
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

    # -- reading --

    def segment_for(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self._base_offsets, offset) - 1)

    def read(self, offset: int, max_bytes: int = 1 << 20, *, read_committed: bool = False) -> FetchResult:
        """Whole, CRC-checked batches from ``offset``; at least one batch if any is there.

        read_committed stops at the last stable offset and leaves out aborted
        data; control batches are never returned.
        """
        if self.writable:
            return self._read(offset, max_bytes, read_committed)
        self.refresh()
        try:
            return self._read(offset, max_bytes, read_committed)
        except StorageError:
            # a segment whose descriptor the cache had closed was deleted or replaced by the writer
            # (retention, compaction) since it was listed: list the folder afresh and read again
            self._relist(afresh=True)
            self.refresh()
            return self._read(offset, max_bytes, read_committed)

    def _read(self, offset: int, max_bytes: int, read_committed: bool) -> FetchResult:
        end = self.last_stable_offset if read_committed else self.high_watermark
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.name} "
                f"(log start {self.log_start_offset}, log end {self.log_end_offset})"
            )
        segments = list(self.segments)  # a retention/compaction swap cannot pull them away
        batches: list[FetchedBatch] = []
        total = 0
        next_offset = offset
        for segment in segments[self.segment_for(offset) :]:
            if next_offset >= end or (batches and total >= max_bytes):
                break
            if next_offset <= segment.base_offset:  # from its first batch: no index lookup, no scan
                position = 0 if segment.size else None
            else:
                position = segment.position_of(next_offset)
            if position is None:
                # quarantined offsets are never passed over: what comes before them is served, then an error
                hole = self._hole_between(next_offset, segment.next_offset) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                continue
            for pos, header in segment.walk(position):
                if header.base_offset >= end or (batches and total + header.size > max_bytes):
                    break
                hole = self._hole_between(next_offset, header.base_offset) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                data = segment.read_bytes(pos, header.size)
                if len(data) < header.size or not batch_format.crc_ok(data, 0, header):
                    raise segment.corrupt(pos, "CRC-32C mismatch or short batch", self.name)
                if header.magic != batch_format.MAGIC:
                    raise segment.corrupt(pos, f"unknown magic {header.magic}", self.name)
                next_offset = header.next_offset
                total += header.size
                if header.is_control:
                    continue
                if read_committed and header.is_transactional and self._state.is_aborted(
                    header.producer_id, header.base_offset
                ):
                    continue
                batches.append(FetchedBatch(header, data))
            else:
                hole = self._hole_between(next_offset, min(segment.next_offset, end)) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                continue
            break
        if self._damage is not None and not batches and next_offset >= self.log_end_offset:
            raise self._damage  # the data the writer wrote goes on past here: not a quiet end
        return FetchResult(batches, next_offset, self.high_watermark, self.last_stable_offset, self.log_start_offset)

    def offset_for_time(self, timestamp: int) -> int | None:
        """First offset whose record timestamp is >= ``timestamp`` (None when none is).

        Kafka's rule: the answer is in the first segment whose largest timestamp reaches
        ``timestamp``; that segment is found by a bisection over the largest timestamps
        below each roll (see timestamps.py), so only its indexes are read, however many there are.
        """
        if not self.writable:
            self.refresh()
        segments = list(self.segments)
        if not segments:
            return None
        start = self.segment_for(self._max_timestamps.start_offset(timestamp))
        for segment in segments[start:]:
            if segment.size == 0 or (segment is not segments[-1] and segment.max_timestamp < timestamp):
                continue
            position = segment.position_for_time(timestamp)
            if position is None:
                continue
            for pos, header in segment.walk(position):
                if header.max_timestamp < timestamp or header.is_control:
                    continue
                data = segment.read_bytes(pos, header.size)
                for record in batch_format.iter_records(data):
                    if record.timestamp >= timestamp:
                        return int(record.offset)
        return None

    def refresh(self) -> None:
        """Read-only view: pick up segments and bytes the writing process has added since.

        Segments come and go (a roll, retention, a swap) only by creating, renaming
        or removing files in the partition's folder, each of which moves the
        folder's mtime; appends to the active segment do not. So the folder is
        listed again only when its mtime changed, not on every fetch: reading a
        partition of 10,000 segments was quadratic in the listing. The mtime has
        the file system's coarse clock, so a change within the same tick as the
        last listing could keep it unchanged: a listing taken less than
        ``_RELIST_MARGIN_NS`` after the mtime it saw is not trusted.
        """
        if self.writable:
            return
        before = self.log_end_offset
        mtime = os.stat(self.directory).st_mtime_ns
        listed = self._listing
        if listed is None or listed[0] != mtime or listed[1] - mtime < _RELIST_MARGIN_NS:
            self._listing = (mtime, time.time_ns())
            self._relist()
        if self.segments:
            active = self.segments[-1]
            active.size = active.file_size()
            stop = active.scan_next_offset()
            if stop is not None and not stop.torn:
                self._damage = active.corrupt(stop.position, stop.why, self.name)
                if str(self._damage) not in self._problems:
                    self._problems.append(str(self._damage))
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        if self.log_end_offset > before:
            try:
                self._replay_headers(before)
            except CorruptRecordError as exc:
                self._damage = exc
                if str(exc) not in self._problems:
                    self._problems.append(str(exc))

    def _max_timestamp_between(self, low: int, high: int) -> int:
        """The largest timestamp of the records in offsets [low, high), from the segments holding them."""
        stamps = [s.max_timestamp for s in self.segments if s.size and s.base_offset < high and s.next_offset > low]
        return max(stamps, default=-1)

    def _list_folder(self) -> tuple[list[int], set[str]]:
        """Base offsets of the segments in the folder, in order, and every name in it (one listing)."""
        try:
            with os.scandir(self.directory) as entries:
                names = {e.name for e in entries}
        except FileNotFoundError:
            return [], set()
        bases = sorted(int(name[:-4]) for name in names if name.endswith(".log") and name[:-4].isdigit())
        return bases, names

    def _relist(self, afresh: bool = False) -> None:
        """Read-only view: follow the folder's segments (retention removed the oldest, a roll added some;
        ``afresh``: compaction replaced some, so every segment is opened again)."""
        if afresh:
            self.segments = []
            self._listing = None
        bases, names = self._list_folder()
        compacted = CLEANER_CHECKPOINT in names
        present = set(bases)
        while len(self.segments) > 1 and self.segments[0].base_offset not in present:
            self.segments.pop(0)
        last_base = self.segments[-1].base_offset if self.segments else -1
        known = len(self.segments)
        for base in bases:
            if base > last_base:
                self.segments.append(self._open_segment(base, contiguous=not (compacted or self.settings.compact)))
        if self.segments:
            self.segments[-1].contiguous = True
        self._base_offsets = [s.base_offset for s in self.segments]
        for i, (segment, following) in enumerate(zip(self.segments, self.segments[1:])):
            if not segment.sealed:
                if i < known:  # the active segment until now: its size grew since it was opened
                    segment.size = segment.file_size()
                segment.next_offset = following.base_offset
                segment.sealed = True

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
        if self.writable:
            self.flush()
        for segment in self.segments:
            segment.close()
