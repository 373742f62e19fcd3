"""File source: tailing, rotation (rename, copytruncate), partial last lines, small files, resume."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSource, FileSourceConfig
from millpond.connectors.file.tracking import rotation_order
from millpond.errors import ConfigError
from millpond.records import Record


def make(tmp: Path, **cfg: Any) -> FileSource:
    config = FileSourceConfig(path=str(tmp / "*.log"), rescan_ms=0, **cfg)
    return FileSource(config, ConnectorContext(name="tail"))


class Harness:
    """Drives a FileSource like the runtime does and remembers the last checkpoint."""

    def __init__(self, tmp: Path, offset: Any = None, **cfg: Any) -> None:
        self.source = make(tmp, **cfg)
        self.offset = offset
        asyncio.run(self.source.start(offset))

    def drain(self, polls: int = 3) -> list[str]:
        out: list[str] = []
        empty = 0
        while empty < polls:
            batch = asyncio.run(self.source.poll())
            if batch is None:
                empty += 1
                continue
            out += [r.value for r in batch.records]
            self.offset = batch.offset
        return out

    def stop(self) -> None:
        asyncio.run(self.source.stop())


def write(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_tails_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "one\ntwo\n")
    h = Harness(tmp_path)
    assert h.drain() == ["one", "two"]
    write(log, "three\n")
    assert h.drain() == ["three"]
    assert h.offset["files"][0]["position"] == len("one\ntwo\nthree\n")
    h.stop()


def test_last_line_without_newline_is_emitted_once_after_the_quiet_period(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "a\nb\nc")
    h = Harness(tmp_path, partial_line_ms=100)
    assert h.drain() == ["a", "b"]
    time.sleep(0.15)
    assert h.drain() == ["c"]
    write(log, "\nd\n")
    # "c" is not emitted again; the newline that completes it ends an empty line
    assert h.drain() == ["", "d"]
    h.stop()


def test_half_line_completed_in_time_is_one_record(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "ab")
    h = Harness(tmp_path, partial_line_ms=10_000)
    assert h.drain() == []
    write(log, "c\n")
    assert h.drain() == ["abc"]
    h.stop()


def test_partial_line_held_until_rotation_when_timeout_disabled(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "x\ntail-without-newline")
    h = Harness(tmp_path, partial_line_ms=None, rotated_close_ms=50)
    assert h.drain() == ["x"]
    time.sleep(0.1)
    assert h.drain() == []
    os.rename(log, tmp_path / "app.log.1")
    write(log, "new\n")
    # the rotated file has been quiet for rotated_close_ms: its partial line comes out,
    # before the new file's lines
    assert h.drain() == ["tail-without-newline", "new"]
    h.stop()


def test_rotation_by_rename_reads_old_file_to_its_end_first(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "1\n2\n3\n")
    h = Harness(tmp_path, rotated_close_ms=50)
    assert h.drain() == ["1", "2", "3"]
    write(log, "4\n5\n")  # written before the rotation, not read yet
    os.rename(log, tmp_path / "app.log.1")
    write(log, "6\n7\n")
    assert h.drain() == ["4", "5", "6", "7"]
    time.sleep(0.1)
    h.drain()
    assert [f["path"] for f in h.offset["files"]] == [str(log)]  # the rotated file was retired
    h.stop()


def test_rotation_by_rename_while_stopped_resumes_by_inode(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "1\n2\n")
    h = Harness(tmp_path)
    assert h.drain() == ["1", "2"]
    h.stop()
    write(log, "3\n4\n")
    os.rename(log, tmp_path / "app.log.1")
    write(log, "5\n")
    h2 = Harness(tmp_path, offset=h.offset)
    assert h2.drain() == ["3", "4", "5"]
    h2.stop()


def test_copytruncate_restarts_the_same_inode_from_zero(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "1\n2\n3\n")
    h = Harness(tmp_path)
    assert h.drain() == ["1", "2", "3"]
    shutil.copy(log, tmp_path / "app.log.1")
    with open(log, "r+") as f:
        f.truncate(0)
    write(log, "4\n")
    assert h.drain() == ["4"]
    h.stop()


def test_copytruncate_regrown_past_position_is_caught_by_fingerprint(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "a1\na2\n")
    h = Harness(tmp_path)
    assert h.drain() == ["a1", "a2"]
    inode = os.stat(log).st_ino
    with open(log, "r+") as f:
        f.truncate(0)
    write(log, "b1\nb2\nb3\nb4\n")  # longer than what was read: size alone cannot tell
    assert os.stat(log).st_ino == inode
    assert h.drain() == ["b1", "b2", "b3", "b4"]
    h.stop()


def test_copytruncate_while_stopped(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "a1\na2\na3\n")
    h = Harness(tmp_path)
    assert h.drain() == ["a1", "a2", "a3"]
    h.stop()
    with open(log, "r+") as f:
        f.truncate(0)
    write(log, "b1\n")
    h2 = Harness(tmp_path, offset=h.offset)
    assert h2.drain() == ["b1"]
    h2.stop()


def test_many_small_files_each_line_once_across_restarts(tmp_path: Path) -> None:
    expected = []
    for i in range(40):
        lines = [f"f{i}-l{j}" for j in range(i % 3 + 1)]
        expected += lines
        write(tmp_path / f"s{i:02d}.log", "".join(x + "\n" for x in lines))
    got: list[str] = []
    offset = None
    # restart after every single poll
    while True:
        h = Harness(tmp_path, offset=offset, max_batch_lines=5)
        batch = asyncio.run(h.source.poll())
        h.stop()
        if batch is None:
            break
        got += [r.value for r in batch.records]
        offset = batch.offset
    assert sorted(got) == sorted(expected)
    assert len(got) == len(expected)


def test_budget_splits_a_read_at_exact_line_boundaries(tmp_path: Path) -> None:
    lines = [f"line-{i}-" + "é" * (i % 4) for i in range(25)]
    write(tmp_path / "app.log", "".join(x + "\n" for x in lines))
    got: list[str] = []
    offset = None
    for _ in range(10):
        h = Harness(tmp_path, offset=offset, max_batch_lines=7)
        batch = asyncio.run(h.source.poll())
        h.stop()
        if batch is None:
            break
        assert len(batch.records) <= 7
        got += [r.value for r in batch.records]
        offset = batch.offset
    assert got == lines


def test_key_from_path_follows_the_first_name(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "1\n")
    h = Harness(tmp_path, key="path")
    batch = asyncio.run(h.source.poll())
    assert batch is not None and batch.records[0].key == str(log)
    write(log, "2\n")
    os.rename(log, tmp_path / "app-old.log")  # still matched by the glob
    batch = asyncio.run(h.source.poll())
    assert batch is not None and [(r.value, r.key) for r in batch.records] == [("2", str(log))]
    h.stop()


def test_long_line_is_read_whole(tmp_path: Path) -> None:
    long = "x" * 300_000
    write(tmp_path / "app.log", long + "\nshort\n")
    h = Harness(tmp_path, read_bytes=4096)
    assert h.drain() == [long, "short"]
    h.stop()


def test_json_format_parses_lines_and_keeps_bad_ones_as_text(tmp_path: Path) -> None:
    write(tmp_path / "audit.log", '{"actor": "ann", "n": 1}\nnot json\n[1, 2]\n')
    h = Harness(tmp_path, format="json")
    assert h.drain() == [{"actor": "ann", "n": 1}, "not json", [1, 2]]
    h.stop()


def test_deleted_file_is_read_to_its_end_then_forgotten(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "1\n")
    h = Harness(tmp_path, rotated_close_ms=50)
    assert h.drain() == ["1"]
    write(log, "2\n")
    log.unlink()  # the open descriptor keeps the data readable
    assert h.drain() == ["2"]
    time.sleep(0.1)
    h.drain()
    assert h.offset["files"] == []
    h.stop()


def test_unreadable_file_is_reported_and_picked_up_once_readable(
    tmp_path: Path, caplog: Any, monkeypatch: Any
) -> None:
    log = tmp_path / "app.log"
    write(log, "secret\n")
    real_open = os.open

    def refuse(path: Any, flags: int, *args: Any) -> int:
        if str(path) == str(log):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse)  # root reads any file, so refuse the open itself
    h = Harness(tmp_path)
    assert h.drain() == []
    assert "cannot read" in caplog.text and "Permission denied" in caplog.text
    monkeypatch.setattr(os, "open", real_open)
    assert h.drain() == ["secret"]
    h.stop()


def test_crlf_line_ends_are_stripped(tmp_path: Path) -> None:
    with open(tmp_path / "win.log", "wb") as f:
        f.write(b"one\r\ntwo\r\nthree\n")
    h = Harness(tmp_path)
    assert h.drain() == ["one", "two", "three"]
    assert h.offset["files"][0]["position"] == len(b"one\r\ntwo\r\nthree\n")
    h.stop()


# -- rotation order ------------------------------------------------------------


def test_rotation_order_of_names() -> None:
    names = ["app.log", "app.log.1", "app.log.10", "app.log.2", "app.log.5"]
    assert sorted(names, key=lambda n: rotation_order(n)[1]) == [
        "app.log.10", "app.log.5", "app.log.2", "app.log.1", "app.log"]
    assert {rotation_order(n)[0] for n in names} == {"app.log"}
    dated = ["app.log", "app.log-20240502", "app.log-20240501", "app.log.2024-04-30_23"]
    assert sorted(dated, key=lambda n: rotation_order(n)[1]) == [
        "app.log.2024-04-30_23", "app.log-20240501", "app.log-20240502", "app.log"]
    assert rotation_order("in/b.log.3") == ("in/b.log", (1, -3, ""))


class RotatingWriter:
    """Writes numbered lines to ``app.log`` and rotates like logrotate (rename ``.N`` -> ``.N+1``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.n = 0

    def write(self, lines: int) -> None:
        with open(self.dir / "app.log", "a") as f:
            for _ in range(lines):
                f.write(f"{self.n}\n")
                self.n += 1

    def rotate(self) -> None:
        rotated = sorted((int(p.name.rsplit(".", 1)[1]) for p in self.dir.glob("app.log.*")), reverse=True)
        for k in rotated:
            os.rename(self.dir / f"app.log.{k}", self.dir / f"app.log.{k + 1}")
        os.rename(self.dir / "app.log", self.dir / "app.log.1")


def rotating_harness(tmp: Path, offset: Any = None) -> Harness:
    h = Harness.__new__(Harness)
    h.source = FileSource(FileSourceConfig(path=str(tmp / "app.log*"), rescan_ms=0), ConnectorContext(name="tail"))
    h.offset = offset
    asyncio.run(h.source.start(offset))
    return h


def test_rotations_while_stopped_come_out_in_the_writers_order(tmp_path: Path) -> None:
    writer = RotatingWriter(tmp_path)
    writer.write(30)
    h = rotating_harness(tmp_path)
    assert h.drain() == [str(i) for i in range(30)]
    writer.write(7)  # not read before the stop: app.log's tail, rotated away below
    h.stop()
    for _ in range(6):  # app.log.6 ... app.log.1, app.log: names sort the wrong way round
        writer.rotate()
        writer.write(25)
    h = rotating_harness(tmp_path, h.offset)
    assert h.drain() == [str(i) for i in range(30, writer.n)]
    h.stop()


def test_rotated_files_found_at_first_start_are_read_oldest_first_even_with_equal_mtimes(tmp_path: Path) -> None:
    writer = RotatingWriter(tmp_path)
    for _ in range(11):  # app.log.10 sorts between app.log.1 and app.log.2 by name
        writer.write(3)
        writer.rotate()
    writer.write(3)
    same = time.time() - 60
    for path in tmp_path.iterdir():
        os.utime(path, (same, same))  # a coarse clock: the rotation suffix decides
    h = rotating_harness(tmp_path)
    assert h.drain() == [str(i) for i in range(writer.n)]
    h.stop()


def test_dead_letter_origin_names_file_inode_position_and_line(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    write(log, "one\ntwo\nthree\n")
    h = Harness(tmp_path)
    batch = asyncio.run(h.source.poll())
    assert batch is not None
    third = batch.records[2]
    assert h.source.origin_of(third) == {"path": str(log), "inode": os.stat(log).st_ino,
                                         "position": len("one\ntwo\n"), "line": 3}
    assert h.source.origin_of(Record("elsewhere")) is None
    assert batch.offset["files"][0]["line"] == 3
    h.stop()
    write(log, "four\n")
    h = Harness(tmp_path, batch.offset)
    batch = asyncio.run(h.source.poll())
    assert batch is not None and h.source.origin_of(batch.records[0]) == {
        "path": str(log), "inode": os.stat(log).st_ino, "position": len("one\ntwo\nthree\n"), "line": 4}
    h.stop()


# -- paths that cannot be meant ------------------------------------------------


def test_glob_of_a_missing_directory_a_directory_or_a_fifo_is_refused(tmp_path: Path) -> None:
    def start(pattern: str) -> None:
        source = FileSource(FileSourceConfig(path=pattern), ConnectorContext(name="tail"))
        asyncio.run(source.start(None))

    with pytest.raises(ConfigError, match=r"file source 'tail': path '.*/nowhere/\*\.log': directory '.*/nowhere' "
                                          r"does not exist"):
        start(str(tmp_path / "nowhere" / "*.log"))
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match=r"matches no regular file \(.*/in is a directory\); did you mean '.*/in/\*'"):
        start(str(tmp_path / "in"))
    os.mkfifo(tmp_path / "in" / "pipe.log")
    with pytest.raises(ConfigError, match=r"matches no regular file \(.*/pipe.log is a FIFO\)"):
        start(str(tmp_path / "in" / "*.log"))


def test_glob_that_matches_nothing_yet_warns_once_and_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    os.mkfifo(tmp_path / "pipe.log")
    write(tmp_path / "a.log", "x\n")
    h = Harness(tmp_path)  # a FIFO beside a regular file is skipped with a warning, the file read
    assert h.drain() == ["x"]
    assert sum("pipe.log" in r.message and "is a FIFO; skipped" in r.message for r in caplog.records) == 1
    h.stop()
    caplog.clear()
    empty = tmp_path / "empty"
    empty.mkdir()
    h = Harness(empty)
    assert h.drain() == []
    warnings = [r.message for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"file source 'tail': no file matches {str(empty / '*.log')!r} yet; waiting for one to appear"]
    write(empty / "late.log", "late\n")
    assert h.drain() == ["late"]
    h.stop()
