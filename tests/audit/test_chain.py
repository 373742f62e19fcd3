"""The chain format on its own: the canonical form's boundaries, and sealing blocks of Record objects
as a Kafka producer would (the embedded log's own path is checked by verify, elsewhere)."""

from __future__ import annotations

import hashlib
import random
import struct
from pathlib import Path
from typing import Any

import pytest

from millpond.audit import chain as chain_module
from millpond.audit.chain import (
    CHAIN_HEADER,
    GENESIS,
    LINK_SIZE,
    ChainFormatError,
    ChainState,
    Columns,
    Link,
    block_hash,
    block_parts,
    canonical,
    canonical_in_c,
    digest,
    drop_front,
    link_of,
    pieces_of,
    seal_block,
    state_after,
)
from millpond.log import batch as batch_format
from millpond.log.batch import Row
from millpond.records import Record
from tests.ci import need_speedup


def test_the_canonical_form_is_the_documented_one() -> None:
    """An independent encoding, record by record, from the module docstring."""
    block = Columns([5, -1], [None, b"k"], [b"v1", None], [[("a", b"x"), ("b", None)], []])
    lengths = lambda col: b"".join(struct.pack("<i", -1 if x is None else len(x)) for x in col)  # noqa: E731
    sections = [struct.pack("<I", 1) + b"a" + struct.pack("<i", 1) + b"x" + struct.pack("<I", 1) + b"b"
                + struct.pack("<i", -1), b""]
    expected = hashlib.sha256(
        GENESIS + struct.pack("<I", 2) + struct.pack("<qq", 5, -1) + lengths([None, b"k"]) + lengths([b"v1", None])
        + struct.pack("<ii", len(sections[0]), 0) + b"k" + b"v1" + sections[0]).digest()
    assert block_hash(GENESIS, block) == expected


def test_moving_a_byte_across_a_boundary_changes_the_hash() -> None:
    one = Columns([1, 1], [b"ab", b"c"], [b"x", b"y"], None)
    two = Columns([1, 1], [b"a", b"bc"], [b"x", b"y"], None)
    three = Columns([1], [b"abc"], [b"xy"], None)
    assert len({block_hash(GENESIS, one), block_hash(GENESIS, two), block_hash(GENESIS, three)}) == 3


def test_a_header_is_read_back_or_refused() -> None:
    link = Link(GENESIS, b"\x07" * 32, 12)
    assert Link.decode(link.encode()) == link
    with pytest.raises(ChainFormatError, match="73"):
        Link.decode(b"\x01" * 10)
    with pytest.raises(ChainFormatError, match="version 9"):
        Link.decode(b"\x09" + link.encode()[1:])


def test_sealed_blocks_chain_and_a_tail_gives_the_state_back() -> None:
    state = ChainState()
    sent: list[Record] = []
    for start, n in ((0, 3), (3, 1), (4, 5)):
        records = [Record(b"v%d" % i, None, None if i == 4 else 100 + i) for i in range(start, start + n)]
        sealed, link = seal_block(state, records, now=7)
        assert records[-1].headers == [] and sealed[-1].headers[-1][0] == CHAIN_HEADER  # the caller's untouched
        state.advance(link)
        sent += sealed
    assert state.seq == 9 and sent[4].timestamp == 7
    after = state_after(sent)
    assert after is not None and (after.prev, after.seq, len(after.pending)) == (state.prev, 9, 0)
    partial = state_after(sent[:6])  # the tail read back ends inside the third block
    assert partial is not None and partial.seq == 4 and len(partial.pending) == 2
    assert state_after(sent[:2]) is None


