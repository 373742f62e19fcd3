"""``_decode.c`` renders changes exactly as the Python path does.

Each example builds a binary COPY of pgoutput messages (Relation, Begin,
Inserts, Updates, Deletes, Commit) by hand, decodes it through ``PostgresSource._decode`` once
with the C scanner and once with it switched off, and compares the records.
No server is needed: what the C code sees is only these bytes.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millpond.connector import ConnectorContext
from millpond.connectors.postgres import decoding as decoding_module
from millpond.connectors.postgres.source import PostgresSource, PostgresSourceConfig
from millpond.connectors.postgres.source_state import Table
from tests.ci import speedups_required

pytestmark = pytest.mark.skipif(
    decoding_module._scan is None and not speedups_required(),  # noqa: SLF001
    reason="C speedups not built or switched off (tests/test_speedups.py fails under CI=true)",
)

REL_OID = 16_500
XID = 7_321
COMMIT_TS = 817_000_000_123_456  # µs since 2000-01-01

# (type OID, strategy for the column's text as PostgreSQL writes it)
finite = st.floats(allow_nan=False, allow_infinity=False)
TYPES: dict[str, tuple[int, st.SearchStrategy[str]]] = {
    "int8": (20, st.integers(-(2**63), 2**63 - 1).map(str)),
    "int4": (23, st.integers(-(2**31), 2**31 - 1).map(str)),
    "float8": (701, st.one_of(finite.map(repr), finite.map(lambda f: f"{f:g}"),
                              st.sampled_from(["NaN", "Infinity", "-Infinity", "1e+30", "-0", "100"]))),
    "numeric": (1700, st.decimals(allow_nan=False, allow_infinity=False).map(str)),
    "bool": (16, st.sampled_from(["t", "f"])),
    "text": (25, st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)),
    "jsonb": (3802, st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), finite, st.text(max_size=8)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=6,
    ).map(lambda v: json.dumps(v, ensure_ascii=False))),
    "timestamp": (1114, st.sampled_from(["2024-01-02 03:04:05", "2024-01-02 03:04:05.123456", "infinity",
                                         "0044-03-15 00:00:00 BC"])),
    "timestamptz": (1184, st.sampled_from(["2024-01-02 03:04:05+00", "2024-01-02 03:04:05.5+05:30",
                                           "1850-01-01 00:00:00+00:09:21", "-infinity", "2024-01-02 03:04:05-08"])),
    "timetz": (1266, st.sampled_from(["03:04:05+00", "03:04:05.25-05:30", "23:59:59+14"])),
    "date": (1082, st.sampled_from(["2024-01-02", "infinity"])),
    "uuid": (2950, st.uuids().map(str)),
    "bytea": (17, st.binary(max_size=8).map(lambda b: "\\x" + b.hex())),
}


def _message_string(text: str) -> bytes:
    return text.encode() + b"\x00"


def relation(columns: list[tuple[str, int, bool]]) -> bytes:
    out = b"R" + struct.pack(">I", REL_OID) + _message_string("public") + _message_string("items") + b"d"
    out += struct.pack(">H", len(columns))
    for name, oid, key in columns:
        out += bytes([1 if key else 0]) + _message_string(name) + struct.pack(">Ii", oid, -1)
    return out


def insert(values: list[str | None], kind: bytes = b"I", tuple_kind: bytes = b"N") -> bytes:
    """An Insert; with ``kind`` b"U" an Update without an old tuple, b"D" a Delete (``tuple_kind`` K or O)."""
    out = kind + struct.pack(">I", REL_OID) + tuple_kind + struct.pack(">H", len(values))
    for value in values:
        if value is None:
            out += b"n"
        else:
            data = value.encode()
            out += b"t" + struct.pack(">I", len(data)) + data
    return out


def copy_binary(messages: list[bytes], first_lsn: int = 0x1_6B37_4800) -> bytes:
    out = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">II", 0, 0)
    for i, message in enumerate(messages):
        out += struct.pack(">hiQi", 2, 8, first_lsn + 64 * i, len(message)) + message
    return out + struct.pack(">h", -1)


class _Catalog:
    """Answers the one catalog query a Relation message makes (its columns' ``format_type``)."""

    async def fetchval(self, sql: str, oids: list[int], typmods: list[int]) -> list[str]:
        assert "format_type" in sql
        return [f"type{oid}({typmod})" for oid, typmod in zip(oids, typmods)]


def new_source() -> PostgresSource:
    src = PostgresSource(PostgresSourceConfig(dsn="postgresql://x@127.0.0.1/db", tables=["items"]),
                         ConnectorContext(name="cdc"))
    src._db, src._utf8 = "db", True  # noqa: SLF001 - what start() would have found
    src._conn = _Catalog()  # type: ignore[assignment]  # noqa: SLF001
    return src


def decode(buffer: bytes, columns: list[tuple[str, int, bool]], fast: bool) -> list[tuple[Any, Any, int]]:
    """(key bytes, value bytes, timestamp) of every record the source makes of ``buffer``."""
    src = new_source()
    keys = [name for name, _, key in columns if key]
    table = Table(0, "public", "items", "cdc.public.items", keys, "d")
    src._tables[0] = src._by_name[("public", "items")] = table  # noqa: SLF001
    saved = decoding_module._scan
    if not fast:
        decoding_module._scan = None
    try:
        asyncio.run(src._decode(buffer))  # noqa: SLF001
    finally:
        decoding_module._scan = saved
    # floats and JSON in the key keep the Python path (keys must match the snapshot's byte for byte)
    python_key = any(oid in (701, 3802) for _, oid, key in columns if key)
    assert (REL_OID in src._codecs) is not python_key  # noqa: SLF001
    out = []
    for encoded, _count, _end in src._ready:  # noqa: SLF001
        for records in encoded:
            out.extend(zip(records.keys, records.values, records.timestamps))
    return out


def without_ts_ms(value: bytes) -> Any:
    doc = json.loads(value)
    doc.pop("ts_ms")  # the wall clock at decoding: the two runs differ by design
    return doc


def same_json(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same_json, a, b))
    return type(a) is type(b) and a == b


