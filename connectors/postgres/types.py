"""Column values from pgoutput's text format into JSON-ready Python values.

pgoutput sends every column in its type's text output format, rendered in the
session that calls the decoding function; the source pins that session's
settings (:data:`SESSION_SETTINGS`) so the text is predictable:

========================  ==============================================  ===========
type                      JSON-ready value                                example
========================  ==============================================  ===========
int2/int4/int8/oid        int                                             ``42``
float4/float8             float; NaN and infinities as strings            ``"NaN"``
numeric, money            exact string (never a float)                    ``"12.50"``
bool                      bool                                            ``true``
text/varchar/char/name    str                                             ``"hi"``
json/jsonb                the parsed JSON value                           ``{"a": 1}``
timestamp                 ISO 8601 without zone                           ``"2024-01-02T03:04:05.5"``
timestamptz               ISO 8601 in UTC with offset                     ``"2024-01-02T03:04:05+00:00"``
date, time, timetz        ISO 8601 string                                 ``"2024-01-02"``
uuid                      str                                             ``"a0ee..."``
bytea                     PostgreSQL hex form ``\\x`` + hex digits       ``"\\\\x0102ff"``
arrays                    lists (nested for multi-dimensional arrays)      ``[1, null, 3]``
enums, other types        the type's text form (str)                      ``"happy"``
========================  ==============================================  ===========

bytea keeps PostgreSQL's own hex form so that any PostgreSQL sink (and
``jsonb_populate_record``) reads it back as the same bytes without knowing
the column type; ``bytes.fromhex(v[2:])`` decodes it elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

#: The settings of the session that decodes WAL, so output formats are fixed.
SESSION_SETTINGS: Final = {
    "DateStyle": "ISO, YMD",
    "TimeZone": "UTC",
    "IntervalStyle": "iso_8601",
    "extra_float_digits": "3",
    "bytea_output": "hex",
}

Decoder = Callable[[bytes], Any]


# C-level callables where a Python function would only add a frame per value
_int: Decoder = int  # int() parses ASCII digits from bytes directly


def _bool(b: bytes) -> bool:
    return b == b"t"


_text: Decoder = bytes.decode  # UTF-8


def _float(b: bytes) -> float | str:
    value = float(b)
    if value != value or value in (float("inf"), float("-inf")):
        return b.decode()  # NaN / Infinity / -Infinity: JSON has no number for them
    return value


def _json(b: bytes) -> Any:
    return json.loads(b)


def _timestamp(b: bytes) -> str:
    # "2024-01-02 03:04:05.123456" -> "2024-01-02T03:04:05.123456"; keeps infinity / BC as is
    s = b.decode()
    if len(s) > 10 and s[10] == " ":
        return s[:10] + "T" + s[11:]
    return s


def _offset(s: str) -> str:
    # "+00" -> "+00:00", "+05:30" stays, "+05:30:15" (historic LMT) stays
    sign = max(s.rfind("+"), s.rfind("-"))
    if sign > 10 and len(s) - sign == 3:
        return s + ":00"
    return s


def _timestamptz(b: bytes) -> str:
    s = b.decode()
    if s[-3:] == "+00" and len(s) > 19:  # the common case with TimeZone=UTC
        return f"{s[:10]}T{s[11:]}:00"  # one build instead of three concatenations
    return _offset(_timestamp(b))


def _timetz(b: bytes) -> str:
    s = b.decode()
    sign = max(s.rfind("+"), s.rfind("-"))
    if sign > 0 and len(s) - sign == 3:
        return s + ":00"
    return s


#: Scalar decoders by type OID (pg_type.oid of the built-in types).
SCALAR: Final[dict[int, Decoder]] = {
    16: _bool,
    17: _text,  # bytea: "\x0102" stays as PostgreSQL's hex form
    18: _text,
    19: _text,
    20: _int,
    21: _int,
    23: _int,
    25: _text,
    26: _int,
    114: _json,
    700: _float,
    701: _float,
    790: _text,  # money
    1042: _text,
    1043: _text,
    1082: _text,  # date: already ISO with DateStyle ISO
    1083: _text,  # time
    1114: _timestamp,
    1184: _timestamptz,
    1186: _text,  # interval, ISO 8601 with IntervalStyle iso_8601
    1266: _timetz,
    1700: _text,  # numeric: exact
    2950: _text,  # uuid
    3802: _json,
}

#: How ``_decode.c`` writes the text of each scalar decoder's columns as JSON
#: (its ``KIND_*`` letters). A table with a column of any other decoder (an
#: array) is decoded in Python.
FAST_KINDS: Final[dict[Decoder, bytes]] = {
    _int: b"n",
    _float: b"f",
    _text: b"s",
    _bool: b"b",
    _json: b"j",
    _timestamp: b"t",
    _timestamptz: b"z",
    _timetz: b"w",
}

#: Element type of the built-in array types: array OID -> element OID.
ARRAY_ELEMENT: Final[dict[int, int]] = {
    1000: 16, 1001: 17, 1002: 18, 1003: 19, 1016: 20, 1005: 21, 1007: 23, 1009: 25,
    1028: 26, 199: 114, 1021: 700, 1022: 701, 791: 790, 1014: 1042, 1015: 1043,
    1182: 1082, 1183: 1083, 1115: 1114, 1185: 1184, 1187: 1186, 1270: 1266,
    1231: 1700, 2951: 2950, 3807: 3802,
}


def parse_array(text: str, element: Decoder) -> list[Any]:
    """Parse PostgreSQL's array output (``{1,NULL,"a b",{2,3}}``) into nested lists.

    Unquoted ``NULL`` is SQL NULL; quoted elements unescape ``\\"`` and ``\\\\``.
    A leading dimension decoration (``[0:1]={...}``) is dropped.
    """
    if text.startswith("["):
        text = text[text.index("=") + 1 :]
    pos = 0
    n = len(text)

    def value(raw: str, quoted: bool) -> Any:
        if not quoted and raw == "NULL":
            return None
        return element(raw.encode())

    def parse() -> list[Any]:
        nonlocal pos
        assert text[pos] == "{"
        pos += 1
        out: list[Any] = []
        if text[pos] == "}":
            pos += 1
            return out
        while True:
            ch = text[pos]
            if ch == "{":
                out.append(parse())
            elif ch == '"':
                pos += 1
                buf = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    buf.append(text[pos])
                    pos += 1
                pos += 1
                out.append(value("".join(buf), True))
            else:
                start = pos
                while text[pos] not in ",}":
                    pos += 1
                out.append(value(text[start:pos].strip(), False))
            if pos >= n:
                raise ValueError(f"unterminated array literal: {text!r}")
            if text[pos] == ",":
                pos += 1
                continue
            if text[pos] == "}":
                pos += 1
                return out
            raise ValueError(f"unexpected {text[pos]!r} at {pos} in array literal {text!r}")

    return parse()


class TypeRegistry:
    """Maps type OIDs to decoders: built-ins, plus what the catalog says of the rest.

    Enums and other user types arrive as pgoutput Type ('Y') messages; their
    text form is kept. Arrays of user types (``mood[]``) are resolved through
    :meth:`learn` with ``pg_type.typelem`` so they still decode into lists.
    """

    def __init__(self) -> None:
        self._decoders: dict[int, Decoder] = dict(SCALAR)
        for array_oid, element_oid in ARRAY_ELEMENT.items():
            self._decoders[array_oid] = self._array(SCALAR[element_oid])
        self.names: dict[int, str] = {}

    @staticmethod
    def _array(element: Decoder) -> Decoder:
        return lambda b: parse_array(b.decode("utf-8"), element)

    def known(self, oid: int) -> bool:
        return oid in self._decoders

    def learn(self, oid: int, name: str, category: str, element_oid: int = 0) -> None:
        """Record a type from the catalog (``typcategory`` 'A' = array of ``element_oid``)."""
        self.names[oid] = name
        if category == "A" and element_oid:
            self._decoders[oid] = self._array(self.decoder(element_oid))
        elif oid not in self._decoders:
            self._decoders[oid] = _text

    def decoder(self, oid: int) -> Decoder:
        return self._decoders.get(oid, _text)

    def decode(self, oid: int, data: bytes | None) -> Any:
        return None if data is None else self.decoder(oid)(data)