def test_blocks_sealed_by_a_producer_verify(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """What the Kafka backend's producer is to do, on a plain embedded topic: verify reads it back."""
    import asyncio

    from millpond.audit.verify import verify_through_backend
    from millpond.backends.base import TopicSpec
    from millpond.backends.embedded import EmbeddedBackend

    async def go() -> None:
        backend = EmbeddedBackend(tmp_path)
        await backend.open()
        await backend.create_topic(TopicSpec("t", 1))
        state = ChainState()
        producer = backend.producer()
        for start in range(0, 40, 8):
            sealed, link = seal_block(state, [Record(b"v%d" % i, b"k", 100 + i) for i in range(start, start + 8)], 0)
            await producer.send_batch("t", 0, sealed)
            await producer.flush()
            state.advance(link)
        report = await verify_through_backend(backend, "t")
        await backend.close()
        assert report.ok and report.counts()["records"] == 40 and report.counts()["blocks"] == 5, report.summary()

    asyncio.run(go())


# -- the canonical form in C (``_canon``, what verify hashes) against the Python form above --

_NAMES = ["trace", "", "é-name", "millpond.chainx", "millpond.chai", CHAIN_HEADER]


def _random_rows(rng: random.Random, n: int, *, links: bool = True) -> list[Row]:
    """Records with null and empty keys and values, headers with null values, and the chain header
    (well-formed, odd-sized or null) on some of them, sometimes twice."""
    def blob() -> bytes | None:
        return rng.choice([None, b"", rng.randbytes(rng.randrange(1, 40)), rng.randbytes(rng.randrange(200, 400))])

    rows = []
    for _ in range(n):
        headers: list[tuple[str, bytes | None]] = []
        if rng.random() < 0.4:
            for _ in range(rng.randrange(1, 4)):
                name = rng.choice(_NAMES if links else _NAMES[:-1])
                value = (rng.choice([rng.randbytes(LINK_SIZE), rng.randbytes(5), None])
                         if name == CHAIN_HEADER else blob())
                headers.append((name, value))
        rows.append(Row(blob(), blob(), rng.choice([rng.randrange(-2**40, 2**41), 0, -1]), headers))
    return rows


def _python_blocks(data: bytes) -> list[tuple[bytes, int, bytes | None, int, int]]:
    """(canonical, n, link, first offset, last offset) of each piece, through Record objects."""
    out, block = [], Columns()
    first = -1
    for record in batch_format.iter_records(data):
        if first < 0:
            first = record.offset
        block.extend(Columns([record.timestamp], [record.key], [record.value], [record.headers]))
        raw = link_of(record.headers)
        if raw is not None:
            out.append((b"".join(canonical(block)), len(block), raw, first, record.offset))
            block, first = Columns(), -1
    if len(block):
        out.append((b"".join(canonical(block)), len(block), None, first, record.offset))
    return out


def _batch(rows: list[Row], compression: str = "none", log_append_time: int | None = None) -> tuple[bytes, Any]:
    data = bytes(batch_format.build_batch(rows, compression=batch_format.CODECS[compression],
                                          log_append_time=log_append_time))
    return data, batch_format.read_header(data)


@pytest.mark.parametrize("compression", ["none", "zstd", "gzip", "lz4", "snappy"])
@pytest.mark.parametrize("append_time", [False, True])
def test_c_pieces_are_the_python_canonical_form(compression: str, append_time: bool) -> None:
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    rng = random.Random(f"{compression}{append_time}")
    for _ in range(60):
        rows = _random_rows(rng, rng.randrange(1, 30))
        data, header = _batch(rows, compression, 1_700_000_000_123 if append_time else None)
        pieces = pieces_of(data, header)
        expected = _python_blocks(data)
        got = [(p.canonical, p.n, p.link, p.first_offset_delta, p.last_offset_delta) for p in pieces]
        assert got == expected
        for p in pieces:
            assert p.canonical == b"".join(block_parts([p]))
            at = 4 + 20 * p.n
            assert p.keys_size + p.values_size <= len(p.canonical) - at


def test_pieces_of_a_block_torn_across_batches_join_column_by_column() -> None:
    """A block over several batches (a torn append) hashes as one; and with its first records cut off
    (records from before the chain began) as the Python form of the rest."""
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    rng = random.Random(7)
    for _ in range(100):
        rows = _random_rows(rng, rng.randrange(2, 25), links=False)
        cuts = sorted(rng.sample(range(1, len(rows)), rng.randrange(0, min(4, len(rows) - 1) + 1)))
        pieces, records = [], []
        for lo, hi in zip([0, *cuts], [*cuts, len(rows)]):
            data, header = _batch(rows[lo:hi], rng.choice(["none", "zstd"]))
            pieces += pieces_of(data, header)
            records += batch_format.iter_records(data)  # the timestamps as Kafka reads them back
        assert all(p.link is None for p in pieces)
        whole = Columns([r.timestamp for r in records], [r.key for r in records], [r.value for r in records],
                        [r.headers for r in records])
        assert b"".join(block_parts(pieces)) == b"".join(canonical(whole))
        assert digest(GENESIS, block_parts(pieces)) == block_hash(GENESIS, whole)
        k = rng.randrange(0, len(rows))
        rest = Columns(whole.timestamps[k:], whole.keys[k:], whole.values[k:], whole.headers[k:])  # type: ignore[index]
        assert b"".join(block_parts(drop_front(pieces, k))) == b"".join(canonical(rest))


def test_malformed_records_are_refused_naming_the_record() -> None:
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    assert chain_module._canon is not None
    data, header = _batch([Row(b"k", b"value", 5, [("h", b"x")]), Row(None, b"v2", 6, [])])
    records = data[batch_format.HEADER_SIZE :]
    canon = chain_module._canon.canonical_from_records
    assert canon(records, 2, 0, False)[0][1] == 2
    with pytest.raises(ValueError, match="record 1 of 2"):
        canon(records[:-2], 2, 0, False)
    with pytest.raises(ValueError, match="after its 1 records"):
        canon(records, 1, 0, False)
    with pytest.raises(ValueError, match="record 2 of 3"):
        canon(records, 3, 0, False)
    with pytest.raises(ValueError, match="records in"):
        canon(records, -1, 0, False)
    assert canon(b"", 0, 0, False) == []


def test_c_canonical_from_columns_is_the_python_form() -> None:
    """The append side: a block held as columns, in C, gives the Python form's bytes."""
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    assert chain_module._canon is not None
    rng = random.Random(11)
    for _ in range(300):
        rows = _random_rows(rng, rng.randrange(0, 30))
        headers: list[Any] | None = [list(r.headers) for r in rows]
        if rng.random() < 0.3:
            headers = None
        elif rng.random() < 0.3:
            headers = [()] * len(rows)
        block = Columns([r.timestamp for r in rows], [r.key for r in rows], [r.value for r in rows], headers)
        expected = b"".join(chain_module.python_canonical(block))
        assert chain_module._canon.canonical_from_columns(block.timestamps, block.keys, block.values,
                                                          block.headers) == expected
        assert b"".join(canonical(block)) == expected


def test_columns_the_c_form_does_not_take_fall_back_to_python() -> None:
    """Not bytes (a bytearray, a memoryview): TypeError in C, the same bytes through Python; a timestamp
    beyond 64 bits fails in both."""
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    assert chain_module._canon is not None
    canon = chain_module._canon.canonical_from_columns
    odd = Columns([1, 2], [bytearray(b"k"), None], [b"v", memoryview(b"w")],  # type: ignore[list-item]
                  [[("h", bytearray(b"x"))], []])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"keys\[0\]"):
        canon(odd.timestamps, odd.keys, odd.values, None)
    plain = Columns([1, 2], [b"k", None], [b"v", b"w"], [[("h", b"x")], []])
    assert b"".join(canonical(odd)) == b"".join(canonical(plain))
    with pytest.raises(TypeError, match=r"headers\[0\]\[0\]"):
        canon([1], [None], [None], [[("h",)]])
    with pytest.raises(ValueError, match="differ in length"):
        canon([1], [None, None], [None], None)
    with pytest.raises(struct.error):
        canonical(Columns([2**63], [None], [None], None))


