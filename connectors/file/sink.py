"""File sink: rolling output files committed by atomic rename, exactly once.

Records of each partition go to a hidden temp file in ``dir``. Committing a
file (at ``flush``, or when it rolls by records, bytes or age) writes and
fsyncs it, renames it to its committed name and fsyncs the directory::

    <topic>-<partition>-<first offset:020d>-<last offset:020d><suffix>
    lines-0-00000000000000000000-00000000000000000999.jsonl

The offset range in the name *is* the sink's offset store: ``start`` scans
the committed names and returns, per partition, the offset after the highest
range, and the runtime seeks there. A crash before the rename leaves only a
temp file, which ``start`` deletes; its records are read again. A crash after
it loses nothing and doubles nothing. Reading the committed files of a
partition in name order gives its records in offset order.

Several writers may share ``dir`` (the tasks of one connector, on one worker
or on several sharing a file system); the group gives each partition to one
of them at a time. Temp names are unique (a random part), and each temp file
is locked (``flock``) while its writer lives, so ``start`` deletes only temp
files nobody holds. A writer that lost its partition without knowing it (a
paused or partitioned worker, a "zombie") must not commit what the new owner
writes too: a commit never replaces a file (it links the temp file to its
name, which fails if the name exists) and refuses a range that overlaps a
committed file of the partition; the zombie's task then restarts from what
is committed.

Format: one line per record. ``text``: the value as text (str as is, bytes
decoded as UTF-8). ``json``: the value as JSON. ``auto`` (default): str values
as is, other values as JSON (a str holding a newline is written as JSON so a
record stays one line).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any, Literal

# aiofiles' executor wrapper: a commit's fsyncs and renames run in a thread, still through ``fsio``
# (the crash tests' door), which aiofiles' own file objects would go around
from aiofiles.os import wrap as _off_loop

from millpond.connector import ConnectorConfig, Guarantee, Sink
from millpond.errors import ConfigError, RecordError, RetriableConnectorError
from millpond.log import fsio
from millpond.log.batch import lines as batch_lines
from millpond.records import PartitionBatches, Record, TopicPartition

log = logging.getLogger("millpond.connectors.file.sink")

TEMP_PREFIX = ".millpond-tmp-"
#: offset resets (``reset_offsets``): per partition the offset and the generation of files since
RESETS_FILE = ".millpond-resets.json"
_topic_partition = attrgetter("topic", "partition")
COMMITTED = re.compile(r"^(?P<topic>.+)-(?P<partition>\d+)-(?P<first>\d{20})-(?P<last>\d{20})(?P<suffix>\..*)?$")


class FileSinkConfig(ConnectorConfig):
    dir: str
    format: Literal["auto", "text", "json"] = "auto"
    suffix: str = ".jsonl"
    roll_records: int = 1_000_000
    roll_bytes: int = 256 * 1024 * 1024
    roll_ms: int = 10 * 60 * 1000
    fsync: bool = True


def committed_name(topic: str, partition: int, first: int, last: int, suffix: str) -> str:
    return f"{topic}-{partition}-{first:020d}-{last:020d}{suffix}"


def parse_committed(name: str) -> tuple[TopicPartition, int, int] | None:
    m = COMMITTED.match(name)
    if m is None:
        return None
    return TopicPartition(m["topic"], int(m["partition"])), int(m["first"]), int(m["last"])


@dataclass(slots=True)
class OpenFile:
    tp: TopicPartition
    path: str
    handle: fsio.FileWriter
    first: int
    last: int = -1
    records: int = 0
    size: int = 0
    opened: float = field(default_factory=time.monotonic)


class FileSink(Sink):
    guarantee = Guarantee.exactly_once
    config_model = FileSinkConfig
    owns_offsets = True
    takes_batches = True

    config: FileSinkConfig

    async def start(self) -> Mapping[TopicPartition, int] | None:
        self.open_files: dict[TopicPartition, OpenFile] = {}
        directory = self.config.dir
        try:
            fsio.mkdir(directory, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"file sink {self.context.name!r}: cannot create output dir {directory!r}: {exc}") from exc
        for name in os.listdir(directory):
            if name.startswith(TEMP_PREFIX) and _abandoned(os.path.join(directory, name)):
                log.info("removed uncommitted temp file %s (its records are read again)", name)
        return await self.stored_offsets()

    async def stored_offsets(self) -> Mapping[TopicPartition, int]:
        """Per partition, the offset after the highest committed range (read from the names now:
        after a rebalance another writer may have committed more since ``start``)."""
        topics = set(self.context.extra.get("topics") or [])
        resume: dict[TopicPartition, int] = {}
        self._resets = self._load_resets()
        for name in os.listdir(self.config.dir):
            parsed = parse_committed(name)
            if parsed is None:
                continue
            tp, _first, last = parsed
            if topics and tp.topic not in topics:
                continue
            if not name.endswith(self._suffix(tp)):  # written before the partition's last offset reset
                continue
            if last + 1 > resume.get(tp, 0):
                resume[tp] = last + 1
        for tp, (offset, _generation) in self._resets.items():
            resume[tp] = max(resume.get(tp, 0), offset)
        return resume

    async def write(self, records: list[Record]) -> None:
        if not records:
            return
        # group per partition, keeping order; most polls hold runs of one partition
        topics = [r.topic for r in records]
        partitions = [r.partition for r in records]
        n = len(records)
        if topics.count(topics[0]) == n and partitions.count(partitions[0]) == n:
            runs = [(TopicPartition(topics[0], partitions[0]), records)]  # type: ignore[arg-type]
        else:
            runs = [(TopicPartition(*tp), list(group)) for tp, group in groupby(records, key=_topic_partition)]
        # encode everything first: a RecordError leaves nothing of this batch written
        encoded = [(tp, run, self._encode(run)) for tp, run in runs]
        for tp, run, data in encoded:
            await self._append(tp, data, len(run), run[0].offset, run[-1].offset)  # type: ignore[arg-type]

    async def write_batches(self, polled: list[PartitionBatches]) -> int | None:
        """Text and auto formats: the log's values are the lines, copied out of its batches in C.

        Only when every value is one line of UTF-8 (what ``write`` would write as it is); otherwise
        nothing is written and the runtime offers the records to ``write``.
        """
        if self.config.format == "json":
            return None
        taken = []
        for part in polled:
            found = batch_lines(part.batches, part.from_offset)
            if found is None:
                return None
            if not found.ascii:
                try:
                    found.data.decode()
                except UnicodeDecodeError:
                    return None
            if found.records:
                taken.append((part.tp, found))
        for tp, found in taken:
            await self._append(tp, found.data, found.records, found.first_offset, found.last_offset)
        return sum(found.records for _, found in taken)

    async def _append(self, tp: TopicPartition, data: bytes, count: int, first: int, last: int) -> None:
        """Add ``count`` encoded records (offsets ``first``..``last``) to the partition's open file."""
        cfg = self.config
        f = self.open_files.get(tp)
        if f is None:
            f = self._open(tp, first)
        # On the loop, not in a thread: a write handed to a thread resumes only when the loop is free
        # again, which the source's commits hold for 60-200 ms each, so the sink fell behind (file ->
        # log -> file: 1M lines in 2.9-3.7 s instead of 1.9-2.5 s, the extra time all in the sink's tail).
        f.handle.write(data)
        f.records += count
        f.size += len(data)
        f.last = last
        if (
            f.records >= cfg.roll_records
            or f.size >= cfg.roll_bytes
            or time.monotonic() - f.opened >= cfg.roll_ms / 1000.0
        ):
            await _off_loop(self._commit_files)([(f, f.last)])

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        work = []
        for f in list(self.open_files.values()):
            end = offsets.get(f.tp)
            # the name covers up to the flushed offset, so records skipped at the tail are not read again
            work.append((f, max(f.last, end - 1) if end is not None else f.last))
        if work:
            # fsync and rename off the event loop: the source keeps reading meanwhile
            await _off_loop(self._commit_files)(work)

    def _commit_files(self, work: list[tuple[OpenFile, int]]) -> None:
        committed = os.listdir(self.config.dir)  # once per batch: what other writers committed
        for f, last in work:
            self._commit(f, last, committed)
        self._sync_dir()

    async def reset_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Resume each partition given from its new offset, writing the replay beside what was written.

        The committed names are the offset store, so a rewind cannot just forget them, and a replay
        must not collide with (or silently replace) files already committed for the same range. Each
        reset starts a new *generation* of the partition, recorded in ``RESETS_FILE`` with its offset:
        files of generation g > 0 carry ``.r<g>`` before the suffix, and ``start`` resumes from the
        later of the reset offset and the files of the current generation, ignoring older ones.
        """
        resets = self._load_resets()
        for tp, offset in offsets.items():
            tp = TopicPartition(*tp)
            _old, generation = resets.get(tp, (0, 0))
            resets[tp] = (int(offset), generation + 1)
            log.info("file sink %r: %s-%d resumes from offset %d, written as generation %d (%s)",
                     self.context.name, tp.topic, tp.partition, offset, generation + 1, self._suffix(tp, generation + 1))
        data = {f"{tp.topic}/{tp.partition}": {"offset": o, "generation": g} for tp, (o, g) in sorted(resets.items())}
        # rare and decisive: always all-or-nothing and durable, whatever ``fsync`` says for data files
        await _off_loop(fsio.replace_file)(os.path.join(self.config.dir, RESETS_FILE), json.dumps(data, indent=1).encode())
        self._resets = resets

    def _load_resets(self) -> dict[TopicPartition, tuple[int, int]]:
        """Per partition: (offset it was reset to, generation), from ``RESETS_FILE``."""
        path = os.path.join(self.config.dir, RESETS_FILE)
        try:
            with open(path) as f:
                data = json.load(f)
            return {
                TopicPartition(key.rpartition("/")[0], int(key.rpartition("/")[2])): (int(v["offset"]), int(v["generation"]))
                for key, v in data.items()
            }
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"file sink {self.context.name!r}: {path} is damaged ({exc}); it records offset "
                              f"resets, fix or remove it") from exc

    def _suffix(self, tp: TopicPartition, generation: int | None = None) -> str:
        if generation is None:
            generation = getattr(self, "_resets", {}).get(tp, (0, 0))[1]
        return f".r{generation}{self.config.suffix}" if generation else self.config.suffix

    async def stop(self) -> None:
        # uncommitted data is dropped on purpose: the runtime reads it again
        for f in getattr(self, "open_files", {}).values():
            try:
                f.handle.close()
                fsio.unlink(f.path)
            except OSError:
                pass
        self.open_files = {}

    # -- internals ------------------------------------------------------------

    def _encode(self, run: list[Record]) -> bytes:
        fmt = self.config.format
        if fmt != "json":
            values = [r.value for r in run]
            try:
                text = "\n".join(values)  # TypeError unless every value is a str
            except TypeError:
                pass
            else:
                if text.count("\n") == len(values) - 1:
                    return (text + "\n").encode("utf-8", "surrogateescape")
        lines = []
        for r in run:
            lines.append(self._line(r.value, fmt, r))
        return b"".join(lines)

    @staticmethod
    def _line(value: Any, fmt: str, r: Record) -> bytes:
        if fmt != "json":
            if isinstance(value, str) and "\n" not in value:
                return value.encode("utf-8", "surrogateescape") + b"\n"
            if isinstance(value, bytes) and b"\n" not in value:
                return value + b"\n"
            if fmt == "text":
                raise RecordError(
                    f"text format: record at {r.topic}-{r.partition}@{r.offset} is not a one-line text value"
                )
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        try:
            return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise RecordError(f"record at {r.topic}-{r.partition}@{r.offset} is not JSON-serialisable: {exc}") from exc

    def _open(self, tp: TopicPartition, first: int) -> OpenFile:
        path = os.path.join(self.config.dir, f"{TEMP_PREFIX}{tp.topic}-{tp.partition}-{uuid.uuid4().hex}")
        handle = fsio.FileWriter(path)  # closed at commit/stop
        # held until the handle closes (also when the process dies): ``start`` elsewhere leaves it alone
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        f = OpenFile(tp, path, handle, first)
        self.open_files[tp] = f
        return f

    def _commit(self, f: OpenFile, last: int, committed: list[str]) -> None:
        """Write out, fsync and rename one file (runs in a worker thread; the runtime awaits it)."""
        f.handle.flush()
        if self.config.fsync:
            fsio.fsync(f.handle.fileno(), why="file-sink")
        name = committed_name(f.tp.topic, f.tp.partition, f.first, last, self._suffix(f.tp))
        final = os.path.join(self.config.dir, name)
        try:
            taken = self._overlapping(f.tp, f.first, last, committed)
            if taken is None and not fsio.place(f.path, final):
                taken = os.path.basename(final)  # another writer committed the same range
        except BaseException:
            f.handle.close()
            raise
        f.handle.close()  # after the link: the lock keeps other writers' ``start`` off the temp file until here
        del self.open_files[f.tp]
        if taken is not None:
            fsio.unlink(f.path)
            raise RetriableConnectorError(
                f"file sink {self.context.name!r}: {f.tp.topic}-{f.tp.partition} offsets {f.first}..{last} overlap "
                f"{taken} in {self.config.dir}, committed by another writer: the partition moved away from this "
                f"task; nothing of this range is committed here")

    def _overlapping(self, tp: TopicPartition, first: int, last: int, committed: list[str]) -> str | None:
        """A file of ``committed`` holding ``tp`` (current generation) whose range meets ``first..last``."""
        prefix = f"{tp.topic}-{tp.partition}-"
        suffix = self._suffix(tp)
        for name in committed:
            if not name.startswith(prefix) or not name.endswith(suffix):
                continue
            parsed = parse_committed(name)
            if parsed is not None and parsed[0] == tp and parsed[1] <= last and first <= parsed[2]:
                return name
        return None

    def _sync_dir(self) -> None:
        if not self.config.fsync:
            return
        fsio.fsync_dir(self.config.dir, why="file-sink.dir")


def _abandoned(path: str) -> bool:
    """Delete the temp file at ``path`` if no live writer holds its lock; True when deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another task (here or on another worker) is writing it
        try:
            fsio.unlink(path)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)

