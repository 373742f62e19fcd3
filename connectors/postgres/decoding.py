"""pgoutput messages into change records: relations and types, inserts (in C when built),
updates with their TOAST fill and key moves, deletes with tombstones, truncates."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from millpond import speedups
from millpond.records import Record

from . import pgoutput as po
from .source_state import SourceState, Table
from .sql import copy_rows
from .sql import ident as _ident
from .sql import literal as _literal
from .types import FAST_KINDS
from .wire import (
    OID,
    SLOT_COMMIT_MS,
    SLOT_LSN,
    SLOT_NOW_MS,
    SLOT_OLD,
    SLOT_ROW,
    SLOT_XID,
    TxnRecords,
    copy_start,
    json_bytes,
    parse_row,
    scan_py,
    template,
)


def _c_scan() -> Callable[[bytes, int, Any, Any, int, int, int], tuple[int, int, bytes | None]] | None:
    try:
        speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python path, on purpose
        from ._decode import scan
    except ImportError:  # built by setup.py; optional, see tests/test_speedups.py
        return None
    return scan


_scan = _c_scan()

#: Stands for a TOASTed value that an update did not change and Postgres did not send.
UNAVAILABLE = "__millpond_unavailable_value"


class ChangeDecoder(SourceState):
    """Decodes a read of the slot into whole transactions of records, ready in ``self._ready``."""

    async def _relation(self, rel: po.Relation) -> None:
        table = self._tables.get(rel.oid)
        if table is None:
            table = self._by_name.get((rel.schema, rel.name))
            if table is None:
                return  # in the publication but not configured here
            del self._tables[table.oid]
            self._codecs.pop(table.oid, None)
            table.oid = rel.oid
            self._tables[rel.oid] = table
        unknown = [c.type_oid for c in rel.columns if not self.types.known(c.type_oid)]
        if unknown:
            await self._learn_types(unknown)
        table.replica_identity = rel.replica_identity
        assert self._conn is not None
        sql_types = await self._conn.fetchval(
            "SELECT array_agg(format_type(t, m) ORDER BY n) FROM unnest($1::oid[], $2::int[]) "
            "WITH ORDINALITY AS c(t, m, n)",
            [c.type_oid for c in rel.columns], [c.typmod for c in rel.columns],
        )
        table.column_types = dict(zip((c.name for c in rel.columns), sql_types or ()))
        table.columns = [c.name for c in rel.columns]
        table.decoders = [self.types.decoder(c.type_oid) for c in rel.columns]
        if not table.key_columns:  # REPLICA IDENTITY FULL without a primary key: no key
            table.key_columns = [c.name for c in rel.columns if c.is_key] if rel.replica_identity == "i" else []
        table.key_index = [table.columns.index(k) for k in table.key_columns if k in table.columns]
        codec = self._codec(table)
        if codec is None:
            self._codecs.pop(table.oid, None)
        else:
            self._codecs[table.oid] = codec

    def _codec(self, t: Table) -> tuple[Any, ...] | None:
        """What ``_decode.scan`` needs to render the inserts of ``t`` (None: Python decodes them).

        The value template comes from the same dict the Python path builds,
        with numbered markers where the per-row values go, so both paths
        write the same envelope.
        """
        kinds = [FAST_KINDS.get(d) for d in t.decoders]
        if None in kinds or len(t.key_index) != len(t.key_columns):
            return None
        if any(kinds[i] in (b"f", b"j") for i in t.key_index):
            # C keeps PostgreSQL's text of floats and JSON, which orjson (the snapshot's
            # path) may write differently; keys must match byte for byte (compaction, partitions)
            return None
        source = self._source_block(t, SLOT_XID, SLOT_COMMIT_MS)  # type: ignore[arg-type]
        source["lsn"] = SLOT_LSN
        templates = [
            template({"before": before, "after": after, "op": op, "source": source, "ts_ms": SLOT_NOW_MS})
            for before, after, op in ((None, SLOT_ROW, "c"), (None, SLOT_ROW, "u"), (SLOT_OLD, None, "d"))
        ]
        if None in templates:
            return None
        names = tuple(json_bytes(name) + b":" for name in t.columns)  # type: ignore[operator]
        return (b"".join(kinds), names, tuple(t.key_index), t.topic, *templates)  # type: ignore[arg-type]

    async def _learn_types(self, oids: list[int]) -> None:
        assert self._conn is not None
        rows = await self._conn.fetch(
            "SELECT oid, typname, typcategory::text AS typcategory, typelem FROM pg_type WHERE oid = ANY($1::oid[])", oids
        )
        # elements first, so an array of a new type decodes its elements
        for row in sorted(rows, key=lambda r: r["typcategory"] == "A"):
            if row["typcategory"] == "A" and not self.types.known(row["typelem"]):
                elem = await self._conn.fetchrow(
                    "SELECT oid, typname, typcategory::text AS typcategory FROM pg_type WHERE oid = $1", row["typelem"]
                )
                if elem is not None:
                    self.types.learn(elem["oid"], elem["typname"], elem["typcategory"])
            self.types.learn(row["oid"], row["typname"], row["typcategory"], row["typelem"])

    async def _decode(self, buffer: bytes, pos: int | None = None, limit: int = 0) -> int | None:
        """Turn one read (a binary COPY of ``lsn, data`` rows) into whole transactions in ``self._ready``.

        Decodes from row ``pos`` (the first when None) until ``limit`` records
        are ready (0: no limit), stopping only after a Commit, and returns where
        to go on, or None at the end of the read. So a large read is decoded a
        batch at a time and only its compact bytes wait in memory.

        Inserts, the bulk of most streams, are rendered straight into JSON by
        ``_decode.c`` (``scan``) when the table has a codec; ``scan`` hands
        every other message back, and those go through
        :func:`pgoutput.decode` here. Without the C extension, ``scan_py``
        hands back every message and inserts take a Python fast path.
        """
        decode = po.decode
        parse = parse_row
        unpack_oid = OID.unpack_from
        step = _scan if _scan is not None and self._utf8 else scan_py
        txn = TxnRecords()
        xid = 0
        commit_ms = 0
        skip = False
        codecs = self._codecs
        tables = self._tables
        bases: dict[int, dict[str, Any]] = {}
        now_ms = int(time.time() * 1000)
        if pos is None:
            pos = copy_start(buffer)
        n = 0
        added = 0
        while True:
            n += 1
            if n % 5000 == 4999:
                await asyncio.sleep(0)  # a large window takes a while: let the worker's other tasks run
            pos, lsn, data = step(buffer, pos, {} if skip else codecs, txn.outputs, xid, commit_ms, now_ms)
            if data is None:
                return None
            kind = data[0]
            if kind == 0x49:  # 'I' that scan() left to Python
                if skip:
                    continue
                t = tables.get(unpack_oid(data, 1)[0])
                if t is None:
                    continue
                if data[5] != 0x4E:
                    raise po.PgOutputError(f"insert without a new tuple ('N'), got {chr(data[5])!r}")
                after, _, toast = parse(data, 6, t.columns, t.decoders)
                if toast:
                    after = {k: (UNAVAILABLE if v is po.UNCHANGED_TOAST else v) for k, v in after.items()}
                base = bases.get(t.oid)
                if base is None:
                    base = bases[t.oid] = self._source_block(t, xid, commit_ms)
                source = base.copy()
                source["lsn"] = po.format_lsn(lsn)
                keys = t.key_columns
                if len(keys) == 1:
                    key: dict[str, Any] | None = {keys[0]: after[keys[0]]}
                else:
                    key = {k: after[k] for k in keys} if keys else None
                txn.append(Record(
                    value={"before": None, "after": after, "op": "c", "source": source, "ts_ms": now_ms},
                    key=key, topic=t.topic, timestamp=commit_ms,
                ))
                continue
            msg = decode(data)
            cls = type(msg)
            if cls is po.Update:
                if skip:
                    continue
                assert isinstance(msg, po.Update)
                t = tables.get(msg.relation_oid)
                if t is not None:
                    await self._update(t, msg, po.format_lsn(lsn), xid, commit_ms, txn)
            elif cls is po.Delete:
                if skip:
                    continue
                assert isinstance(msg, po.Delete)
                t = tables.get(msg.relation_oid)
                if t is not None:
                    before = self._row(t, msg.old, None, only_key=msg.old_kind == "K")
                    rec = self._change(t, "d", before, None, po.format_lsn(lsn), xid, commit_ms)
                    txn.append(rec)
                    if rec.key is not None:  # a tombstone needs a key (none without a primary key)
                        txn.append(Record(value=None, key=rec.key, topic=t.topic, timestamp=commit_ms))
            elif cls is po.Begin:
                assert isinstance(msg, po.Begin)
                txn = TxnRecords()
                bases = {}
                xid = msg.xid
                commit_ms = po.pg_time_to_unix_ms(msg.commit_ts)
                skip = False
                if self._snapshot is not None and self._snapshot.saw(xid):
                    skip = True  # the snapshot copy already holds this transaction's rows
            elif cls is po.Commit:
                assert isinstance(msg, po.Commit)
                if msg.end_lsn <= self._emitted_lsn:
                    continue  # already handed out (before a restart, or earlier in this run)
                encoded = txn.encoded()
                size = sum(len(records) for records in encoded)
                self._ready.append((encoded, size, msg.end_lsn))
                txn = TxnRecords()
                added += size
                if limit and added >= limit:
                    return pos  # between transactions: nothing else to keep
            elif cls is po.Relation:
                assert isinstance(msg, po.Relation)
                await self._relation(msg)
                bases.pop(msg.oid, None)
            elif cls is po.Truncate:
                if skip:
                    continue
                assert isinstance(msg, po.Truncate)
                for oid in msg.relation_oids:
                    t = tables.get(oid)
                    if t is not None:
                        txn.append(self._change(t, "t", None, None, po.format_lsn(lsn), xid, commit_ms, key=False))
            elif cls is po.Type:
                assert isinstance(msg, po.Type)
                if not self.types.known(msg.oid):
                    await self._learn_types([msg.oid])
            # Origin and logical messages carry nothing for the topics

    def _source_block(self, t: Table, xid: int, commit_ms: int, snapshot: bool = False) -> dict[str, Any]:
        return {
            "connector": "postgres-cdc",
            "name": self.context.name,
            "db": self._db,
            "schema": t.schema,
            "table": t.name,
            "lsn": None,
            "txid": xid,
            "commit_ts_ms": commit_ms,
            "snapshot": snapshot,
            "column_types": t.column_types,
        }

    def _row(self, t: Table, data: po.TupleData | None, fill: po.TupleData | None,
             only_key: bool = False) -> dict[str, Any] | None:
        if data is None:
            return None
        if only_key:
            return {t.columns[i]: (None if data[i] is None else t.decoders[i](data[i])) for i in t.key_index}  # type: ignore[arg-type]
        out: dict[str, Any] = {}
        for name, dec, value, i in zip(t.columns, t.decoders, data, range(len(data))):
            if value is None:
                out[name] = None
            elif value is po.UNCHANGED_TOAST:
                old = fill[i] if fill is not None else po.UNCHANGED_TOAST
                if old is None or old is po.UNCHANGED_TOAST:
                    out[name] = UNAVAILABLE
                else:
                    out[name] = dec(old)  # type: ignore[arg-type]
            else:
                out[name] = dec(value)  # type: ignore[arg-type]
        return out

    async def _update(
        self, t: Table, msg: po.Update, lsn: str, xid: int, commit_ms: int, txn: TxnRecords
    ) -> None:
        full_old = msg.old if msg.old_kind == "O" else None
        after = self._row(t, msg.new, full_old)
        assert after is not None
        if msg.old is not None and t.key_index:
            old_key = self._row(t, msg.old, None, only_key=True)
            assert old_key is not None
            if old_key != {k: after[k] for k in t.key_columns}:
                before = self._row(t, msg.old, None, only_key=msg.old_kind == "K")
                gone = self._change(t, "d", before, None, lsn, xid, commit_ms)
                txn.append(gone)
                txn.append(Record(value=None, key=gone.key, topic=t.topic, timestamp=commit_ms))
                read_back = await self._read_back(t, after) if UNAVAILABLE in after.values() else []
                created = self._change(t, "c", None, after, lsn, xid, commit_ms)
                if read_back:
                    created.value["source"]["read_back"] = read_back
                txn.append(created)
                return
        before = self._row(t, full_old, None) if full_old is not None else None
        txn.append(self._change(t, "u", before, after, lsn, xid, commit_ms))

    async def _read_back(self, t: Table, after: dict[str, Any]) -> list[str]:
        """Fill unchanged TOAST columns of a row that moved to a new key from the table itself.

        Postgres sends neither the value nor (REPLICA IDENTITY DEFAULT) the old
        row, and a sink cannot keep a value of a row that was at another key.
        The value read now is the column's current value at that key: if it
        changed since, that later change is in the stream with its full value
        and overwrites this one, so the copy still ends equal. A row gone since
        keeps the marker (its delete follows in the stream).
        """
        missing = [k for k, v in after.items() if v == UNAVAILABLE]
        assert self._conn is not None
        rel = f"{_ident(t.schema)}.{_ident(t.name)}"
        cols = ", ".join(f"src.{_ident(c)}" for c in missing)
        match = " AND ".join(f"src.{_ident(k)} = r.{_ident(k)}" for k in t.key_columns)
        key = json.dumps({k: after[k] for k in t.key_columns})
        rows = await copy_rows(
            self._conn,
            f"SELECT {cols} FROM {rel} AS src, jsonb_populate_record(NULL::{rel}, {_literal(key)}::jsonb) r "
            f"WHERE {match}",
            [],
        )
        if not rows:
            return []
        decoders = dict(zip(t.columns, t.decoders))
        for name, value in zip(missing, rows[0]):
            after[name] = None if value is None else decoders[name](value)
        return missing

    def _change(self, t: Table, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
                lsn: str, xid: int, commit_ms: int, key: bool = True, snapshot: bool = False) -> Record:
        row = after if after is not None else before
        record_key = None
        if key and row is not None and t.key_columns:
            record_key = {k: row.get(k) for k in t.key_columns}
        source = self._source_block(t, xid, commit_ms, snapshot)
        source["lsn"] = lsn
        if after is not None and UNAVAILABLE in after.values():
            source["unavailable"] = [k for k, v in after.items() if v == UNAVAILABLE]
        value = {"before": before, "after": after, "op": op, "source": source,
                 "ts_ms": int(time.time() * 1000)}
        return Record(value=value, key=record_key, topic=t.topic, timestamp=commit_ms)
