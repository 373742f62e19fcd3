"""Postgres CDC source: logical decoding with ``pgoutput`` over plain SQL.

How it stays exactly-once
-------------------------
The slot never moves past what the log holds. Every :class:`SourceBatch`
holds whole Postgres transactions and, as its offset, the end LSN of the last
of them. The runtime appends the records and that offset in one log
transaction and only then calls :meth:`PostgresSource.commit`; the slot is
advanced (``pg_replication_slot_advance``) to a committed LSN only. Changes
are read through a temporary copy of the slot (the reader slot, see
:meth:`PostgresSource._fetch`), so reading can run ahead of the log while the
slot stays behind. After a crash the log's offset wins: the reader slot is
gone with its session, a new one is copied from the slot (at or behind the
offset), transactions that end at or below the offset are skipped, so none is
appended twice, and the slot still holds everything after it.

Initial snapshot
----------------
The slot is created first (outside any transaction), then each table is
copied in one ``REPEATABLE READ READ ONLY`` transaction whose
``pg_current_snapshot()`` is kept in the offset. Streamed transactions that
snapshot already saw are skipped; later ones are streamed, so the snapshot
plus the stream equal the table. The copy goes in key order in chunks, each
chunk a batch whose offset names the table and last key copied: a restart
mid-copy goes on from there in a new snapshot; the stream then replays the
few changes that snapshot already saw, which converges to the same rows.

Record shape (one topic per table, ``<topic_prefix>.<schema>.<table>``)
----------------------------------------------------------------------
``key`` = ``{pk column: value}``; ``value`` = ``{"before", "after", "op",
"source", "ts_ms"}`` with ``op`` one of ``c`` (insert), ``u`` (update),
``d`` (delete), ``r`` (snapshot read), ``t`` (truncate, key None). A delete
is followed by a tombstone (value None) for the same key. An update that
changes the key is a delete (+ tombstone) of the old key and a create of
the new one. A TOASTed column that an update left unchanged is filled from
the old row when Postgres sends it (REPLICA IDENTITY FULL); otherwise it is
set to :data:`UNAVAILABLE` and named in ``source.unavailable`` — never a
silent null — and a sink keeps the value it has. When the key changed too,
no sink has that value, so it is read back from the table (named in
``source.read_back``; see :meth:`PostgresSource._read_back`).

Column types
------------
``source.column_types`` names every column's SQL type as ``format_type``
prints it (``{"id": "bigint", "total": "numeric(12,2)", "tags": "text[]"}``),
from the latest Relation message (stream) or the catalog (snapshot), in
column order. It is one dict per table, replaced only when the relation
changes, and the C path writes it as part of its fixed value template (no
cost per row beyond its bytes, which zstd mostly takes back); a sink can
create exact types and see ADD COLUMN, DROP COLUMN and type changes as they
come (see the ``postgres`` sink). A relation change applies to the changes
after it in the stream; pgoutput sends nothing for the rows a DDL itself
rewrote or filled (an ADD COLUMN ... DEFAULT), so those reach a sink only
through a later change of the row or a new snapshot.

Offsets look like ``{"lsn": "0/16B3748", "snapshot_done": true, "snapshot":
"xmin:xmax:xip"}`` (plus ``snapshot_table`` / ``snapshot_after`` while the
copy runs). ``slot_lag_bytes`` / :meth:`PostgresSource.slot_lag` tell how much
WAL the slot holds; an idle stream sends an empty batch (a heartbeat) every
``heartbeat_interval_s`` so the slot moves on even when other tables write.

Layout
------
``source_config.py`` (settings), ``source_state.py`` (the fields every
part shares, and the offset), ``slot.py`` (server checks, publication, slot),
``decoding.py`` (pgoutput into records), ``reader.py`` (windows of WAL),
``snapshot.py`` (the initial copy); :class:`PostgresSource` here puts them
together behind the Source seam (start, poll, commit, stop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

from millpond.connector import ConnectorConfig, Guarantee, SourceBatch
from millpond.errors import ConfigError, ConnectorError
from millpond.records import JsonRecords, Record

from . import pgoutput as po
from .decoding import UNAVAILABLE
from .reader import WalReader
from .snapshot import SnapshotCopier
from .source_config import PostgresSourceConfig
from .source_state import Snapshot
from .sql import literal as _literal

#: one logger for every part of the source, named as it has always been (operators filter on it)
log = logging.getLogger("millpond.connectors.postgres.source")


class PostgresSource(WalReader, SnapshotCopier):
    """``postgres-cdc``: changes of chosen tables, one batch per whole transaction(s)."""

    guarantee: ClassVar[Guarantee] = Guarantee.exactly_once
    config_model: ClassVar[type[ConnectorConfig]] = PostgresSourceConfig

    @classmethod
    def validate_offset(cls, offset: Any) -> Any:
        """``{"lsn": "X/Y"}``: resume after the transactions that end at or below this LSN (the slot
        must not be past it). Deleting the offset instead means a new snapshot of every table,
        taken at the slot's position, then streaming from there."""
        if not isinstance(offset, dict) or not isinstance(offset.get("lsn"), str):
            raise ValueError('a postgres-cdc offset is {"lsn": "X/Y"} (or DELETE the offsets for a new snapshot)')
        po.parse_lsn(offset["lsn"])
        return offset

    async def start(self, offset: Any | None) -> None:
        self._conn = conn = await self._connect()
        self._db = await conn.fetchval("SELECT current_database()")
        self._where = f"postgres-cdc {self.context.name!r} (database {self._db!r}, slot {self.slot!r})"
        # _decode.c copies text as it comes, so it needs UTF-8 (which PostgreSQL then guarantees)
        self._utf8 = await conn.fetchval("SHOW server_encoding") == "UTF8"
        await self._check_server(conn)
        await self._load_tables(conn)
        self._restore(offset)
        streaming = self.cfg.snapshot_mode != "initial_only"
        if streaming and offset is not None:
            # before anything is created: a refused start leaves no slot holding WAL behind
            await self._check_slot_kept(conn)
        if streaming:
            await self._ensure_publication(conn)
        slot = None
        if streaming:
            slot = await self._ensure_slot(conn)
        if offset is None:
            self._snapshot_done = self.cfg.snapshot_mode == "never"
            if slot is not None:
                self._committed_lsn = self._emitted_lsn = slot
        elif slot is not None:
            if slot > self._committed_lsn and self._snapshot_done:
                raise ConnectorError(
                    f"{self._where}: the slot is at {po.format_lsn(slot)}, past the log's offset "
                    f"{po.format_lsn(self._committed_lsn)}; the changes between them are gone. "
                    f"To start over with a new snapshot, drop the slot (SELECT pg_drop_replication_slot("
                    f"{_literal(self.slot)})) and reset the connector's checkpoint: {self._reset_command()}"
                )
            if slot < self._committed_lsn:
                await self._advance(self._committed_lsn)
        log.info(
            "%s: starting at %s, snapshot %s (mode %s), tables %s",
            self._where, po.format_lsn(self._committed_lsn),
            "done" if self._snapshot_done else "to do", self.cfg.snapshot_mode,
            ", ".join(f"{t.schema}.{t.name}" for t in self._tables.values()),
        )

    def _restore(self, offset: Any | None) -> None:
        if offset is None:
            return
        if not isinstance(offset, dict) or "lsn" not in offset:
            raise ConfigError(f"{self._where}: not a postgres-cdc offset: {offset!r}")
        self._committed_lsn = self._emitted_lsn = self._slot_lsn = po.parse_lsn(offset["lsn"])
        self._snapshot_done = bool(offset.get("snapshot_done", True))
        snap = offset.get("snapshot")
        self._snapshot = Snapshot.parse(snap) if snap else None
        self._snap_table = int(offset.get("snapshot_table", 0))
        self._snap_after = offset.get("snapshot_after")

    async def stop(self) -> None:
        for task in (self._fetching, self._advancing):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._fetching = self._advancing = None
        if self._conn is not None and not self._conn.is_closed() and self._committed_lsn > self._slot_lsn:
            try:  # so a stopped source holds no more WAL than the log needs
                await asyncio.wait_for(self._advance(self._committed_lsn), 30)
            except Exception as exc:  # noqa: BLE001 - the next start advances it too
                log.warning("%s: could not advance the slot on stop: %s", self._where, exc)
        for conn in (self._snap_conn, self._reader, self._advancer, self._conn):
            if conn is not None and not conn.is_closed():
                try:
                    await conn.close(timeout=5)
                except Exception:  # noqa: BLE001 - closing is best effort
                    conn.terminate()
        self._snap_conn = self._reader = self._advancer = self._conn = None

    async def commit(self, offset: Any) -> None:
        lsn = po.parse_lsn(offset["lsn"])
        if lsn > self._committed_lsn:
            self._committed_lsn = lsn
        await self._maybe_advance()

    # -- poll --------------------------------------------------------------------

    async def poll(self) -> SourceBatch | None:
        if not self._snapshot_done:
            return await self._snapshot_chunk()
        if self.cfg.snapshot_mode == "initial_only":
            return None
        if not self._ready:
            if time.monotonic() < self._idle_until:
                return None
            heartbeat = await self._read_window()
            if not self._ready:
                if heartbeat is not None:
                    return heartbeat
                self._idle_until = time.monotonic() + self.cfg.idle_sleep_s
                return None
        merged: dict[str, JsonRecords] = {}
        count = 0
        end = self._emitted_lsn
        while self._ready:
            size = self._ready[0][1]
            if count and count + size > self.cfg.max_batch_records:
                break
            txn_records, _, end = self._ready.popleft()
            for records in txn_records:
                into = merged.get(records.topic)
                if into is None:
                    merged[records.topic] = records
                else:
                    into.extend(records)
            count += size
            self.transactions_out += 1
        self._emitted_lsn = end
        self.records_out += count
        self._last_progress = time.monotonic()
        return SourceBatch([], self._offset(end), list(merged.values()))

    def origin_of(self, record: Record) -> dict[str, Any] | None:
        """Where a change came from, read from its envelope's ``source`` block: the table, the LSN
        of the change and the transaction id; for a snapshot row the table, the snapshot, and the
        chunk: its number in this run and where it starts (the key it follows, null for the table's
        first; for a table without a key, the rows copied before it).

        The envelope is what a sink sees too, so a dead letter and the row it would have become
        name the same change. None when a transform replaced the envelope before it failed: the
        runtime then names the batch's checkpoint.
        """
        value = record.value
        if isinstance(value, (bytes, str)):
            try:
                value = json.loads(value)
            except ValueError:
                return None
        source = value.get("source") if isinstance(value, dict) else None
        if not isinstance(source, dict) or source.get("connector") != "postgres-cdc" or "table" not in source:
            return None
        table = f"{source.get('schema')}.{source['table']}"
        if not source.get("snapshot"):
            return {"table": table, "lsn": source.get("lsn"), "txid": source.get("txid")}
        origin: dict[str, Any] = {"table": table}
        if self._snapshot is not None:
            origin["snapshot"] = self._snapshot.text()
        chunk = self._last_chunk
        if chunk is not None and chunk[0] == table:
            origin["snapshot_chunk"] = chunk[1]
            origin.update(chunk[2])
        return origin


__all__ = ["UNAVAILABLE", "PostgresSource", "PostgresSourceConfig"]