def _need_sha256_in_c() -> Any:
    need_speedup(canonical_in_c(), "millpond.audit._canon")
    assert chain_module._canon is not None
    if not chain_module._canon.sha256_in_c():  # hardware, not the build: block_hash keeps to hashlib
        with pytest.raises(RuntimeError, match="SHA instructions"):
            chain_module._canon.digest_columns(GENESIS, [], [], [], None)
        pytest.skip("this CPU has no SHA instructions: the append path hashes with hashlib")
    return chain_module._canon


def test_c_sha256_is_hashlibs_at_every_length_around_its_blocks_and_buffer() -> None:
    """The C sha256 alone: ``prev`` of any length, an empty block after it (its canonical form is
    u32 0), against hashlib: lengths around the 64-byte block, the 55/56 bytes where the padding
    needs a second block, and the 16 KiB buffer."""
    canon = _need_sha256_in_c()
    rng = random.Random(7)
    lengths = [*range(0, 200), *range(16_300, 16_450), 65_536 - 4, 65_536, 1 << 20, 3_000_001]
    for length in lengths:
        data = rng.randbytes(length)
        assert canon.digest_columns(data, [], [], [], None) == hashlib.sha256(data + bytes(4)).digest(), length


def test_c_digest_of_columns_is_hashlib_over_the_python_form() -> None:
    """What an append hashes, in C without the canonical form as one object, is sha256(prev ||
    python_canonical(block)) by hashlib: random blocks with null keys and values, headers (chain
    headers among them, left out), values across the buffer's edge; block_hash gives the same."""
    canon = _need_sha256_in_c()
    rng = random.Random(12)
    for trial in range(400):
        rows = _random_rows(rng, rng.randrange(0, 40))
        headers: list[Any] | None = [list(r.headers) for r in rows] if rng.random() < 0.3 else None
        values = [None if r.value is None else r.value * rng.choice([1, 1, 40, 300]) for r in rows]
        block = Columns([r.timestamp for r in rows], [r.key for r in rows], values, headers)
        prev = rng.randbytes(32)
        expected = hashlib.sha256(prev + b"".join(chain_module.python_canonical(block))).digest()
        assert canon.digest_columns(prev, block.timestamps, block.keys, block.values, block.headers) == expected, trial
        assert block_hash(prev, block) == expected


