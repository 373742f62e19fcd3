"""File source: tails the files a glob matches, one record per line, exactly once.

Source offset (JSON)::

    {"files": [{"path": "in/app.log", "origin": "in/app.log", "dev": 2049, "inode": 131,
                "position": 8192, "line": 310, "fp": 1234567, "fp_len": 1024, "rotated": false}, ...]}

A file is identified by (dev, inode), not by name: ``position`` is the byte
offset just after the last line handed to the log, ``line`` the number of
complete lines before it (absent when unknown). ``fp``/``fp_len`` are a
CRC-32 of the file's first bytes, which tells a file replaced in place (an
inode number reused, or truncated and rewritten) from the one we read.

Rotation:

- by rename (``app.log`` -> ``app.log.1``, a new ``app.log``): the old inode
  is kept open and read to its end before any other file (so the lines of one
  writer stay in order), then closed once it has not grown for
  ``rotated_close_ms``. After a restart, an inode that left the glob is found
  again by scanning its directory for that inode.
- by copytruncate (``app.log`` copied, then truncated to 0): the same inode
  shrinks below our position (or its first bytes change): reading restarts at
  0. The copy must not match the glob, or its lines are read twice — the same
  rule as for every tailer that follows files by inode.

Order: the files of one writer (``app.log`` and its rotations ``app.log.1``,
``app.log.2.gz``-less numeric suffixes, dated ones such as ``app.log-20240501``)
are read one at a time, oldest first, by modification time and then by
rotation order (``app.log.5`` before ``app.log.1`` before ``app.log``): never by
name, so several rotations found at once (after a restart) keep the writer's
order. Different writers are read side by side.

A glob is resolved at start: if its directory does not exist, or it
matches only things that are not regular files (a directory, a FIFO), the
source refuses to start, naming the path: that is a mistake in ``path``. If
it matches nothing yet, the source logs one WARNING and waits: tailing a
directory before the application has written its first file is normal.

With rename rotation, a glob that also matches the rotated names
(``*.log*``) is the safe choice: files are followed by inode, so a renamed
file is never read twice, and a generation created and rotated away between
two scans (``rescan_ms``) or while the worker was stopped is still read. With
``*.log`` such a generation is never seen. Matched files stay in the
checkpoint until they are deleted.

A last line without a trailing newline is held back: it is emitted once the
file has not grown for ``partial_line_ms`` (default 1 s), or when a rotated
file is closed. Its position then moves past it, so it is never emitted twice;
a writer that pauses mid-line longer than that gets its line split in two
records. Set ``partial_line_ms: null`` to only emit it at rotation.

Lines are split on b"\\n" (so the encoding must be ASCII-compatible: UTF-8,
Latin-1, ...); the value of a record is the line without its newline, a str.
When the pipeline has no transforms and string converters (``text`` format),
the lines go out as :class:`~millpond.records.LineRecords` instead: the block
read, as it is (re-encoded only if it is not UTF-8, ``\r`` dropped if asked),
which the log encodes in C: the bytes the records would have become, without
an object per line. With ``format: json``, when every transform of the pipeline
has a batch form, the lines go out as :class:`~millpond.records.JsonLines`
blocks the same way, and the transforms parse them a block at a time.
"""

from __future__ import annotations

import codecs
import glob
import logging
import os
import stat
import time
import zlib
from typing import Any, Literal

from millpond.connector import ConnectorConfig, Guarantee, Source, SourceBatch
from millpond.errors import ConfigError
from millpond.log.batch import line_end
from millpond.records import JsonLines, LineRecords, Record, count_lines, json_or_text

from .tracking import FINGERPRINT_BYTES, TrackedFile, kind_of, rotation_order

log = logging.getLogger("millpond.connectors.file.source")

def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class FileSourceConfig(ConnectorConfig):
    #: glob of the files to tail (``**`` allowed), relative to the working directory
    path: str
    encoding: str = "utf-8"
    #: record key: none, or the path the file was first seen under (keeps a rotated file's lines in one partition)
    key: Literal["none", "path"] = "none"
    #: ``text``: the value is the line (str). ``json``: the line parsed as JSON (JSON-lines files such as
    #: audit events); a line that is not JSON stays a str, so the transforms and the connector's error
    #: policy deal with it (a timestamp transform dead-letters it) instead of the source failing
    format: Literal["text", "json"] = "text"
    partial_line_ms: int | None = 1000
    #: drop the "\r" of "\r\n" line ends (files written on Windows)
    strip_cr: bool = True
    rescan_ms: int = 1000
    rotated_close_ms: int = 5000
    read_bytes: int = 1 << 20
    max_line_bytes: int = 1 << 20
    max_batch_lines: int = 20_000


