"""A partition's recovery after an unclean stop, and its quarantine: the methods of
``Partition`` (partition.py) that re-validate segments past the recovery point, cut a torn
tail, move damaged segments aside and put them back.

A mixin over ``PartitionBase`` (partition_base.py); the rules it follows are in
partition.py's docstring.
"""

from __future__ import annotations

import bisect
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CorruptRecordError, MillpondError
from ..progress import Progress
from . import fsio
from .partition_base import PartitionBase
from .producer_state import CHECKPOINT
from .segment import LogSegment, ScanStop

QUARANTINE = "quarantine"
REASON = "reason.json"

log = logging.getLogger(__name__)


class RecoveryMixin(PartitionBase):
    """Recovery of a partition after an unclean stop, and its quarantine."""

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
