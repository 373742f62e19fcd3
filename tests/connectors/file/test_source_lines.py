"""File source, lines as columns (LineRecords): the same bytes and checkpoints as records give.

When the runtime says the log takes string-converter bytes as they are
(``ConnectorContext.encoded_as == "string"``), the source hands over blocks of
lines as LineRecords. The model is the record path of the same source on the
same file: each record's value, encoded as the string converter does.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSource, FileSourceConfig
from millpond.records import JsonLines, LineRecords


def drain(tmp: Path, lines_mode: bool, **cfg: Any) -> tuple[list[tuple[bytes | None, bytes]], Any, int]:
    """(key, value bytes) of every line, the last checkpoint, and the number of polls."""
    context = ConnectorContext(name="tail", extra={"topic": "lines"}, encoded_as="string" if lines_mode else None)
    source = FileSource(FileSourceConfig(path=str(tmp / "*.log"), rescan_ms=0, **cfg), context)

    async def run() -> tuple[list[tuple[bytes | None, bytes]], Any, int]:
        await source.start(None)
        out: list[tuple[bytes | None, bytes]] = []
        offset = None
        polls = empty = 0
        while empty < 3:
            batch = await source.poll()
            if batch is None:
                empty += 1
                continue
            polls += 1
            offset = batch.offset
            if lines_mode:
                assert not batch.records
                for encoded in batch.encoded:
                    assert isinstance(encoded, LineRecords) and encoded.topic == "lines"
                    assert len(set(encoded.timestamps)) == 1
                    assert encoded.value_bytes == sum(len(v) for v in encoded.values if v is not None)
                    out += [(k, v) for k, v in zip(encoded.keys, encoded.values)]  # type: ignore[misc]
            else:
                assert not batch.encoded
                out += [(None if r.key is None else r.key.encode(), r.value.encode()) for r in batch.records]
        await source.stop()
        return out, offset, polls

    return asyncio.run(run())


CONTENTS = {
    "ascii": b"".join(b"line %d\n" % i for i in range(5000)),
    "utf8": "".join(f"ligne {i} \u00e9\u00e8 \u4e2d\n" for i in range(3000)).encode(),
    "invalid utf8": b"".join(b"bad \xff\xfe %d \xc3\n" % i for i in range(2000)),
    "crlf": b"".join(b"dos %d\r\n" % i for i in range(3000)) + b"lone \r in the middle\n",
    "empty lines": b"\n\n\nx\n\n",
    "partial last line": b"one\ntwo\nthree without newline",
    "long lines": b"".join(b"%d" % i + b"y" * 3000 + b"\n" for i in range(50)),
}


@pytest.mark.parametrize("name", sorted(CONTENTS))
@pytest.mark.parametrize("settings", [
    {},
    {"max_batch_lines": 7},  # blocks cut by the budget: the position must still be exact
    {"read_bytes": 1000, "max_line_bytes": 2000},  # lines longer than a read, then split in parts
    {"strip_cr": False, "key": "path"},
])
def test_same_lines_and_checkpoints_as_records(tmp_path: Path, name: str, settings: dict[str, Any]) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(CONTENTS[name])
    old = time.time() - 60  # the partial last line is due
    os.utime(path, (old, old))
    settings = {"partial_line_ms": 0, **settings}
    want, want_offset, _ = drain(tmp_path, False, **settings)
    got, got_offset, _ = drain(tmp_path, True, **settings)
    assert got == want
    assert got_offset == want_offset
    assert want_offset["files"][0]["position"] == len(CONTENTS[name])


def test_json_format_stays_records(tmp_path: Path) -> None:
    (tmp_path / "app.log").write_text('{"a": 1}\n')
    context = ConnectorContext(name="tail", extra={"topic": "lines"}, encoded_as="string")
    source = FileSource(FileSourceConfig(path=str(tmp_path / "*.log"), format="json"), context)

    async def run() -> None:
        await source.start(None)
        batch = await source.poll()
        await source.stop()
        assert batch is not None and not batch.encoded
        assert [r.value for r in batch.records] == [{"a": 1}]

    asyncio.run(run())


def test_a_block_is_one_poll_not_one_object_per_line(tmp_path: Path) -> None:
    """The point of the path: 20,000 lines arrive in a few LineRecords, not 20,000 records."""
    (tmp_path / "app.log").write_bytes((b"x" * 199 + b"\n") * 20_000)
    context = ConnectorContext(name="tail", extra={"topic": "lines"}, encoded_as="string")
    source = FileSource(FileSourceConfig(path=str(tmp_path / "*.log")), context)

    async def run() -> None:
        await source.start(None)
        batch = await source.poll()
        await source.stop()
        assert batch is not None and not batch.records
        assert sum(len(e) for e in batch.encoded) == 20_000
        assert len(batch.encoded) <= 5  # one per block read (read_bytes, 1 MiB)

    asyncio.run(run())


def drain_json(tmp: Path, lines_mode: bool, **cfg: Any) -> tuple[list[tuple[Any, Any]], Any]:
    """(key, value) of every record of a ``format: json`` source, and the last checkpoint; with
    ``lines_mode`` the source hands over JsonLines, parsed here as the runtime parses them."""
    context = ConnectorContext(name="tail", extra={"topic": "lines"}, encoded_as="json-lines" if lines_mode else None)
    source = FileSource(FileSourceConfig(path=str(tmp / "*.log"), rescan_ms=0, format="json", **cfg), context)

    async def run() -> tuple[list[tuple[Any, Any]], Any]:
        await source.start(None)
        out: list[tuple[Any, Any]] = []
        offset = None
        empty = 0
        while empty < 3:
            batch = await source.poll()
            if batch is None:
                empty += 1
                continue
            offset = batch.offset
            assert not (lines_mode and batch.records) and not (not lines_mode and batch.encoded)
            records = [r for e in batch.encoded for r in e.records()] if lines_mode else batch.records  # type: ignore[attr-defined]
            assert all(isinstance(e, JsonLines) for e in batch.encoded)
            out += [(r.key, r.value) for r in records]
        await source.stop()
        return out, offset

    return asyncio.run(run())


JSON_CONTENTS = {
    "documents": b"".join(b'{"i": %d, "user": "u%d", "s": "\\u00e9\\n"}\n' % (i, i % 3) for i in range(3000)),
    "mixed": b'{"a":1}\nnot json\n\n  {"b": [1, 2]}  \r\n"str"\n{"c":1e400}\n\xff{"d":1}\n{"e":2}',
}


@pytest.mark.parametrize("name", sorted(JSON_CONTENTS))
@pytest.mark.parametrize("settings", [{}, {"max_batch_lines": 7, "key": "path"}, {"strip_cr": False}])
def test_json_lines_parse_to_the_records_the_record_path_gives(tmp_path: Path, name: str,
                                                               settings: dict[str, Any]) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(JSON_CONTENTS[name])
    old = time.time() - 60  # the partial last line is due
    os.utime(path, (old, old))
    settings = {"partial_line_ms": 0, **settings}
    want, want_offset = drain_json(tmp_path, False, **settings)
    got, got_offset = drain_json(tmp_path, True, **settings)
    assert got == want
    assert got_offset == want_offset
    assert len(want) == JSON_CONTENTS[name].count(b"\n") + (not JSON_CONTENTS[name].endswith(b"\n"))
