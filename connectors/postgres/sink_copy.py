"""Rows as ``COPY ... FROM STDIN`` text: the typed path of the Postgres sink.

A row's JSON values are written as the text each column's input function
reads, which is what ``jsonb_populate_record`` hands that function for a
scalar: a string as it is, a number or boolean as its JSON text, null as
NULL; a ``jsonb`` column gets the value's JSON text. PostgreSQL then parses
each cell once, in COPY, instead of first building a ``jsonb`` document per
row and then taking it apart (about 3x the server time for a five-column row).

A value that text cannot carry the same way (a list or object for a column
that is not ``jsonb``, which the JSON path turns into an array or composite;
anything for a ``json`` column, whose stored text the JSON path normalises;
a non-finite float; bytes) makes its row *unfit*: the caller sends such rows
through the JSON documents path, so every row lands as before.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import re
import uuid
from typing import Any, cast

import orjson

#: one encoder for every document (json.dumps with options builds a new one per call)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode

#: what text format COPY gives a meaning: backslash, and the row and column delimiters
_SPECIAL = re.compile(r"[\\\t\n\r]").search
#: classes whose ``str()`` is what the JSON path would stage (``default=str``) and a scalar type reads
_STR_CLASSES = frozenset((decimal.Decimal, datetime.datetime, datetime.date, datetime.time, uuid.UUID))


def document(value: Any) -> str:
    """``value`` as JSON text: orjson (about 8x faster than the stdlib encoder), the stdlib for
    what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, default=str).decode()
    except TypeError:
        pass
    try:
        return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return _encode(value)


def escape(text: str) -> str:
    """``text`` as one text-format COPY cell."""
    if _SPECIAL(text) is None:
        return text
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_NULL = "\\N"
_NONE = type(None)


def _cell(value: Any, jsonb: bool) -> str | None:
    """One value as a COPY cell (None: text cannot carry it as the JSON path would)."""
    if value is None:
        return _NULL
    if jsonb:
        return escape(document(value))
    cls = value.__class__
    if cls is str:
        return escape(value)
    if cls is int:
        return int.__repr__(value)
    if cls is bool:
        return "true" if value else "false"
    if cls is float:
        return orjson.dumps(value).decode() if math.isfinite(value) else None
    if cls in _STR_CLASSES:
        return escape(str(value))
    return None


def _column(values: list[Any], jsonb: bool) -> list[str | None]:
    """One column's cells, column-wise: a column of one kind (the usual case) in a few C-speed passes."""
    kinds = set(map(type, values))
    if not jsonb:
        if kinds == {str}:
            return values if _SPECIAL("\x00".join(values)) is None else list(map(escape, values))
        if kinds == {int}:
            return list(map(int.__repr__, values))
        if kinds == {str, _NONE}:
            if _SPECIAL("\x00".join([v for v in values if v is not None])) is None:
                return [_NULL if v is None else v for v in values]
        elif kinds == {int, _NONE}:
            return [_NULL if v is None else int.__repr__(v) for v in values]
    return [_cell(v, jsonb) for v in values]


class _Missing:
    """A column the row does not carry: the row is unfit (the JSON path keeps the table's value there)."""


_MISSING = _Missing()


def _values(rows: list[dict[str, Any]], column: str) -> list[Any]:
    try:
        return [row[column] for row in rows]
    except KeyError:
        return [row.get(column, _MISSING) for row in rows]


def copy_text(
    rows: list[dict[str, Any]], columns: list[str], types: dict[str, str]
) -> tuple[bytes, int, list[dict[str, Any]]]:
    """``rows`` as COPY text of ``columns``: ``(data, rows in it, unfit rows)``; a row lacking a column is unfit.

    ``types`` are the columns' SQL types (``format_type``), which say where a
    value is JSON (``jsonb``) and where a column takes nothing but the JSON
    path (``json``). The work goes column by column: Python pays per column
    what it would pay per cell.
    """
    if not rows or any(types.get(c) == "json" for c in columns):
        return b"", 0, rows
    cells = [_column(_values(rows, c), types.get(c) == "jsonb") for c in columns]
    unfit: list[dict[str, Any]] = []
    bad = {i for column in cells if None in column for i, cell in enumerate(column) if cell is None}
    if bad:
        unfit = [row for i, row in enumerate(rows) if i in bad]
        cells = [[cell for i, cell in enumerate(column) if i not in bad] for column in cells]
    n = len(rows) - len(bad)
    if not n:
        return b"", 0, unfit
    # one list of cells and delimiters, joined once: a third of the time of a join per row
    width = 2 * len(cells)
    parts: list[str | None] = [None] * (n * width)
    for j, column in enumerate(cells):
        parts[2 * j::width] = column
        parts[2 * j + 1::width] = ["\t" if 2 * j + 2 < width else "\n"] * n
    return "".join(cast(list[str], parts)).encode(), n, unfit
