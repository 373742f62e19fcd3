"""LineRecords: blocks of lines that read as JsonRecords columns, and encode as the same batch."""

from __future__ import annotations

import random

import pytest

from millpond.log import batch as batch_format
from millpond.log import codec
from millpond.records import JsonRecords, LineRecords
from tests.ci import need_speedup


def random_lines(rng: random.Random) -> LineRecords:
    out = LineRecords("t")
    for _ in range(rng.randrange(1, 6)):
        lines = [bytes(rng.choice(b"ab \xc3\xa9\r") for _ in range(rng.randrange(0, 40)))
                 for _ in range(rng.randrange(1, 30))]
        key = None if rng.random() < 0.5 else b"k%d" % rng.randrange(3)
        out.extend(LineRecords.of("t", b"".join(v + b"\n" for v in lines), len(lines), key,
                                  1_700_000_000_000 + rng.randrange(10_000)))
    return out


def columns(records: JsonRecords) -> tuple[list[bytes | None], list[bytes | None], list[int]]:
    return list(records.keys), list(records.values), list(records.timestamps)


def test_columns_slices_and_batches_match_plain_columns() -> None:
    rng = random.Random(18)
    for _ in range(200):
        lines = random_lines(rng)
        keys, values, timestamps = columns(lines)
        plain = JsonRecords("t", keys, values, timestamps)
        assert len(lines) == len(values)
        assert lines.value_bytes == plain.value_bytes
        assert [(r.key, r.value, r.timestamp) for r in lines] == [(r.key, r.value, r.timestamp) for r in plain]
        a = rng.randrange(0, len(values) + 1)
        b = rng.randrange(a, len(values) + 1)
        assert columns(lines[a:b]) == columns(plain[a:b])
        assert len(lines[a:b]) == b - a and lines[a:b].value_bytes == plain[a:b].value_bytes
        if b > a:
            assert batch_format.build_batch(lines[a:b]) == batch_format.build_batch(plain[a:b])
            codec = batch_format.CODECS[rng.choice(["none", "lz4", "zstd"])]  # gzip stamps the time
            kwargs = {"compression": codec, "producer_id": 7, "producer_epoch": 1, "transactional": True}
            assert batch_format.build_batch(lines[a:b], **kwargs) == batch_format.build_batch(plain[a:b], **kwargs)


def test_append_and_what_it_refuses() -> None:
    lines = LineRecords("t")
    lines.append(None, b"one", 5)
    lines.append(b"k", b"", 6)
    assert columns(lines) == ([None, b"k"], [b"one", b""], [5, 6])
    for bad in (None, b"a\nb"):
        with pytest.raises(ValueError):
            lines.append(None, bad, 7)
    with pytest.raises(TypeError):
        lines.extend(JsonRecords("t", [None], [b"x"], [1]))


def test_build_lines_refuses_a_miscounted_block() -> None:
    columns_c = batch_format._columns
    need_speedup(columns_c is not None, "millpond.log._columns")
    assert columns_c is not None
    for block, count in ((b"a\nb\n", 3), (b"a\nb\n", 1), (b"a\nb", 2)):
        with pytest.raises(ValueError):
            columns_c.build_lines([block], [count], [None], [1], -1, -1, 0)


def test_line_end_in_c_and_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = [(b"", 0), (b"", 1), (b"a\nbb\nc", 0), (b"a\nbb\nc", 1), (b"a\nbb\nc", 2), (b"a\nbb\nc", 3),
             (b"a\nbb\nc", 9), (b"\n\n", 2), (b"\n\n", 3)]
    want = [0, 1, 0, 2, 5, 7, 7, 2, 3]
    assert [batch_format.line_end(b, n) for b, n in cases] == want
    monkeypatch.setattr(codec, "columns", None)
    assert [batch_format.line_end(b, n) for b, n in cases] == want