def test_c_digest_refuses_what_the_c_canonical_form_refuses() -> None:
    """Not bytes, a timestamp beyond 64 bits, columns of different lengths: the same errors as
    canonical_from_columns, so block_hash falls back (or fails) as canonical() does."""
    canon = _need_sha256_in_c()
    with pytest.raises(TypeError, match=r"values\[1\]"):
        canon.digest_columns(GENESIS, [1, 2], [None, None], [b"v", memoryview(b"w")], None)
    with pytest.raises(TypeError, match=r"timestamps\[0\]"):
        canon.digest_columns(GENESIS, [2**63], [None], [None], None)
    with pytest.raises(ValueError, match="differ in length"):
        canon.digest_columns(GENESIS, [1], [None, None], [None], None)
    odd = Columns([1, 2], [bytearray(b"k"), None], [b"v", memoryview(b"w")], None)  # type: ignore[list-item]
    plain = Columns([1, 2], [b"k", None], [b"v", b"w"], None)
    assert block_hash(GENESIS, odd) == block_hash(GENESIS, plain) == digest(GENESIS, chain_module.python_canonical(plain))


def test_records_that_do_not_parse_under_a_recomputed_crc_are_a_damaged_batch(
        tmp_path: Path, keys: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A batch claiming one record more than it holds, its CRC recomputed: verify names the batch
    (offset, segment file, byte position) as damaged and exits 3 (it crashed with a traceback before)."""
    from millpond.audit.verify import DAMAGED

    from .conftest import TOPIC, batches_of, recompute_crc, segment_files, verify, write_log, write_segment

    write_log(tmp_path / "log", keys, [7, 5, 9, 4], every_records=20)
    first = segment_files(tmp_path / "log")[0]
    batches = batches_of(first)
    header = batch_format.read_header(batches[1])
    struct.pack_into(">i", batches[1], 57, header.records_count + 1)
    recompute_crc(batches[1])
    write_segment(first, batches)
    position = len(batches[0])
    code, out = verify(capsys, tmp_path / "log", keys)
    line = out.strip().splitlines()[-1]
    assert code == 3, out
    assert f"{TOPIC}-0: {DAMAGED} at offset {header.base_offset} ({first}, byte {position}): malformed record batch: " \
        in line, line
    if canonical_in_c():  # the C cut names the record; aiokafka's decoder, a byte position in the records
        assert f"record {header.records_count} of {header.records_count + 1}" in line, line
