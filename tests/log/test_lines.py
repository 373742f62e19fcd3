"""batch.lines: the values of stored batches as newline-ended lines, in C and in the fallback."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from millpond.log import batch as batch_format
from millpond.log import codec
from millpond.records import JsonRecords, Record
from tests.ci import need_speedup


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "c":
        need_speedup(batch_format._columns is not None, "millpond.log._columns")
    else:
        monkeypatch.setattr(batch_format, "_columns", None)
        monkeypatch.setattr(codec, "columns", None)
    yield str(request.param)


def stored(rows: list[Record], base_offset: int, **kwargs: object) -> bytes:
    """A batch as the log stores it: built, then given its base offset."""
    buf = batch_format.build_batch(rows, **kwargs)  # type: ignore[arg-type]
    batch_format.set_base_offset(buf, base_offset)
    return bytes(buf)


def model(batches: list[tuple[int, list[Record]]], from_offset: int) -> batch_format.Lines | None:
    """What lines() must return, worked out from the rows themselves (offsets are base + index)."""
    values = [(base + i, r.value) for base, rows in batches for i, r in enumerate(rows) if base + i >= from_offset]
    if any(v is None or b"\n" in v for _, v in values):
        return None
    data = b"".join(v + b"\n" for _, v in values)  # type: ignore[operator]
    first = values[0][0] if values else -1
    last = values[-1][0] if values else -1
    return batch_format.Lines(data, len(values), first, last, data.isascii())


def test_matches_a_model_on_random_batches(implementation: str) -> None:
    rng = random.Random(18)
    for _ in range(50):
        batches = []
        base = rng.randrange(0, 1 << 40)
        for _ in range(rng.randrange(1, 4)):
            rows = [
                Record(
                    bytes(rng.choice(b"ab\xc3\xa9 \r") for _ in range(rng.randrange(0, 300))),
                    None if rng.random() < 0.5 else b"key",
                    1_700_000_000_000 + rng.randrange(-5, 5_000_000),
                    [("h", b"x" * rng.randrange(0, 3))] if rng.random() < 0.3 else [],
                )
                for _ in range(rng.randrange(1, 200))
            ]
            batches.append((base, rows))
            base += len(rows) + rng.randrange(0, 3)  # a gap: a transaction marker
        from_offset = rng.choice([0, batches[0][0], batches[0][0] + rng.randrange(0, len(batches[0][1]) + 1)])
        got = batch_format.lines([stored(rows, b) for b, rows in batches], from_offset)
        assert got == model(batches, from_offset)


def test_columns_built_batches_round_trip(implementation: str) -> None:
    values: list[bytes | None] = [f"line {i}".encode() for i in range(1000)]
    batch = stored(JsonRecords("t", [None] * 1000, values, [5] * 1000), 100)  # type: ignore[arg-type]
    got = batch_format.lines([batch], 600)
    assert got is not None
    assert got.data.splitlines() == values[500:]
    assert (got.records, got.first_offset, got.last_offset, got.ascii) == (500, 600, 1099, True)


@pytest.mark.parametrize("value", [None, b"two\nlines", b"\n"])
def test_a_value_that_is_not_a_line_declines(implementation: str, value: bytes | None) -> None:
    batch = stored([Record(b"fine", None, 1, []), Record(value, None, 2, [])], 0)
    assert batch_format.lines([batch]) is None
    # ... unless it comes before from_offset
    assert batch_format.lines([batch], 1) is None
    assert batch_format.lines([stored([Record(value, None, 2, []), Record(b"fine", None, 1, [])], 0)], 1) == (
        batch_format.Lines(b"fine\n", 1, 1, 1, True)
    )


def test_compressed_batches(implementation: str) -> None:
    batch = stored([Record(b"x" * 100, None, 1, [])], 0, compression=batch_format.CODECS["gzip"])
    got = batch_format.lines([batch])
    if implementation == "c":
        assert got is None  # the caller decodes those records instead
    else:
        assert got == batch_format.Lines(b"x" * 100 + b"\n", 1, 0, 0, True)


def test_nothing_after_from_offset() -> None:
    batch = stored([Record(b"a", None, 1, [])], 0)
    assert batch_format.lines([batch], 5) == batch_format.Lines(b"", 0, -1, -1, True)


def test_a_truncated_batch_is_an_error_not_a_crash() -> None:
    need_speedup(batch_format._columns is not None, "millpond.log._columns")
    batch = stored([Record(b"v" * 50, None, 1, []) for _ in range(10)], 0)
    for cut in (batch_format.HEADER_SIZE - 1, batch_format.HEADER_SIZE + 3, len(batch) - 1):
        with pytest.raises(ValueError, match="malformed record batch"):
            batch_format.lines([batch[:cut]])
