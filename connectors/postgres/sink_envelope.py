"""The postgres-cdc envelope read from its bytes: the Postgres sink's encoded path (``write_encoded``).

A plain insert or update in the envelope the postgres-cdc source writes is
recognised without parsing it: the row alone is parsed (orjson), the rest is
compared as bytes with what the last value checked in full looked like, in
Python (:func:`plain_row`) or for a whole poll in C (``_sink_scan.rows``, from
a template :func:`_template` makes). Whatever is not such a change is left to
the sink's exact path (the JSON converter, then ``write``), so the rows the
sink buffers are the ones that path would buffer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

from millpond import speedups

#: values the C scan looks at in one call: a new template (the Python check learnt one) scans again
SCAN_VALUES = 2048


def _c_rows() -> Callable[[list[bytes | None], tuple[bytes | int, ...]], list[bytes | None]] | None:
    try:
        speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python path, on purpose
        from ._sink_scan import rows
    except ImportError:  # built by setup.py; optional, see tests/test_speedups.py
        return None
    return rows


#: ``_sink_scan.rows``: a poll's plain rows found in C (see :func:`_template`), else None
scan_rows = _c_rows()


#: the postgres-cdc envelope of a plain change, as its C path and orjson write it:
#: ``{"before":null,"after":ROW,"op":"c","source":{...,"column_types":{...}},"ts_ms":N}``
HEAD = b'{"before":null,"after":{'
_OP = b',"op":"'
_TYPES = b',"column_types":{'
#: an upsert's op and what follows it, up to the source block's first field
_OP_SOURCE = tuple(op + b'","source":{' for op in (b"c", b"u", b"r"))
_END = b'},"ts_ms":'
#: digits to "0" and everything else to " ", so that one ``find`` spots a run long enough for an
#: integer beyond 64 bits (which orjson reads as a float, the JSON converter as an int)
_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_LONG = b"0" * 19


def plain_row(value: bytes, types: bytes, shape: list[Any]) -> dict[str, Any] | None:
    """The ``after`` row of ``value`` when it is a plain upsert (op c, u or r) in the envelope above
    whose ``column_types`` are the bytes ``types``; None when anything is otherwise.

    Only the row is parsed (orjson); the rest is checked as bytes, in place. Exact: the row's
    slice parses only if it is the whole ``after`` object (it ends where ``,"op":"`` follows it,
    and a JSON object cannot end anywhere else); the source block's other fields are valid JSON
    naming no ``column_types`` of their own (:func:`_fields_end`, or the same text as the last
    value found so, but for the LSN's hex digits); ``types`` are bytes a valid change carried;
    and what follows is a plain integer. So the value is valid JSON that the JSON converter reads
    as this op, this row and these column types. A row with a run of 19 digits (perhaps an integer
    beyond 64 bits) is left to the exact path.

    ``shape`` is the topic's ``[fields before the LSN's digits, the text from after them to the
    ts_ms digits, the C scan's template]`` of the last value checked in full (empty before one
    was; see ``_fields_end``).
    """
    if not value.startswith(HEAD):
        return None
    i = value.find(_OP, 23)
    if i < 0 or not value.startswith(_OP_SOURCE, i + 7):
        return None
    k = -1
    if shape:
        pre, post = shape[0], shape[1]
        if value.startswith(pre, i + 20):
            a = i + 20 + len(pre)
            b = value.find(b'"', a)
            if b > 0 and not value[a:b].translate(None, _LSN_CHARS) and value.startswith(post, b):
                k = b + len(post)
    if k < 0:
        k = _fields_end(value, i, types, shape)
        if k < 0:
            return None
    ts = value[k:-1]
    if not ts.isdigit() or (ts[0] == 48 and len(ts) > 1) or value[-1] != 125:  # 48: "0", 125: "}"
        return None
    row = value[23:i]
    if row.translate(_DIGITS).find(_LONG) >= 0:
        return None
    try:
        parsed: dict[str, Any] = orjson.loads(row)
    except orjson.JSONDecodeError:
        return None
    return parsed


_LSN = b'"lsn":"'
_LSN_CHARS = b"0123456789ABCDEF/"


def _fields_end(value: bytes, i: int, types: bytes, shape: list[Any]) -> int:
    """Where the ts_ms digits of ``value`` start (-1: not a plain change) when its source block
    (from ``i + 20``) holds valid JSON fields, none named ``column_types``, then ``types``.

    Fills ``shape`` for the values after it (see :func:`plain_row`): within a transaction the
    fields differ only in the LSN, whose text is inside a string, so a value equal to this one
    but for hex digits and "/" there has valid fields too, and the same ``column_types``."""
    j = value.find(_TYPES, i + 21)
    if j < 0:
        return -1
    k = j + 16 + len(types)
    if not value.startswith(types, j + 16) or not value.startswith(_END, k):
        return -1
    fields = value[i + 20:j]
    try:
        if "column_types" in orjson.loads(b"{" + fields + b"}"):
            return -1
    except orjson.JSONDecodeError:
        return -1
    a = fields.find(_LSN)
    if a >= 0:
        a += len(_LSN)
        b = fields.find(b'"', a)
        if b > 0 and not fields[a:b].translate(None, _LSN_CHARS):
            shape[:] = [fields[:a], fields[b:] + value[j:k + len(_END)], _template(fields, (a, b), types)]
    return k + len(_END)


#: the C scan's wildcards: a JSON integer, the LSN's text
_INT, _LSN_TEXT = 1, 2
_RUN = re.compile(rb"[0-9]+").finditer


def _template(fields: bytes, lsn: tuple[int, int], types: bytes) -> tuple[bytes | int, ...] | None:
    """The C scan's template (``_sink_scan.c``) of a source block whose ``fields`` were found valid:
    their text with the LSN's (at ``lsn``) and each maximal run of digits elsewhere as wildcards,
    then ``types`` and the ts_ms integer. A JSON integer for a run keeps the fields valid: a
    digit run is a number's integer, fraction or exponent part, or inside a string, and a
    string holding a backslash (a ``\\u`` escape's digits are not free) gets no template.
    A run with a leading zero stays as it is."""
    if b"\\" in fields:
        return None
    spans = [(lsn[0], lsn[1], _LSN_TEXT)]
    for m in _RUN(fields):
        start, end = m.span()
        if not (lsn[0] <= start < lsn[1]) and (end - start == 1 or fields[start] != 48):  # 48: "0"
            spans.append((start, end, _INT))
    spans.sort()
    pieces: list[bytes | int] = []
    position = 0
    for start, end, kind in spans:
        pieces += [fields[position:start], kind]
        position = end
    pieces += [fields[position:] + b',"column_types":' + types + _END, _INT, b"}"]
    return tuple(pieces)


def learn_types(learnt: dict[str, tuple[bytes, dict[str, str]]], topic: str, value: bytes,
                 types: dict[str, str]) -> None:
    """Note the bytes of ``value``'s ``column_types`` (a change the exact path just read, whose types
    are ``types``) for :func:`plain_row`, if the value is in the envelope and they read as ``types``."""
    i = value.find(_OP, 23)
    j = value.find(_TYPES, i + 21) if i >= 0 else -1
    k = value.rfind(_END)
    if j < 0 or k < j:
        return
    raw = value[j + 16:k]
    try:
        if orjson.loads(raw) == types:
            learnt[topic] = (raw, types)
    except orjson.JSONDecodeError:
        pass