@st.composite
def workloads(draw: st.DrawFn) -> tuple[list[tuple[str, int, bool]], list[list[str | None]]]:
    kinds = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=6))
    names = draw(st.lists(st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=6),
                          min_size=len(kinds), max_size=len(kinds), unique=True))
    n_keys = draw(st.integers(0, len(kinds)))
    columns = [(name, TYPES[kind][0], i < n_keys) for i, (name, kind) in enumerate(zip(names, kinds))]
    rows = draw(st.lists(
        st.tuples(*[st.one_of(st.none(), TYPES[kind][1]) for kind in kinds]).map(list), min_size=1, max_size=5
    ))
    ops = draw(st.lists(st.sampled_from(["I", "U", "DK", "DO"] if n_keys else ["I", "U", "DO"]),
                        min_size=len(rows), max_size=len(rows)))
    return columns, [change(op, row, columns) for op, row in zip(ops, rows)]


def change(op: str, row: list[str | None], columns: list[tuple[str, int, bool]]) -> bytes:
    if op == "DK":  # the old key: the key columns, the others NULL
        return insert([v if key else None for v, (_, _, key) in zip(row, columns)], b"D", b"K")
    if op == "DO":
        return insert(row, b"D", b"O")
    return insert(row, op.encode())


@settings(max_examples=300, deadline=None)
@given(workloads())
def test_c_and_python_paths_make_the_same_records(workload: tuple[list[Any], list[bytes]]) -> None:
    columns, changes = workload
    begin = b"B" + struct.pack(">QqI", 0x1_6B37_9000, COMMIT_TS, XID)
    commit = b"C" + struct.pack(">BQQq", 0, 0x1_6B37_9000, 0x1_6B37_9100, COMMIT_TS)
    buffer = copy_binary([relation(columns), begin, *changes, commit])
    fast, slow = decode(buffer, columns, fast=True), decode(buffer, columns, fast=False)
    keyed_deletes = sum(c[:1] == b"D" for c in changes) if any(key for _, _, key in columns) else 0
    assert len(fast) == len(slow) == len(changes) + keyed_deletes  # each keyed delete: a tombstone
    for (fkey, fvalue, fts), (skey, svalue, sts) in zip(fast, slow):
        assert fts == sts
        assert fkey == skey  # keys: byte for byte
        assert (fvalue is None) is (svalue is None)
        if fvalue is None:
            continue
        assert same_json(without_ts_ms(fvalue), without_ts_ms(svalue)), (fvalue, svalue)
        if not {oid for _, oid, _ in columns} & {701, 3802}:  # floats and JSON keep PostgreSQL's text
            assert fvalue[: fvalue.rindex(b'"ts_ms":')] == svalue[: svalue.rindex(b'"ts_ms":')]