class FileSource(Source):
    guarantee = Guarantee.exactly_once
    config_model = FileSourceConfig

    config: FileSourceConfig

    @classmethod
    def validate_offset(cls, offset: Any) -> Any:
        """``{"files": [{"path": ..., "position": N, ...}]}``, as the checkpoint holds it. A file given
        by path and position alone is the file at that path now (its dev and inode are filled in), so a
        rewind can be written by hand; lines after ``position`` are read again."""
        if not isinstance(offset, dict) or not isinstance(offset.get("files"), list):
            raise ValueError('a file source offset is {"files": [{"path": ..., "position": N}, ...]}')
        files = []
        for i, item in enumerate(offset["files"]):
            path = item.get("path") if isinstance(item, dict) else None
            if not isinstance(path, str) or not path:
                raise ValueError(f"files[{i}]: needs a 'path'")
            position = item.get("position")
            if not isinstance(position, int) or isinstance(position, bool) or position < 0:
                raise ValueError(f"files[{i}] ({path}): 'position' must be a byte offset >= 0, not {position!r}")
            entry = dict(item)
            if "dev" not in entry or "inode" not in entry:
                try:
                    st = os.stat(path)
                except OSError as exc:
                    raise ValueError(f"files[{i}]: {path}: {exc.strerror}; give the dev and inode of a file that moved")
                entry.update(dev=st.st_dev, inode=st.st_ino)
            entry.setdefault("origin", path)
            files.append(entry)
        return {**offset, "files": files}

    async def start(self, offset: Any | None) -> None:
        if int(self.context.extra.get("tasks", 1)) > 1:
            raise ConfigError(
                f"file source {self.context.name!r}: tasks must be 1 (several tasks would tail the same files)"
            )
        self.files: dict[tuple[int, int], TrackedFile] = {}
        self._last_scan = 0.0
        self._rr = 0
        self._unreadable: set[tuple[int, int]] = set()
        for item in (offset or {}).get("files", []):
            tf = TrackedFile(
                path=item["path"],
                origin=item.get("origin", item["path"]),
                dev=int(item["dev"]),
                inode=int(item["inode"]),
                position=int(item["position"]),
                line=int(item["line"]) if "line" in item else (0 if int(item["position"]) == 0 else None),
                fp=int(item.get("fp", 0)),
                fp_len=int(item.get("fp_len", 0)),
                rotated=bool(item.get("rotated", False)),
            )
            self._reopen(tf)
        self._warned: set[str] = set()
        #: (first index in the last batch's records, count, file, its position and line before them, the bytes)
        self._chunks: list[tuple[int, int, TrackedFile, int, int | None, bytes]] = []
        self._records: list[Record] = []
        self._encoded: list[LineRecords] = []
        self._utf8 = codecs.lookup(self.config.encoding).name == "utf-8"
        topic = self.context.extra.get("topic")
        #: the topic of lines handed over as bytes (LineRecords, or JsonLines for transforms' batch
        #: forms to parse); None: lines become records
        self._lines_topic: str | None = None
        self._lines_kind: type[LineRecords] = LineRecords
        if topic and (self.context.encoded_as, self.config.format) in (("string", "text"), ("json-lines", "json")):
            self._lines_topic = topic
            self._lines_kind = JsonLines if self.config.format == "json" else LineRecords
        self._check_glob()
        self._scan(force=True)

    def _check_glob(self) -> None:
        """Refuse a ``path`` that cannot be meant; warn once about one that matches nothing yet."""
        pattern = self.config.path
        name = self.context.name
        fixed = os.path.dirname(pattern.split("*")[0].split("?")[0].split("[")[0]) or "."
        if not os.path.isdir(fixed):
            raise ConfigError(f"file source {name!r}: path {pattern!r}: directory {fixed!r} does not exist")
        matches = glob.glob(pattern, recursive=True)
        others = []
        hint = ""
        for path in matches:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode):
                return
            others.append(f"{path} is {kind_of(mode)}")
            if stat.S_ISDIR(mode) and not hint:
                hint = f"; did you mean {os.path.join(path, '*')!r}?"
        if others:
            shown = "; ".join(others[:3]) + ("; ..." if len(others) > 3 else "")
            raise ConfigError(f"file source {name!r}: path {pattern!r} matches no regular file ({shown}){hint}")
        if not self.files:
            log.warning("file source %r: no file matches %r yet; waiting for one to appear", name, pattern)

    async def stop(self) -> None:
        for tf in getattr(self, "files", {}).values():
            self._close(tf)

    # -- discovery ------------------------------------------------------------

    def _reopen(self, tf: TrackedFile) -> None:
        """Find a file of a restored checkpoint again: at its path, or elsewhere in its directory by inode."""
        candidates = [tf.path]
        directory = os.path.dirname(tf.path) or "."
        try:
            st = os.stat(tf.path)
            found = (st.st_dev, st.st_ino) == tf.ident
        except OSError:
            found = False
        if not found:
            found_path = None
            try:
                with os.scandir(directory) as it:
                    for entry in it:
                        try:
                            if entry.inode() == tf.inode and entry.stat(follow_symlinks=False).st_dev == tf.dev:
                                found_path = entry.path
                                break
                        except OSError:
                            continue
            except OSError:
                pass
            if found_path is None:
                log.warning(
                    "file %s (inode %d) from the checkpoint is gone; anything written to it after position %d "
                    "was not read", tf.path, tf.inode, tf.position,
                )
                return
            candidates = [found_path]
            if found_path != tf.path:
                tf.path = found_path
                tf.rotated = True
        try:
            tf.fd = os.open(candidates[0], os.O_RDONLY)
        except OSError as exc:
            log.warning("cannot reopen %s: %s", candidates[0], exc)
            return
        st = os.fstat(tf.fd)
        if (st.st_dev, st.st_ino) != tf.ident:  # replaced between stat and open
            self._close(tf)
            return
        if not self._same_content(tf, st.st_size):
            log.info("%s was truncated or replaced since the checkpoint; reading it from the start", tf.path)
            tf.position = 0
            tf.line = 0
            tf.fp = tf.fp_len = 0
        tf.size = st.st_size
        tf.last_growth = time.monotonic()
        self.files[tf.ident] = tf

    def _same_content(self, tf: TrackedFile, size: int) -> bool:
        if size < tf.position:
            return False
        if tf.fp_len and tf.fd is not None:
            head = os.pread(tf.fd, tf.fp_len, 0)
            if len(head) < tf.fp_len or zlib.crc32(head) != tf.fp:
                return False
        return True

    def _scan(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_scan < self.config.rescan_ms / 1000.0:
            return
        self._last_scan = now
        seen: set[tuple[int, int]] = set()
        for path in sorted(glob.glob(self.config.path, recursive=True)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                if path not in self._warned:
                    self._warned.add(path)
                    log.warning("file source %r: %s matches %r but is %s; skipped", self.context.name, path,
                                self.config.path, kind_of(st.st_mode))
                continue
            ident = (st.st_dev, st.st_ino)
            seen.add(ident)
            tf = self.files.get(ident)
            if tf is not None:
                tf.matched = True
                if tf.path != path:
                    # renamed and still matched: the old name's data comes first
                    tf.path = path
                    tf.rotated = True
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                if ident not in self._unreadable:
                    self._unreadable.add(ident)
                    log.warning("cannot read %s: %s (it is retried at every rescan)", path, exc)
                continue
            self._unreadable.discard(ident)
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != ident:
                os.close(fd)
                continue
            tf = TrackedFile(path=path, origin=path, dev=ident[0], inode=ident[1], fd=fd, size=fst.st_size,
                             last_growth=now)
            self.files[ident] = tf
            log.info("tailing %s (inode %d)", path, tf.inode)
        for ident, tf in self.files.items():
            if ident not in seen:
                tf.matched = False
                if not tf.rotated:
                    tf.rotated = True
                    log.info("%s (inode %d) was rotated away; reading it to its end", tf.path, tf.inode)

    @staticmethod
    def _close(tf: TrackedFile) -> None:
        if tf.fd is not None:
            try:
                os.close(tf.fd)
            except OSError:
                pass
            tf.fd = None

    # -- reading --------------------------------------------------------------

    async def poll(self) -> SourceBatch | None:
        self._scan()
        budget = self.config.max_batch_lines
        records: list[Record] = []
        self._records = records
        self._encoded = []
        self._chunks = []
        changed = False
        now = time.monotonic()
        writers = self._by_writer()
        if writers:
            self._rr = (self._rr + 1) % len(writers)
            writers = writers[self._rr :] + writers[: self._rr]
        for files in writers:
            # one writer's files one at a time, oldest first: a newer one waits while an older has data
            for tf in files:
                n, moved = self._read(tf, records, budget, now)
                budget -= n
                changed |= moved
                if tf.fd is not None and tf.position < tf.size:
                    break
            if budget <= 0:
                break
        changed |= self._retire(now)
        if not records and not self._encoded and not changed:
            return None
        return SourceBatch(records, {"files": [tf.snapshot() for tf in self.files.values()]}, list(self._encoded))

    def _by_writer(self) -> list[list[TrackedFile]]:
        """The tracked files grouped by writer (the name they were first seen under, rotation
        suffix removed), each group oldest first: a file seen rotated away, then modification
        time, then rotation order."""
        groups: dict[str, list[tuple[tuple[bool, int, tuple[int, int, str]], TrackedFile]]] = {}
        for tf in self.files.values():
            base, order = rotation_order(tf.origin)
            try:
                mtime = os.fstat(tf.fd).st_mtime_ns if tf.fd is not None else 0
            except OSError:
                mtime = 0
            # A file we saw renamed away is older than what replaced it, even when its writer
            # appended to it a moment after the new file appeared (a newer mtime); among the
            # others an older rotation was last written before the newer, and the name settles equal times.
            groups.setdefault(base, []).append(((not tf.rotated, mtime, order), tf))
        return [[tf for _, tf in sorted(group, key=lambda item: item[0])]
                for _, group in sorted(groups.items())]

    def origin_of(self, record: Record) -> dict[str, Any] | None:
        """The file, inode, byte position and line number of one of the last batch's records."""
        index = next((i for i, r in enumerate(self._records) if r is record), None)
        if index is None:
            return None
        for first, count, tf, position, line, block in self._chunks:
            if first <= index < first + count:
                n = index - first
                origin: dict[str, Any] = {"path": tf.path, "inode": tf.inode,
                                          "position": position + self._bytes_of_lines(block, n)}
                if line is not None:
                    origin["line"] = line + n + 1
                return origin
        return None

    def _retire(self, now: float) -> bool:
        """Forget rotated files that were read to the end and stayed quiet (or were deleted)."""
        done = []
        close_after = self.config.rotated_close_ms / 1000.0
        for ident, tf in self.files.items():
            if tf.fd is None:
                done.append(ident)
                continue
            if tf.rotated and not tf.matched and tf.position >= tf.size and now - tf.last_growth >= close_after:
                done.append(ident)
        for ident in done:
            tf = self.files.pop(ident)
            self._close(tf)
            log.info("closed rotated file %s (inode %d) at position %d", tf.path, tf.inode, tf.position)
        return bool(done)

    def _read(self, tf: TrackedFile, out: list[Record], budget: int, now: float) -> tuple[int, bool]:
        """Append up to ``budget`` complete lines of ``tf`` to ``out``; returns (lines, checkpoint moved)."""
        if tf.fd is None:
            return 0, False
        try:
            size = os.fstat(tf.fd).st_size
        except OSError:
            return 0, False
        moved = False
        if size != tf.size:
            if size > tf.size:
                tf.last_growth = now
            tf.size = size
        if size < tf.position or (tf.fp_len and not self._same_content(tf, size)):
            log.info("%s (inode %d) was truncated (copytruncate?); reading it from the start", tf.path, tf.inode)
            tf.position = 0
            tf.line = 0
            tf.fp = tf.fp_len = 0
            tf.last_growth = now
            moved = True
        if tf.position >= size:
            return 0, moved
        cfg = self.config
        key = tf.origin if cfg.key == "path" else None
        count = 0
        while count < budget and tf.position < size:
            want = cfg.read_bytes
            data = os.pread(tf.fd, want, tf.position)
            if not data:
                break
            end = data.rfind(b"\n")
            while end < 0 and len(data) == want and want < cfg.max_line_bytes:
                want = min(want * 2, cfg.max_line_bytes)
                data = os.pread(tf.fd, want, tf.position)
                end = data.rfind(b"\n")
            if end < 0:
                if len(data) >= cfg.max_line_bytes:
                    log.warning("%s: line longer than max_line_bytes (%d) at position %d; emitting it in parts",
                                tf.path, cfg.max_line_bytes, tf.position)
                    chunk = data[: cfg.max_line_bytes]
                elif self._emit_partial(tf, now):
                    chunk = data
                else:
                    break
                text = chunk.decode(cfg.encoding, "replace")
                if self._lines_topic is not None:
                    self._emit_block(tf, text.encode() + b"\n", 1)
                else:
                    self._chunks.append((len(out), 1, tf, tf.position, tf.line, b""))
                    out.append(Record(json_or_text(text) if cfg.format == "json" else text, key))
                count += 1
                self._advance(tf, len(chunk))
                moved = True
                continue
            if self._lines_topic is not None:
                n, consumed = self._block_lines(tf, data[: end + 1], budget - count)
                if tf.line is not None:
                    tf.line += n
                count += n
                self._advance(tf, consumed)
                moved = True
                continue
            block = data[:end]
            text = block.decode(cfg.encoding, "replace")
            lines = text.split("\n")
            if cfg.strip_cr and "\r" in text:
                lines = [line[:-1] if line.endswith("\r") else line for line in lines]
            if len(lines) > budget - count:
                lines = lines[: budget - count]
                # measured on bytes: ``position`` stays exact even for lossy decodes
                consumed = self._bytes_of_lines(block, len(lines))
            else:
                consumed = end + 1
            self._chunks.append((len(out), len(lines), tf, tf.position, tf.line, block))
            if tf.line is not None:
                tf.line += len(lines)
            if cfg.format == "json":
                out.extend([Record(json_or_text(line), key) for line in lines])
            elif key is None:
                out.extend([Record(line) for line in lines])
            else:
                out.extend([Record(line, key) for line in lines])
            count += len(lines)
            self._advance(tf, consumed)
            moved = True
        return count, moved

    def _block_lines(self, tf: TrackedFile, block: bytes, budget: int) -> tuple[int, int]:
        """Up to ``budget`` lines of ``block`` (complete lines, the last newline included) as
        LineRecords; returns (lines, bytes of ``block`` they took, newlines included).

        The values are the bytes ``Record(line)`` would have become under the string converter:
        the block itself when it is ASCII or valid UTF-8, else decoded (``replace``) and encoded.
        Nothing is split: the log encodes the block as it is.
        """
        clean = block.isascii() or (self._utf8 and _valid_utf8(block))
        text = block if clean else block.decode(self.config.encoding, "replace").encode()
        count = count_lines(text)
        if count <= budget:
            consumed = len(block)
        else:
            count = budget
            text = text[: self._bytes_of_lines(text, budget)]
            # measured on the block's bytes: ``position`` stays exact even for lossy decodes
            consumed = len(text) if clean else self._bytes_of_lines(block, budget)
        if self.config.strip_cr and b"\r" in text:
            lines = [line[:-1] if line.endswith(b"\r") else line for line in text[:-1].split(b"\n")]
            text = b"\n".join(lines) + b"\n"
        self._emit_block(tf, text, count)
        return count, consumed

    def _emit_block(self, tf: TrackedFile, block: bytes, count: int) -> None:
        assert self._lines_topic is not None
        key = tf.origin.encode() if self.config.key == "path" else None
        self._encoded.append(self._lines_kind.of(self._lines_topic, block, count, key, int(time.time() * 1000)))

    @staticmethod
    def _bytes_of_lines(block: bytes, n: int) -> int:
        """Bytes taken by the first ``n`` lines of ``block`` (newlines included; a last line
        without one counts its length + 1)."""
        return line_end(block, n)

    def _emit_partial(self, tf: TrackedFile, now: float) -> bool:
        """A last line without newline goes out when its file is retired, or after the quiet period."""
        quiet = now - tf.last_growth
        if tf.rotated and not tf.matched and quiet >= self.config.rotated_close_ms / 1000.0:
            return True
        ms = self.config.partial_line_ms
        return ms is not None and quiet >= ms / 1000.0

    def _advance(self, tf: TrackedFile, nbytes: int) -> None:
        tf.position += nbytes
        if tf.fp_len < FINGERPRINT_BYTES and tf.position > tf.fp_len and tf.fd is not None:
            tf.fp_len = min(FINGERPRINT_BYTES, tf.position)
            tf.fp = zlib.crc32(os.pread(tf.fd, tf.fp_len, 0))
