"""The audit hash chain: its header, its canonical form of records, and its state per partition.

A topic with ``audit.chain: sha256`` chains its records per partition. The chain is
defined over *records*, not offsets or batches, so a copy of the topic (to Kafka, or
re-batched) verifies the same way:

- a *block* is the records between two records carrying a chain header (the
  second one included). The embedded log appends one block per producer flush
  chunk; records left without a header (a torn two-batch append after a crash)
  join the next block;
- the block's last record carries the header ``millpond.chain``::

      offset  size  field
      0       1     version (1)
      1       32    prev    the block hash before this block (32 zero bytes at the chain's start)
      33      32    hash    sha256(prev || canonical(records of the block))
      65      8     seq     u64 big-endian: records in the chain through this block

- ``canonical`` (version 1) encodes the records column by column, with every
  length before the bytes it measures, so that no two lists of records share
  one encoding (all integers little-endian)::

      u32 n
      i64[n] timestamps
      i32[n] key lengths      (-1: null key)
      i32[n] value lengths    (-1: null value)
      i32[n] header-section lengths
      keys, values, header sections, each concatenated in record order

  A record's header section is, per header except ``millpond.chain``:
  ``u32 len(name) name i32 len(value) value`` (-1 and no bytes for a null value).

Building the columns costs a few list passes in C (``map``, ``array``) and one
sha256 per block: no Python loop per record except over headers, which audit
events rarely have.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import cramjam
from aiokafka import codec

from .. import speedups
from ..errors import MillpondError
from ..log import batch as batch_format

try:
    speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python canonical form and Record objects, on purpose
    from . import _canon
except ImportError:  # built by setup.py; optional, see tests/test_speedups.py
    _canon = None  # type: ignore[assignment]

#: sha256 in ``_canon`` (the CPU's SHA instructions), else hashlib's
_SHA256_IN_C = _canon is not None and _canon.sha256_in_c()

CHAIN_HEADER = "millpond.chain"
VERSION = 1
GENESIS = bytes(32)
_LINK = struct.Struct(">B32s32sQ")
LINK_SIZE = _LINK.size  # 73
_N = struct.Struct("<I")
_NAME = struct.Struct("<I")
_VALUE = struct.Struct("<i")
_MINUS_ONE = struct.pack("<i", -1)


class ChainFormatError(MillpondError):
    """A ``millpond.chain`` header that cannot be read (wrong size or version)."""


class Link(NamedTuple):
    """What one block's header says: the chain before it, its hash, and the records through it."""

    prev: bytes
    hash: bytes
    seq: int

    def encode(self) -> bytes:
        return _LINK.pack(VERSION, self.prev, self.hash, self.seq)

    @classmethod
    def decode(cls, raw: bytes | None) -> Link:
        if raw is None or len(raw) != LINK_SIZE:
            raise ChainFormatError(f"{CHAIN_HEADER} header is {0 if raw is None else len(raw)} bytes, not {LINK_SIZE}")
        version, prev, digest, seq = _LINK.unpack(raw)
        if version != VERSION:
            raise ChainFormatError(f"{CHAIN_HEADER} header has version {version}; this millpond reads {VERSION}")
        return cls(prev, digest, seq)


def link_of(headers: Sequence[tuple[str, bytes | None]]) -> bytes | None:
    """The raw chain header among a record's headers (the last one, if several), or None."""
    found = None
    for name, value in headers:
        if name == CHAIN_HEADER:
            found = value if value is not None else b""
    return found


_PACKERS: dict[tuple[str, int], struct.Struct] = {}


def _ints(code: str, values: Any, n: int) -> bytes:
    """``n`` integers little-endian (``struct`` over the whole column: one C call)."""
    packer = _PACKERS.get((code, n))
    if packer is None:
        if len(_PACKERS) > 256:
            _PACKERS.clear()
        packer = _PACKERS[(code, n)] = struct.Struct(f"<{n}{code}")
    return packer.pack(*values)


