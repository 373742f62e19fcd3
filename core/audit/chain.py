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
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import MillpondError

CHAIN_HEADER = "millpond.chain"
VERSION = 1
GENESIS = bytes(32)
_LINK = struct.Struct(">B32s32sQ")
LINK_SIZE = _LINK.size  # 73
_N = struct.Struct("<I")
_NAME = struct.Struct("<I")
_VALUE = struct.Struct("<i")
_BIG_ENDIAN = sys.byteorder == "big"


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


def _ints(code: str, values: Any) -> bytes:
    column = array(code, values)
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def _lengths(column: Sequence[bytes | None]) -> tuple[bytes, list[bytes]]:
    """i32 lengths (-1 for None) and the non-null items, in order."""
    n = len(column)
    if n and column.count(None) == n:
        return _ints("i", [-1]) * n, []
    if None in column:
        return _ints("i", [-1 if item is None else len(item) for item in column]), [c for c in column if c is not None]
    return _ints("i", map(len, column)), list(column)  # type: ignore[arg-type]  # no None in it


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


def block_hash(prev: bytes, block: Columns) -> bytes:
    """sha256(prev || canonical(block)); see the module docstring for the canonical form."""
    n = len(block.timestamps)
    digest = hashlib.sha256(prev)
    update = digest.update
    update(_N.pack(n))
    update(_ints("q", block.timestamps))
    key_lengths, keys = _lengths(block.keys)
    value_lengths, values = _lengths(block.values)
    update(key_lengths)
    update(value_lengths)
    sections: list[bytes] = []
    if block.headers is not None and any(block.headers):
        sections = [_header_section(h) if h else b"" for h in block.headers]
        update(_ints("i", map(len, sections)))
    else:
        update(bytes(4 * n))
    update(b"".join(keys))
    update(b"".join(values))
    if sections:
        update(b"".join(sections))
    return digest.digest()


@dataclass(slots=True)
class ChainState:
    """Where a partition's chain stands: the last block's hash and seq, and records appended
    after it without a header (they open the next block)."""

    prev: bytes = GENESIS
    seq: int = 0
    pending: Columns = field(default_factory=Columns)

    def extend(self, block: Columns) -> Link:
        """The link of ``block`` (after any pending records); does not change the state."""
        if self.pending:
            whole = Columns(list(self.pending.timestamps), list(self.pending.keys), list(self.pending.values),
                            None if self.pending.headers is None else list(self.pending.headers))
            whole.extend(block)
            block = whole
        return Link(self.prev, block_hash(self.prev, block), self.seq + len(block))

    def advance(self, link: Link) -> None:
        self.prev, self.seq = link.hash, link.seq
        self.pending.clear()