def test_inserts_the_c_path_cannot_take_go_to_python() -> None:
    columns = [("id", 20, True), ("big", 25, False)]
    begin = b"B" + struct.pack(">QqI", 0x1_6B37_9000, COMMIT_TS, XID)
    commit = b"C" + struct.pack(">BQQq", 0, 0x1_6B37_9000, 0x1_6B37_9100, COMMIT_TS)
    toast = b"I" + struct.pack(">I", REL_OID) + b"N" + struct.pack(">H", 2) + b"t" + struct.pack(">I", 1) + b"2" + b"u"
    buffer = copy_binary([relation(columns), begin, insert(["1", "a"]), toast, insert(["3", None]), commit])
    records = decode(buffer, columns, fast=True)
    assert [json.loads(k) for k, _, _ in records] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert json.loads(records[1][1])["after"]["big"] == decoding_module.UNAVAILABLE
    assert json.loads(records[0][1])["source"]["lsn"] == "1/6B374880"


def test_a_malformed_insert_raises_the_python_error() -> None:
    columns = [("id", 20, True)]
    begin = b"B" + struct.pack(">QqI", 0x1_6B37_9000, COMMIT_TS, XID)
    short = insert(["12345"])[:-2]
    with pytest.raises(Exception, match="malformed|past the end|columns"):
        decode(copy_binary([relation(columns), begin, short]), columns, fast=True)


def test_a_read_decodes_a_batch_at_a_time_and_ends_the_same() -> None:
    columns = [("id", 20, True), ("v", 25, False)]
    messages = [relation(columns)]
    for x in range(6):  # six transactions of three inserts
        messages.append(b"B" + struct.pack(">QqI", 0x2_0000_0000 + x, COMMIT_TS, XID + x))
        messages.extend(insert([str(3 * x + i), f"v{i}"]) for i in range(3))
        messages.append(b"C" + struct.pack(">BQQq", 0, 0x2_0000_0000 + x, 0x2_0000_0100 + 256 * x, COMMIT_TS))
    buffer = copy_binary(messages)
    whole = decode(buffer, columns, fast=True)
    src = new_source()
    src._db, src._utf8 = "db", True  # noqa: SLF001
    src._tables[0] = src._by_name[("public", "items")] = Table(0, "public", "items", "cdc.public.items", ["id"], "d")  # noqa: SLF001
    stops = []
    pos = None
    while True:
        pos = asyncio.run(src._decode(buffer, pos, limit=4))  # noqa: SLF001
        stops.append(len(src._ready))  # noqa: SLF001
        if pos is None:
            break
    assert stops == [2, 4, 6, 6]  # whole transactions only: 2 x 3 records reach the limit of 4
    batched = [row for encoded, _, _ in src._ready for r in encoded for row in zip(r.keys, r.values, r.timestamps)]  # noqa: SLF001
    assert [k for k, _, _ in batched] == [k for k, _, _ in whole]
    assert [without_ts_ms(v) for _, v, _ in batched] == [without_ts_ms(v) for _, v, _ in whole]


def test_updates_without_an_old_tuple_and_deletes_are_rendered_in_c() -> None:
    columns = [("id", 20, True), ("v", 25, False)]
    src = new_source()
    src._db, src._utf8 = "db", True  # noqa: SLF001
    src._tables[0] = src._by_name[("public", "items")] = Table(0, "public", "items", "cdc.public.items", ["id"], "d")  # noqa: SLF001
    asyncio.run(src._decode(copy_binary([relation(columns)])))  # noqa: SLF001 - learns the relation
    changes = [insert(["1", "a"]), insert(["1", "b"], b"U"), insert(["1", None], b"D", b"K"), insert(["2", "c"], b"D", b"O")]
    buffer = copy_binary(changes)
    outputs: dict[str, Any] = {}
    pos, _, message = decoding_module._scan(buffer, 19, src._codecs, outputs, XID, 5, 6)  # noqa: SLF001
    assert message is None and pos == len(buffer)  # every change taken in C, none handed back
    keys, values, timestamps = outputs["cdc.public.items"]
    assert [json.loads(k) for k in keys] == [{"id": 1}] * 4 + [{"id": 2}] * 2
    docs = [None if v is None else json.loads(v) for v in values]
    assert [d and d["op"] for d in docs] == ["c", "u", "d", None, "d", None]  # each delete, then its tombstone
    assert docs[2]["before"] == {"id": 1} and docs[4]["before"] == {"id": 2, "v": "c"}
    # the relation's column types ride in every change, from the C path as from Python's
    assert {json.dumps(d["source"]["column_types"]) for d in docs if d} == {'{"id": "type20(-1)", "v": "type25(-1)"}'}
    assert timestamps == [5] * 6
    # an update with the old key may move the row to another key: Python decides
    moved = b"U" + struct.pack(">I", REL_OID) + insert(["1", None], b"", b"K")[4:] + insert(["3", "x"], b"", b"N")[4:]
    _, _, message = decoding_module._scan(copy_binary([moved]), 19, src._codecs, {}, XID, 5, 6)  # noqa: SLF001
    assert message == moved