def _lengths(column: Sequence[bytes | None]) -> tuple[bytes, Sequence[bytes | None]]:
    """i32 lengths (-1 for None) and the non-null items, in order."""
    n = len(column)
    if not n:
        return b"", ()
    if column[0] is None and column.count(None) == n:
        return _MINUS_ONE * n, ()
    if None in column:
        return (_ints("i", [-1 if item is None else len(item) for item in column], n),
                [c for c in column if c is not None])
    return _ints("i", map(len, column), n), column  # type: ignore[arg-type]  # no None in it


def _header_section(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        if name == CHAIN_HEADER:
            continue
        encoded = name.encode()
        parts.append(_NAME.pack(len(encoded)))
        parts.append(encoded)
        if value is None:
            parts.append(_VALUE.pack(-1))
        else:
            parts.append(_VALUE.pack(len(value)))
            parts.append(value)
    return b"".join(parts)


@dataclass(slots=True)
class Columns:
    """Records of a block as columns: what ``canonical`` hashes. ``headers`` None: no record has any."""

    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    headers: list[Sequence[tuple[str, bytes | None]]] | None = None

    def __len__(self) -> int:
        return len(self.timestamps)

    def extend(self, other: Columns) -> None:
        n = len(self.timestamps)
        self.timestamps.extend(other.timestamps)
        self.keys.extend(other.keys)
        self.values.extend(other.values)
        if other.headers is not None or self.headers is not None:
            empty: Sequence[tuple[str, bytes | None]] = ()
            mine = self.headers if self.headers is not None else [empty] * n
            mine.extend(other.headers if other.headers is not None else [empty] * len(other.timestamps))
            self.headers = mine

    def clear(self) -> None:
        self.timestamps, self.keys, self.values, self.headers = [], [], [], None


def canonical(block: Columns) -> list[bytes]:
    """The canonical form of a block's records, in parts (see the module docstring): what the
    hash covers after ``prev``. Built in one C call where ``_canon`` is (a few list passes and
    joins in Python cost about what the sha256 does), else a column at a time; the caller hashes
    it (maybe elsewhere)."""
    if _canon is not None:
        try:
            return [_canon.canonical_from_columns(block.timestamps, block.keys, block.values, block.headers)]
        except TypeError:  # an item that is not bytes (a bytearray, a memoryview): the general path below
            pass
    return python_canonical(block)


def python_canonical(block: Columns) -> list[bytes]:
    """:func:`canonical` without the C speedup: the reference the C form is tested against."""
    n = len(block.timestamps)
    key_lengths, keys = _lengths(block.keys)
    value_lengths, values = _lengths(block.values)
    sections: list[bytes] = []
    if block.headers is not None and any(block.headers):
        sections = [_header_section(h) if h else b"" for h in block.headers]
        section_lengths = _ints("i", map(len, sections), n)
    else:
        section_lengths = bytes(4 * n)
    parts = [_N.pack(n), _ints("q", block.timestamps, n), key_lengths, value_lengths, section_lengths,
             b"".join(keys), b"".join(values)]  # type: ignore[arg-type]  # None was left out
    if sections:
        parts.append(b"".join(sections))
    return parts


def digest(prev: bytes, parts: Sequence[bytes | memoryview]) -> bytes:
    """sha256(prev || parts): C only (hashlib lets go of the GIL for large parts), so it can run
    in another thread while the caller builds the batch."""
    h = hashlib.sha256(prev)
    for part in parts:
        h.update(part)
    return h.digest()


def block_hash(prev: bytes, block: Columns) -> bytes:
    """sha256(prev || canonical(block)). In C where the CPU has the SHA instructions: the canonical
    form is hashed as it is cut, without the GIL (what lets an append hash in a thread beside the
    batch's compression, see embedded.py); else built whole and hashed by hashlib."""
    if _SHA256_IN_C:
        try:
            return _canon.digest_columns(prev, block.timestamps, block.keys, block.values, block.headers)
        except TypeError:  # an item that is not bytes: the general path below
            pass
    return digest(prev, canonical(block))


def block_hash_then(prev: bytes, block: Columns, last: tuple[int, bytes | None, bytes | None]) -> bytes:
    """:func:`block_hash` of ``block``'s records (no headers) followed by one more, ``last``
    (timestamp, key, value): what an append hashes while the block's last record is off its lists."""
    assert block.headers is None, "the last record is given as columns: none has headers"
    if _SHA256_IN_C:
        try:
            return _canon.digest_columns(prev, block.timestamps, block.keys, block.values, None, last)
        except TypeError:
            pass
    return block_hash(prev, Columns([*block.timestamps, last[0]], [*block.keys, last[1]], [*block.values, last[2]]))


@dataclass(slots=True)
class ChainState:
    """Where a partition's chain stands: the last block's hash and seq, and records appended
    after it without a header (they open the next block)."""

    prev: bytes = GENESIS
    seq: int = 0
    pending: Columns = field(default_factory=Columns)

    def whole(self, block: Columns) -> Columns:
        """``block`` after the pending records (the block the next header closes)."""
        if not self.pending:
            return block
        whole = Columns(list(self.pending.timestamps), list(self.pending.keys), list(self.pending.values),
                        None if self.pending.headers is None else list(self.pending.headers))
        whole.extend(block)
        return whole

    def extend(self, block: Columns) -> Link:
        """The link of ``block`` (after any pending records); does not change the state."""
        whole = self.whole(block)
        return Link(self.prev, block_hash(self.prev, whole), self.seq + len(whole))

    def advance(self, link: Link) -> None:
        self.prev, self.seq = link.hash, link.seq
        self.pending.clear()


# -- for a backend whose producer sends Record objects (the Kafka backend) --


def seal_block(state: ChainState, records: Sequence[Any], now: int) -> tuple[list[Any], Link]:
    """``records`` (objects with key, value, timestamp, headers) as one block: the same records with
    a timestamp where they had none (``now``) and the chain header on the last one, new objects
    where something changed (the caller's are left alone). The state is not advanced: call
    ``state.advance(link)`` once the broker has the block, in order (an idempotent producer, so
    that retries neither reorder nor duplicate it)."""
    from dataclasses import replace

    if not records:
        raise ValueError("a block has at least one record")
    out = [r if r.timestamp is not None else replace(r, timestamp=now) for r in records]
    headers = [r.headers for r in out]
    block = Columns([r.timestamp for r in out], [r.key for r in out], [r.value for r in out],
                    headers if any(headers) else None)
    link = state.extend(block)
    last = out[-1]
    out[-1] = replace(last, headers=[*(h for h in last.headers if h[0] != CHAIN_HEADER), (CHAIN_HEADER, link.encode())])
    return out, link


def state_after(records: Sequence[Any]) -> ChainState | None:
    """The chain state after ``records`` (a partition's tail, oldest first, read_uncommitted): the last
    chain header and the records after it, which open the next block. None when no record among
    them carries a header (read further back, or the chain starts here)."""
    for i in range(len(records) - 1, -1, -1):
        raw = link_of(records[i].headers) if records[i].headers else None
        if raw is not None:
            link = Link.decode(raw)
            tail = records[i + 1 :]
            pending = Columns([r.timestamp for r in tail], [r.key for r in tail], [r.value for r in tail],
                              [r.headers for r in tail] if any(r.headers for r in tail) else None)
            return ChainState(link.hash, link.seq, pending)
    return None


# -- pieces: the canonical form cut straight from a batch's records section (verify, in C) --

def canonical_in_c() -> bool:
    """Is the C speedup there (built, not switched off)? Without it verify decodes Record objects."""
    return _canon is not None


class Piece(NamedTuple):
    """Records of one batch up to and including one that carries the chain header (or to the batch's
    end): their canonical form, what ``_canon.canonical_from_records`` returns per piece.

    A block is one piece when each batch ends with its header (the embedded log's appends); a block
    torn across batches is several, joined column by column by :func:`block_parts`."""

    canonical: bytes
    n: int
    keys_size: int
    values_size: int
    #: the raw chain header of the piece's last record; None: the piece ends without one
    link: bytes | None
    first_offset_delta: int
    last_offset_delta: int


#: aiokafka's decoders, but zstd (the audit topics' codec) straight from cramjam: aiokafka copies
#: cramjam's buffer into bytes, which the C canonical form has no need of
_DECODERS: dict[int, Callable[[Any], Any]] = {
    batch_format.CODECS["gzip"]: codec.gzip_decode,
    batch_format.CODECS["snappy"]: codec.snappy_decode,
    batch_format.CODECS["lz4"]: codec.lz4_decode,
    batch_format.CODECS["zstd"]: cramjam.zstd.decompress,
}


def pieces_of(batch: bytes, header: batch_format.BatchHeader) -> list[Piece]:
    """The pieces of one (CRC-checked, not control) batch: its records section decompressed and cut
    in C, every record's timestamp as Kafka reads it (the batch's max_timestamp for LogAppendTime).
    Needs the C speedup (check ``_canon``); malformed records raise ValueError naming the record."""
    assert _canon is not None, "millpond.audit._canon is not built"
    records: Any = memoryview(batch)[batch_format.HEADER_SIZE : header.size]
    compression = header.attributes & batch_format.COMPRESSION_MASK
    if compression:
        decode = _DECODERS.get(compression)
        if decode is None:
            raise ValueError(f"unknown compression codec {compression}")
        try:
            records = decode(records)
        except Exception as exc:  # each codec's own error (cramjam's, zlib's, ...): the bytes are damaged
            raise ValueError(f"records do not decompress ({exc})") from exc
    append_time = bool(header.attributes & batch_format.TIMESTAMP_TYPE_MASK)
    base = header.max_timestamp if append_time else header.first_timestamp
    return [Piece._make(p) for p in _canon.canonical_from_records(records, header.records_count, base, append_time)]


def _columns_at(piece: Piece) -> list[int]:
    """Where each column of a piece's canonical form starts (timestamps, key, value and section
    lengths, keys, values, sections) and where the last one ends."""
    n = piece.n
    keys = 4 + 20 * n
    values = keys + piece.keys_size
    sections = values + piece.values_size
    return [4, 4 + 8 * n, 4 + 12 * n, 4 + 16 * n, keys, values, sections, len(piece.canonical)]


def block_parts(pieces: Sequence[Piece]) -> list[bytes | memoryview]:
    """The canonical form of the block the pieces make, in parts (what :func:`digest` takes): one
    piece as it is; several column by column, as slices of theirs (no copy)."""
    if len(pieces) == 1:
        return [pieces[0].canonical]
    views = [(memoryview(p.canonical), _columns_at(p)) for p in pieces]
    parts: list[bytes | memoryview] = [_N.pack(sum(p.n for p in pieces))]
    for column in range(7):
        parts.extend(view[at[column] : at[column + 1]] for view, at in views)
    return parts


def drop_front(pieces: Sequence[Piece], cut: int) -> list[Piece]:
    """The pieces without their first ``cut`` records (records from before the chain began, in
    the first block verify meets): the rare path, in Python."""
    out = []
    for piece in pieces:
        if cut >= piece.n:
            cut -= piece.n
            continue
        if cut == 0:
            out.append(piece)
            continue
        c, n, at = piece.canonical, piece.n, _columns_at(piece)
        skipped = [sum(max(length, 0) for length in struct.unpack_from(f"<{cut}i", c, at[column]))
                   for column in (1, 2, 3)]  # key, value and section bytes of the records cut
        column_parts = [c[at[0] + 8 * cut : at[1]]]
        column_parts += [c[at[column] + 4 * cut : at[column + 1]] for column in (1, 2, 3)]
        column_parts += [c[at[column] + skip : at[column + 1]] for column, skip in zip((4, 5, 6), skipped)]
        out.append(piece._replace(canonical=b"".join([_N.pack(n - cut), *column_parts]), n=n - cut,
                                  keys_size=piece.keys_size - skipped[0],
                                  values_size=piece.values_size - skipped[1]))
        cut = 0
    return out
