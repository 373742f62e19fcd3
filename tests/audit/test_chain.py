"""The chain format on its own: the canonical form's boundaries, and sealing blocks of Record objects
as a Kafka producer would (the embedded log's own path is checked by verify, elsewhere)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from millpond.audit.chain import (
    CHAIN_HEADER,
    GENESIS,
    ChainFormatError,
    ChainState,
    Columns,
    Link,
    block_hash,
    seal_block,
    state_after,
)
from millpond.records import Record


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
