"""Decoder of the ``pgoutput`` logical replication protocol, version 1.

Pure functions from the bytes of one message (one row of
``pg_logical_slot_{peek,get}_binary_changes``) to small frozen values. All
integers are big-endian; a String is NUL-terminated UTF-8::

    B  Begin     Int64 final_lsn, Int64 commit_ts, Int32 xid
    C  Commit    Int8 flags, Int64 commit_lsn, Int64 end_lsn, Int64 commit_ts
    O  Origin    Int64 origin_lsn, String name
    R  Relation  Int32 oid, String namespace, String name, Int8 replica_identity,
                 Int16 ncols, ncols x (Int8 flags [1 = key], String name,
                 Int32 type_oid, Int32 typmod)
    Y  Type      Int32 oid, String namespace, String name
    I  Insert    Int32 rel_oid, 'N', TupleData
    U  Update    Int32 rel_oid, [('K' | 'O'), TupleData], 'N', TupleData
    D  Delete    Int32 rel_oid, ('K' | 'O'), TupleData
    T  Truncate  Int32 nrels, Int8 options [1 = CASCADE, 2 = RESTART IDENTITY],
                 nrels x Int32 rel_oid
    M  Message   Int8 flags, Int64 lsn, String prefix, Int32 len, Byte[len]

    TupleData    Int16 ncols, ncols x ('n' | 'u' | 't' Int32 len Byte[len]
                                        | 'b' Int32 len Byte[len])

Timestamps are microseconds since 2000-01-01 UTC (the PostgreSQL epoch). In a
TupleData, 'n' is SQL NULL, 'u' an unchanged TOASTed value that was not sent
(:data:`UNCHANGED_TOAST`), 't' the value in the type's text output format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, Union

from millpond.errors import ConnectorError

#: Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC).
PG_EPOCH_US: Final = 946_684_800_000_000


class PgOutputError(ConnectorError):
    """A pgoutput message could not be decoded (truncated or of an unknown kind)."""


class _UnchangedToast:
    """The marker for a TOASTed column that an update left unchanged ('u')."""

    _instance: _UnchangedToast | None = None

    def __new__(cls) -> _UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        return "UNCHANGED_TOAST"


UNCHANGED_TOAST: Final = _UnchangedToast()

#: One column of a tuple: None (SQL NULL), UNCHANGED_TOAST, or the text bytes.
Datum = Union[bytes, None, _UnchangedToast]
TupleData = tuple[Datum, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int
    commit_ts: int
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_ts: int


@dataclass(frozen=True, slots=True)
class Origin:
    origin_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def is_key(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    #: relreplident: 'd' default (primary key), 'n' nothing, 'f' full, 'i' index
    replica_identity: str
    columns: tuple[Column, ...]

    @property
    def schema(self) -> str:
        return self.namespace or "pg_catalog"


@dataclass(frozen=True, slots=True)
class Type:
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    #: 'K' (the old key columns), 'O' (the whole old row, REPLICA IDENTITY FULL) or None
    old_kind: str | None
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old_kind: str
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


Message = Union[
    Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, LogicalMessage
]

_Q = struct.Struct(">Q")
_I = struct.Struct(">I")
_H = struct.Struct(">H")
_BEGIN = struct.Struct(">QqI")
_COMMIT = struct.Struct(">BQQq")


def _string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.find(b"\x00", pos)
    if end < 0:
        raise PgOutputError(f"unterminated string at byte {pos}")
    return data[pos:end].decode("utf-8"), end + 1


def _tuple(data: bytes, pos: int) -> tuple[TupleData, int]:
    (ncols,) = _H.unpack_from(data, pos)
    pos += 2
    values: list[Datum] = []
    append = values.append
    for _ in range(ncols):
        kind = data[pos]
        pos += 1
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
            (length,) = _I.unpack_from(data, pos)
            pos += 4
            append(data[pos : pos + length])
            pos += length
            if kind == 0x62:
                raise PgOutputError("binary tuple data ('b') is not requested and not supported")
        elif kind == 0x6E:  # 'n'
            append(None)
        elif kind == 0x75:  # 'u'
            append(UNCHANGED_TOAST)
        else:
            raise PgOutputError(f"unknown tuple column kind {chr(kind)!r} at byte {pos - 1}")
    if pos > len(data):
        raise PgOutputError("tuple data runs past the end of the message")
    return tuple(values), pos


def decode(data: bytes) -> Message:
    """Decode one pgoutput message. Raises :class:`PgOutputError` on malformed input."""
    if not data:
        raise PgOutputError("empty pgoutput message")
    try:
        return _decode(data)
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise PgOutputError(
            f"malformed pgoutput {chr(data[0])!r} message ({len(data)} bytes): {exc}"
        ) from exc


def _decode(data: bytes) -> Message:
    kind = data[0]
    if kind == 0x49:  # 'I'
        (oid,) = _I.unpack_from(data, 1)
        if data[5] != 0x4E:
            raise PgOutputError(f"insert without a new tuple ('N'), got {chr(data[5])!r}")
        new, _ = _tuple(data, 6)
        return Insert(oid, new)
    if kind == 0x55:  # 'U'
        (oid,) = _I.unpack_from(data, 1)
        pos = 5
        old_kind: str | None = None
        old: TupleData | None = None
        if data[pos] in (0x4B, 0x4F):  # 'K' | 'O'
            old_kind = chr(data[pos])
            old, pos = _tuple(data, pos + 1)
        if data[pos] != 0x4E:
            raise PgOutputError(f"update without a new tuple ('N'), got {chr(data[pos])!r}")
        new, _ = _tuple(data, pos + 1)
        return Update(oid, old_kind, old, new)
    if kind == 0x44:  # 'D'
        (oid,) = _I.unpack_from(data, 1)
        if data[5] not in (0x4B, 0x4F):
            raise PgOutputError(f"delete without an old key or row, got {chr(data[5])!r}")
        old, _ = _tuple(data, 6)
        return Delete(oid, chr(data[5]), old)
    if kind == 0x42:  # 'B'
        final_lsn, ts, xid = _BEGIN.unpack_from(data, 1)
        return Begin(final_lsn, ts, xid)
    if kind == 0x43:  # 'C'
        flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, 1)
        return Commit(flags, commit_lsn, end_lsn, ts)
    if kind == 0x52:  # 'R'
        (oid,) = _I.unpack_from(data, 1)
        namespace, pos = _string(data, 5)
        name, pos = _string(data, pos)
        ident = chr(data[pos])
        (ncols,) = _H.unpack_from(data, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = data[pos]
            colname, pos = _string(data, pos + 1)
            type_oid, typmod = struct.unpack_from(">Ii", data, pos)
            pos += 8
            columns.append(Column(flags, colname, type_oid, typmod))
        return Relation(oid, namespace, name, ident, tuple(columns))
    if kind == 0x59:  # 'Y'
        (oid,) = _I.unpack_from(data, 1)
        namespace, pos = _string(data, 5)
        name, _ = _string(data, pos)
        return Type(oid, namespace, name)
    if kind == 0x54:  # 'T'
        (nrels,) = _I.unpack_from(data, 1)
        options = data[5]
        oids = struct.unpack_from(f">{nrels}I", data, 6)
        return Truncate(tuple(oids), bool(options & 1), bool(options & 2))
    if kind == 0x4F:  # 'O'
        (lsn,) = _Q.unpack_from(data, 1)
        name, _ = _string(data, 9)
        return Origin(lsn, name)
    if kind == 0x4D:  # 'M'
        flags = data[1]
        (lsn,) = _Q.unpack_from(data, 2)
        prefix, pos = _string(data, 10)
        (length,) = _I.unpack_from(data, pos)
        return LogicalMessage(bool(flags & 1), lsn, prefix, bytes(data[pos + 4 : pos + 4 + length]))
    raise PgOutputError(f"unknown pgoutput message kind {chr(kind)!r}")


def format_lsn(lsn: int) -> str:
    """An LSN as PostgreSQL prints it: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    """The inverse of :func:`format_lsn`."""
    try:
        high, low = text.split("/")
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError as exc:
        raise ValueError(f"not an LSN: {text!r} (expected like '0/16B3748')") from exc


def pg_time_to_unix_ms(pg_us: int) -> int:
    """A pgoutput timestamp (µs since 2000-01-01) as milliseconds since the Unix epoch."""
    return (pg_us + PG_EPOCH_US) // 1000
