"""The initial snapshot: each table copied in key order, a chunk per batch, in one repeatable-read
transaction whose ``pg_current_snapshot()`` tells the stream which transactions it already holds."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from millpond.connector import SourceBatch
from millpond.progress import Progress

from . import pgoutput as po
from .decoding import ChangeDecoder
from .source_state import Snapshot, Table
from .sql import copy_rows, split_table
from .sql import ident as _ident

#: one logger for every part of the source, named as it has always been (operators filter on it)
log = logging.getLogger("millpond.connectors.postgres.source")

#: Tables up to this size are counted for snapshot progress when they have no statistics.
_COUNT_BYTES = 256 * 1024 * 1024
#: a table's copy logs its progress after this many seconds, then every PROGRESS_EVERY_S (rows, rate, estimate)
PROGRESS_FIRST_S = 2.0
PROGRESS_EVERY_S = 10.0


def _text_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


class SnapshotCopier(ChangeDecoder):
    """Copies the configured tables chunk by chunk before the stream starts."""

    async def _snapshot_chunk(self) -> SourceBatch:
        """Copy the next chunk of the current table; one batch per chunk."""
        if self._snap_conn is None:
            self._snap_conn = await self._connect()
            self._snap_txn = self._snap_conn.transaction(isolation="repeatable_read", readonly=True)
            await self._snap_txn.start()
            text = await self._snap_conn.fetchval("SELECT pg_current_snapshot()::text")
            if self._snapshot is None:
                self._snapshot = Snapshot.parse(text)
            log.info("%s: snapshot %s of %d table(s) begins", self._where, text, len(self.cfg.tables))
        conn = self._snap_conn
        oids = dict.fromkeys(self._by_name[split_table(n)].oid for n in self.cfg.tables)  # each table once
        tables = [self._tables[oid] for oid in oids]
        if self._snap_table >= len(tables):
            return await self._finish_snapshot()
        t = tables[self._snap_table]
        if not t.columns:
            cols = await conn.fetch(
                "SELECT attname, atttypid, format_type(atttypid, atttypmod) AS sqltype FROM pg_attribute "
                "WHERE attrelid = $1 AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                t.oid,
            )
            unknown = [c["atttypid"] for c in cols if not self.types.known(c["atttypid"])]
            if unknown:
                saved, self._conn = self._conn, conn
                try:
                    await self._learn_types(unknown)
                finally:
                    self._conn = saved
            t.columns = [c["attname"] for c in cols]
            t.decoders = [self.types.decoder(c["atttypid"]) for c in cols]
            t.key_index = [t.columns.index(k) for k in t.key_columns]
            t.key_types = [cols[i]["sqltype"] for i in t.key_index]
            t.column_types = {c["attname"]: c["sqltype"] for c in cols}
        select = ", ".join(f"src.{_ident(c)}" for c in t.columns)
        rel = f"{_ident(t.schema)}.{_ident(t.name)}"
        if self._snap_progress is None:  # rows copied in this run against the planner's estimate, if any
            self._snap_progress = Progress(
                f"{self._where}: snapshot of {t.schema}.{t.name}", unit="rows", total=await self._estimate(conn, t),
                approximate=True, logger=log, first=PROGRESS_FIRST_S, interval=PROGRESS_EVERY_S)
        limit = self.cfg.snapshot_chunk_rows
        if t.key_columns:
            # qualified: a bare name would sort by the ::text output column of that name
            order = ", ".join("src." + _ident(k) for k in t.key_columns)
            if self._snap_after is None:
                sql = f"SELECT {select} FROM {rel} AS src ORDER BY {order} LIMIT {limit}"
                args: list[Any] = []
            else:
                params = ", ".join(f"${i + 1}::text::{typ}" for i, typ in enumerate(t.key_types))
                sql = (f"SELECT {select} FROM {rel} AS src WHERE ({order}) > ({params}) "
                       f"ORDER BY {order} LIMIT {limit}")
                args = [str(v) for v in self._snap_after]
            rows = await copy_rows(conn, sql, args)
        else:  # no key to resume from: OFFSET in the same snapshot
            # No key to resume from: OFFSET within this snapshot's transaction only. After a
            # restart such a table is copied again from its start (its rows have no key, so a
            # consumer cannot tell repeats apart anyway; missing rows would be worse).
            done = self._snap_keyless_done
            rows = await copy_rows(conn, f"SELECT {select} FROM {rel} AS src OFFSET {done} LIMIT {limit}", [])
        lsn_text = po.format_lsn(self._committed_lsn)
        self._snap_chunk += 1
        start = {"snapshot_after": self._snap_after} if t.key_columns else {"snapshot_offset": self._snap_keyless_done}
        self._last_chunk = (f"{t.schema}.{t.name}", self._snap_chunk, start)
        records = []
        for row in rows:
            after = {name: (None if v is None else dec(v)) for name, dec, v in zip(t.columns, t.decoders, row)}
            records.append(self._change(t, "r", None, after, lsn_text, 0, 0, snapshot=True))
        self._snap_progress.update(self._snap_rows + len(rows))
        if len(rows) < limit:
            self._snap_progress.close()
            self._snap_progress = None
            self._snap_keyless_done = 0
            log.info("%s: snapshot of %s.%s done (%d rows in this run)", self._where, t.schema, t.name,
                     self._snap_rows + len(rows))
            self._snap_rows = 0
            self._snap_chunk = 0
            self._snap_table += 1
            self._snap_after = None
        elif t.key_columns:
            last = rows[-1]
            self._snap_after = [_text_or_none(last[i]) for i in t.key_index]
            self._snap_rows += len(rows)
            log.debug("%s: snapshot of %s.%s: %d rows, up to key %s", self._where, t.schema, t.name,
                      self._snap_rows, self._snap_after)
        else:
            self._snap_rows += len(rows)
            self._snap_keyless_done += len(rows)
        if self._snap_table >= len(tables):
            await self._finish_snapshot(keep_offset=True)
        return SourceBatch(records, self._offset(self._committed_lsn))

    async def _estimate(self, conn: asyncpg.Connection, t: Table) -> int | None:
        """About how many rows ``t`` has, for progress messages; None when unknown.

        The planner's ``reltuples`` costs nothing but is -1 (PostgreSQL 14+) or 0
        before the first VACUUM or ANALYZE, as after a bulk load. Then a table of
        up to :data:`_COUNT_BYTES` is counted (in the snapshot, so it is exact);
        a larger one gets no total rather than a wrong one.
        """
        if t.oid not in self._estimates:
            row = await conn.fetchrow(
                "SELECT reltuples::bigint AS tuples, pg_relation_size(oid) AS bytes FROM pg_class WHERE oid = $1",
                t.oid,
            )
            estimate: int | None = None
            if row is not None and row["tuples"] > 0:
                estimate = int(row["tuples"])
            elif row is not None and row["bytes"] <= _COUNT_BYTES:
                estimate = int(await conn.fetchval(f"SELECT count(*) FROM {_ident(t.schema)}.{_ident(t.name)}"))
            self._estimates[t.oid] = estimate
        return self._estimates[t.oid]

    async def _finish_snapshot(self, keep_offset: bool = False) -> SourceBatch:
        if self._snap_txn is not None:
            await self._snap_txn.commit()
            self._snap_txn = None
        if self._snap_conn is not None:
            await self._snap_conn.close()
            self._snap_conn = None
        self._snapshot_done = True
        self._snap_table = 0
        self._snap_after = None
        if self._snap_progress is not None:
            self._snap_progress.close()
            self._snap_progress = None
        log.info("%s: snapshot complete", self._where)
        return SourceBatch([], self._offset(self._committed_lsn))
