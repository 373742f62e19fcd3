"""The bytes of a slot read and of the records made from it, shared by the decoder's two paths.

A read is ``COPY (SELECT lsn, data FROM pg_logical_slot_get_binary_changes(..))
TO STDOUT (FORMAT binary)``: an 11-byte signature, flags and a header
extension, then one row per pgoutput message (Int16 2 fields; Int32 8, the
LSN; Int32 length, the message), ended by Int16 -1. :func:`scan_py` walks it
as ``_decode.scan`` does without its fast path. Records leave as JSON
columns per topic (:class:`TxnRecords`); :func:`template` turns an envelope
with marker values into the literal bytes and slot numbers ``_decode.c``
fills in per row, so both paths write the same JSON.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

from millpond.converters import JsonConverter
from millpond.records import JsonRecords, Record

from . import pgoutput as po

OID = struct.Struct(">I")
NCOLS = struct.Struct(">H")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER = struct.Struct(">11sII")  # signature, flags, header extension length
_COPY_ROW = struct.Struct(">hiQi")  # 2 fields; 8, the LSN; the message's length
_COPY_FIELDS = struct.Struct(">h")


def copy_start(buffer: bytes) -> int:
    """Where the rows of a binary COPY start (after its header)."""
    if len(buffer) < _COPY_HEADER.size:
        raise po.PgOutputError(f"binary COPY data too short ({len(buffer)} bytes)")
    signature, _flags, extension = _COPY_HEADER.unpack_from(buffer)
    if signature != _COPY_SIGNATURE:
        raise po.PgOutputError(f"not binary COPY data: starts with {buffer[:11]!r}")
    return _COPY_HEADER.size + int(extension)


def copy_is_empty(buffer: bytes) -> bool:
    start = copy_start(buffer)
    return bool(_COPY_FIELDS.unpack_from(buffer, start)[0] == -1)


def scan_py(
    buffer: bytes, pos: int, codecs: Any, outputs: Any, xid: int, commit_ms: int, now_ms: int
) -> tuple[int, int, bytes | None]:
    """The next ``(lsn, data)`` row of a binary COPY: ``_decode.scan`` without its fast path."""
    if _COPY_FIELDS.unpack_from(buffer, pos)[0] == -1:
        return pos + 2, 0, None
    fields, size, lsn, length = _COPY_ROW.unpack_from(buffer, pos)
    if fields != 2 or size != 8 or length < 0:
        raise po.PgOutputError(f"binary COPY row at byte {pos} is not (lsn, data)")
    start = pos + _COPY_ROW.size
    if start + length > len(buffer):
        raise po.PgOutputError(f"binary COPY row at byte {pos} runs past the end of the data")
    return start + length, lsn, buffer[start : start + length]


json_bytes = JsonConverter().serialize

# markers for the per-row parts of a value template: _decode.c's SLOT_* numbers
SLOT_ROW, SLOT_LSN, SLOT_XID, SLOT_COMMIT_MS, SLOT_NOW_MS, SLOT_OLD = (f"\ue000{i}\ue000" for i in range(6))
_SLOT = re.compile('"\ue000([0-9])\ue000"'.encode())


def template(envelope: dict[str, Any]) -> tuple[bytes | int, ...] | None:
    """The JSON of ``envelope`` as literal bytes and slot numbers (None if a marker is ambiguous)."""
    rendered = json_bytes(envelope)
    assert rendered is not None
    parts = _SLOT.split(rendered)
    template: list[bytes | int] = [int(p) if i % 2 else p for i, p in enumerate(parts) if i % 2 or p]
    markers = sum(isinstance(v, str) and v.startswith("\ue000") for v in (*envelope.values(), *envelope["source"].values()))
    if len([x for x in template if isinstance(x, int)]) != markers:
        return None  # a name holds a marker: leave this table to Python
    return tuple(template)


class TxnRecords:
    """One transaction's records as JSON columns per topic, in stream order.

    ``outputs`` is shared with ``_decode.scan``, which appends the inserts it
    renders; records decoded in Python are serialised and appended here.
    """

    __slots__ = ("outputs",)

    def __init__(self) -> None:
        self.outputs: dict[str, tuple[list[bytes | None], list[bytes | None], list[int]]] = {}

    def append(self, record: Record) -> None:
        assert record.topic is not None and record.timestamp is not None
        columns = self.outputs.get(record.topic)
        if columns is None:
            columns = self.outputs[record.topic] = ([], [], [])
        columns[0].append(json_bytes(record.key))
        columns[1].append(json_bytes(record.value))
        columns[2].append(record.timestamp)

    def encoded(self) -> list[JsonRecords]:
        return [JsonRecords(topic, *columns) for topic, columns in self.outputs.items()]


def parse_row(
    data: bytes, pos: int, names: list[str], decoders: list[Callable[[bytes], Any]]
) -> tuple[dict[str, Any], int, bool]:
    """A pgoutput TupleData straight into ``{column: value}``; also whether a 'u' column was seen."""
    (ncols,) = NCOLS.unpack_from(data, pos)
    if ncols != len(names):
        raise po.PgOutputError(f"tuple has {ncols} columns, the relation {len(names)}")
    pos += 2
    out: dict[str, Any] = {}
    toast = False
    unpack = OID.unpack_from
    for name, decode in zip(names, decoders):
        kind = data[pos]
        if kind == 0x74:  # 't'
            start = pos + 5
            pos = start + unpack(data, pos + 1)[0]
            out[name] = decode(data[start:pos])
        elif kind == 0x6E:  # 'n'
            out[name] = None
            pos += 1
        elif kind == 0x75:  # 'u'
            out[name] = po.UNCHANGED_TOAST
            toast = True
            pos += 1
        else:
            raise po.PgOutputError(f"unsupported tuple column kind {chr(kind)!r}")
    if pos > len(data):
        raise po.PgOutputError("tuple data runs past the end of the message")
    return out, pos, toast
