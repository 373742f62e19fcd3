"""A partition's transaction state and its checkpoint: open transactions and aborted
ranges, rebuilt from batch headers, kept in each segment's ``.txnindex`` and claimed by
``partition.checkpoint``: the part of ``Partition`` (partition.py) that keeps them, a
mixin over ``PartitionBase`` (partition_base.py).
"""

from __future__ import annotations

import bisect
import logging
import os
from typing import Any

import crc32c
import orjson

from ..errors import CorruptRecordError
from . import batch as batch_format
from . import fsio
from .batch import BatchHeader
from .index import ABORTED_TXN, AbortedTxn, encode_aborted, parse_aborted
from .partition_base import PartitionBase, _ProducerState
from .segment import LogSegment

CHECKPOINT = "partition.checkpoint"
#: the per-partition text file of aborted transactions that older millpond logs kept (upgraded at open)
ABORTED_INDEX = "aborted.txnindex"
#: 2: Kafka's index semantics (entries name a batch's last offset) and a .txnindex per segment
INDEX_FORMAT = 2
#: the checkpoint's keys that must hold an offset (or a count, or a checksum): an int >= 0
_OFFSET_KEYS = ("recovery_point", "log_start_offset", "aborted_index_bytes", "aborted_index_crc32c",
                "index_format", "txn_index_entries", "txn_index_crc32c")

log = logging.getLogger(__name__)


class ProducerStateMixin(PartitionBase):
    """The transaction state of a partition and the checkpoint that claims it."""

    def rebuild_producer_state(self) -> None:
        """Aborted ranges and open transactions from every header (after segments were put back)."""
        self._rebuild_producer_state(logging.INFO)
        self._forget_from(self.log_end_offset)
        self._write_checkpoint()

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
        # read at every open of every partition: plain string paths and one read for a file under 64 KiB
        try:
            fd = os.open(self._path + "/" + CHECKPOINT, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except OSError as exc:
            self._damaged_checkpoint(f"it cannot be read ({exc})")
            return None
        try:
            raw = os.read(fd, 1 << 16)
            if len(raw) == 1 << 16:
                raw += b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
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
        for key in _OFFSET_KEYS:
            value = data.get(key, 0)
            if type(value) is not int or value < 0:
                self._damaged_checkpoint(f"{key} is {value!r}, not an offset")
                return None
        discarded = data.get("discarded", [])
        if discarded != [] and (not isinstance(discarded, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(type(x) is int and x >= 0 for x in r) and r[0] < r[1]
            for r in discarded
        )):
            self._damaged_checkpoint(f"discarded is {discarded!r}, not offset ranges")
            return None
        ongoing = data.get("ongoing", {})
        if ongoing != {} and (not isinstance(ongoing, dict) or not all(
            isinstance(k, str) and k.lstrip("-").isdigit() and type(v) is int and v >= 0 for k, v in ongoing.items()
        )):
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
        if not (checkpoint.get("txn_index_entries") or checkpoint.get("txn_index_crc32c")) and not any(
            name.endswith(".txnindex") for name in names
        ):
            self._txn, self._txn_encoded, self._state.aborted = {}, {}, {}  # none aborted: nothing to check
            return True
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
