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
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import Field, SecretStr

from millpond import speedups
from millpond.connector import ConnectorConfig, ConnectorContext, Guarantee, Source, SourceBatch
from millpond.errors import ConfigError, ConnectorError, RetriableConnectorError
from millpond.progress import Progress
from millpond.records import JsonRecords, Record

from . import pgoutput as po
from .sql import connect, copy_rows, split_table
from .sql import ident as _ident
from .sql import literal as _literal
from .wire import (
    OID,
    SLOT_COMMIT_MS,
    SLOT_LSN,
    SLOT_NOW_MS,
    SLOT_OLD,
    SLOT_ROW,
    SLOT_XID,
    TxnRecords,
    copy_is_empty,
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
from .types import FAST_KINDS, TypeRegistry

log = logging.getLogger("millpond.connectors.postgres.source")

#: Tables up to this size are counted for snapshot progress when they have no statistics.
_COUNT_BYTES = 256 * 1024 * 1024
#: a table's copy logs its progress after this many seconds, then every PROGRESS_EVERY_S (rows, rate, estimate)
PROGRESS_FIRST_S = 2.0
PROGRESS_EVERY_S = 10.0

#: Stands for a TOASTed value that an update did not change and Postgres did not send.
UNAVAILABLE = "__millpond_unavailable_value"


class PostgresSourceConfig(ConnectorConfig):
    """``config:`` of a ``postgres-cdc`` source."""

    #: libpq-style DSN; its password is never logged
    dsn: SecretStr
    #: tables to capture, ``schema.table`` or ``table`` (schema ``public``)
    tables: list[str] = Field(min_length=1)
    #: replication slot; default ``millpond_<connector name>``
    slot: str | None = None
    #: publication; default ``millpond_<connector name>``
    publication: str | None = None
    create_slot: bool = True
    #: create the publication if missing, and add configured tables it lacks
    create_publication: bool = True
    snapshot_mode: Literal["initial", "never", "initial_only"] = "initial"
    snapshot_chunk_rows: int = Field(default=10_000, ge=1)
    #: topics are ``<topic_prefix>.<schema>.<table>``; default: the connector name
    topic_prefix: str | None = None
    #: per-table topic overrides: ``{"public.orders": "orders"}``
    topics: dict[str, str] = Field(default_factory=dict)
    #: WAL bytes per read (grows by itself for a larger transaction). A read is held as its
    #: compact bytes (about half this size; two while the next is fetched) and decoded a
    #: batch at a time. Larger reads run faster through a backlog written quicker than the
    #: server logs restart points (every 15 s), as each read decodes again from the last one.
    window_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    #: records per batch (whole transactions are never split, so one may be larger)
    max_batch_records: int = Field(default=20_000, ge=1)
    #: an idle stream still confirms progress this often, so the slot holds no old WAL
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    #: pause between reads that found nothing
    idle_sleep_s: float = Field(default=0.2, ge=0)


def _slot_name(name: str) -> str:
    return ("millpond_" + re.sub(r"[^a-z0-9_]", "_", name.lower()))[:63]


def _text_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


@dataclass(slots=True)
class _Table:
    """What the source knows of one captured table."""

    oid: int
    schema: str
    name: str
    topic: str
    key_columns: list[str]
    replica_identity: str
    #: from the latest Relation message (stream) or the catalog (snapshot)
    columns: list[str] = field(default_factory=list)
    decoders: list[Callable[[bytes], Any]] = field(default_factory=list)
    key_index: list[int] = field(default_factory=list)
    #: SQL types of the key columns (``format_type``), for resuming a snapshot copy by key
    key_types: list[str] = field(default_factory=list)
    #: ``{column: SQL type}`` (``format_type``, e.g. ``numeric(12,2)``) in column order, carried in
    #: every change's ``source.column_types``; one dict, replaced when the relation changes
    column_types: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class _Cursor:
    """A read (binary COPY) being decoded a batch at a time."""

    buffer: bytes
    pos: int | None  # the next row; None before the first
    upto: int  # the window's end LSN
    flush: int  # the WAL flush LSN when it was read
    transactions: int = 0  # found in it so far


@dataclass(slots=True)
class _Snapshot:
    """A ``pg_current_snapshot()``: which transactions it already saw."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> _Snapshot:
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def text(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(str(x) for x in sorted(self.xip))}"

    def saw(self, xid32: int) -> bool:
        """Was the 32-bit ``xid32`` committed and visible in this snapshot?

        pgoutput sends 32-bit xids, the snapshot has 64-bit ones: the xid is placed
        within 2^31 of ``xmax`` (ahead of it: started later, not seen).
        """
        diff = (xid32 - self.xmax) & 0xFFFFFFFF
        full = self.xmax + diff if diff < 0x80000000 else self.xmax - (0x100000000 - diff)
        if full < self.xmin:
            return True
        return full < self.xmax and full not in self.xip


class PostgresSource(Source):
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

    def __init__(self, config: PostgresSourceConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self.slot = config.slot or _slot_name(context.name)
        self.publication = config.publication or _slot_name(context.name)
        self.prefix = config.topic_prefix or context.name
        self.types = TypeRegistry()
        self._conn: asyncpg.Connection | None = None
        self._tables: dict[int, _Table] = {}
        #: relation OID -> how ``_decode.scan`` renders its inserts (tables it can take)
        self._codecs: dict[int, tuple[Any, ...]] = {}
        self._utf8 = False
        self._by_name: dict[tuple[str, str], _Table] = {}
        self._db = ""
        self._where = ""
        # offsets
        self._emitted_lsn = 0  # end LSN of the last transaction handed out
        self._committed_lsn = 0  # the log holds everything up to here
        self._slot_lsn = 0  # the slot's confirmed_flush_lsn as we last set or saw it
        # the read-ahead copy of the slot (see _fetch)
        self._reader: asyncpg.Connection | None = None
        self._reader_slot = ""
        self._read_lsn = 0  # where the reader slot stands: everything before was fetched
        self._fetching: asyncio.Task[tuple[bytes | None, int, int]] | None = None
        self._cursor: _Cursor | None = None  # the read being decoded
        # the slot is advanced in the background, on a connection of its own
        self._advancer: asyncpg.Connection | None = None
        self._advancing: asyncio.Task[None] | None = None
        self._snapshot: _Snapshot | None = None
        self._snapshot_done = True
        self._snap_table = 0
        self._snap_after: list[Any] | None = None
        self._snap_conn: asyncpg.Connection | None = None
        self._snap_txn: Any = None
        self._snap_rows = 0  # rows of the current table copied in this run, for progress
        self._snap_keyless_done = 0  # rows of a keyless table copied in this snapshot transaction
        self._estimates: dict[int, int | None] = {}
        self._snap_progress: Progress | None = None  # of the table being copied
        self._snap_chunk = 0  # chunks of the current table copied in this run
        #: the last snapshot batch's chunk, for ``origin_of``: table, chunk number, and where it starts
        #: (``snapshot_after``: the key it follows; a keyless table: ``snapshot_offset``, the rows before it)
        self._last_chunk: tuple[str, int, dict[str, Any]] | None = None
        # stream state
        self._ready: deque[tuple[list[JsonRecords], int, int]] = deque()  # (records, how many, end_lsn)
        self._window = config.window_bytes
        self._last_progress = time.monotonic()
        self._last_advance = time.monotonic()
        self._idle_until = 0.0
        #: bytes of WAL the slot holds (refreshed on each heartbeat), for monitoring
        self.slot_lag_bytes: int | None = None
        self.transactions_out = 0
        self.records_out = 0

    # -- lifecycle ------------------------------------------------------------

    async def _connect(self) -> asyncpg.Connection:
        return await connect(self.cfg.dsn.get_secret_value(), f"postgres-cdc {self.context.name!r}")

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

    def _reset_command(self) -> str:
        log_dir = self.context.extra.get("log_dir") or "DIR"
        return f"millpond groups reset {self.context.name} --to-earliest --execute --log {log_dir}"

    async def _check_slot_kept(self, conn: asyncpg.Connection) -> None:
        """Refuse to go on from a checkpoint whose slot is gone, creating nothing.

        The log's checkpoint says where the stream stopped; without the slot the
        server no longer keeps the WAL after it, so those changes are lost and a
        new slot would silently skip them. Only a new snapshot can make the
        topics whole again: the message says how to ask for one.
        """
        if await conn.fetchval("SELECT true FROM pg_replication_slots WHERE slot_name = $1", self.slot):
            return
        raise ConnectorError(
            f"{self._where}: the replication slot is gone (dropped outside millpond?) but the log holds a "
            f"checkpoint at {po.format_lsn(self._committed_lsn)}; the changes since then are lost to the "
            f"stream. Nothing was created. To start over with a new snapshot, reset the connector's "
            f"checkpoint: {self._reset_command()}"
        )

    def _restore(self, offset: Any | None) -> None:
        if offset is None:
            return
        if not isinstance(offset, dict) or "lsn" not in offset:
            raise ConfigError(f"{self._where}: not a postgres-cdc offset: {offset!r}")
        self._committed_lsn = self._emitted_lsn = self._slot_lsn = po.parse_lsn(offset["lsn"])
        self._snapshot_done = bool(offset.get("snapshot_done", True))
        snap = offset.get("snapshot")
        self._snapshot = _Snapshot.parse(snap) if snap else None
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

    async def _maybe_advance(self) -> None:
        """Advance the slot to the log's offset in the background, when due.

        Not per batch: each advance decodes the WAL again from the slot's
        restart point (a bulk load of 1M rows has no point to restart from in
        between), which doubled the server's work. The slot's lag is bounded
        by time and bytes; after a restart the reader re-reads at most that
        much and skips it by LSN. An advance that failed raises here, on the
        next commit.
        """
        if self._advancing is not None:
            if not self._advancing.done():
                return
            advancing, self._advancing = self._advancing, None
            advancing.result()
        behind = self._committed_lsn - self._slot_lsn
        if behind > 0 and (
            behind >= 4 * self.cfg.window_bytes
            or time.monotonic() - self._last_advance >= self.cfg.heartbeat_interval_s
        ):
            self._last_advance = time.monotonic()
            self._advancing = asyncio.create_task(self._advance_in_background(self._committed_lsn))

    async def _advance_in_background(self, lsn: int) -> None:
        if self._advancer is None:
            self._advancer = await self._connect()
        await self._advance(lsn, self._advancer)

    # -- checks and setup ------------------------------------------------------

    async def _check_server(self, conn: asyncpg.Connection) -> None:
        wal_level = await conn.fetchval("SHOW wal_level")
        if wal_level != "logical" and self.cfg.snapshot_mode != "initial_only":
            raise ConnectorError(
                f"{self._where}: the server's wal_level is {wal_level!r}; logical decoding needs "
                "wal_level = logical (ALTER SYSTEM SET wal_level = logical, then restart Postgres)"
            )
        row = await conn.fetchrow(
            "SELECT current_user AS who, rolreplication OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user"
        )
        if row is not None and not row["ok"] and self.cfg.snapshot_mode != "initial_only":
            raise ConnectorError(
                f"{self._where}: role {row['who']!r} lacks the REPLICATION privilege needed to read a "
                f"replication slot (ALTER ROLE {_ident(row['who'])} REPLICATION)"
            )

    async def _load_tables(self, conn: asyncpg.Connection) -> None:
        for spec in self.cfg.tables:
            schema, name = split_table(spec)
            row = await conn.fetchrow(
                "SELECT c.oid, c.relreplident::text AS relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                schema, name,
            )
            if row is None:
                raise ConfigError(f"{self._where}: table {schema}.{name} does not exist")
            table = await self._describe(conn, row["oid"], schema, name, row["relreplident"])
            self._tables[table.oid] = table
            self._by_name[(schema, name)] = table

    async def _describe(
        self, conn: asyncpg.Connection, oid: int, schema: str, name: str, ident: str
    ) -> _Table:
        keys = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = $1 AND (i.indisprimary OR (i.indisreplident AND $2 = 'i')) "
            "ORDER BY i.indisprimary DESC, k.n",
            oid, ident,
        )
        key_columns = list(dict.fromkeys(r["attname"] for r in keys))
        if ident == "n" or (ident == "d" and not key_columns):
            raise ConfigError(
                f"{self._where}: table {schema}.{name} has no primary key and REPLICA IDENTITY "
                f"{'NOTHING' if ident == 'n' else 'DEFAULT'}, so its updates and deletes cannot be "
                f"captured; add a primary key or ALTER TABLE {_ident(schema)}.{_ident(name)} REPLICA IDENTITY FULL"
            )
        topic = self.cfg.topics.get(f"{schema}.{name}") or self.cfg.topics.get(name) or (
            f"{self.prefix}.{schema}.{name}"
        )
        return _Table(oid, schema, name, topic, key_columns, ident)

    async def _ensure_publication(self, conn: asyncpg.Connection) -> None:
        exists = await conn.fetchval("SELECT true FROM pg_publication WHERE pubname = $1", self.publication)
        wanted = {(t.schema, t.name) for t in self._tables.values()}
        names = ", ".join(f"{_ident(s)}.{_ident(n)}" for s, n in sorted(wanted))
        if not exists:
            if not self.cfg.create_publication:
                raise ConfigError(f"{self._where}: publication {self.publication!r} does not exist")
            # via the root: a partitioned table's changes come under its own name, not its partitions'
            await conn.execute(
                f"CREATE PUBLICATION {_ident(self.publication)} FOR TABLE {names} "
                "WITH (publish_via_partition_root = true)"
            )
            log.info("%s: created publication %r for %s", self._where, self.publication, names)
            return
        rows = await conn.fetch(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", self.publication
        )
        missing = wanted - {(r["schemaname"], r["tablename"]) for r in rows}
        if missing:
            listed = ", ".join(f"{_ident(s)}.{_ident(n)}" for s, n in sorted(missing))
            if not self.cfg.create_publication:
                raise ConfigError(f"{self._where}: publication {self.publication!r} lacks {listed}")
            await conn.execute(f"ALTER PUBLICATION {_ident(self.publication)} ADD TABLE {listed}")

    async def _ensure_slot(self, conn: asyncpg.Connection) -> int:
        """The slot's confirmed LSN, creating the slot if it is missing."""
        row = await conn.fetchrow(
            "SELECT plugin, database, active_pid, confirmed_flush_lsn::text AS lsn "
            "FROM pg_replication_slots WHERE slot_name = $1",
            self.slot,
        )
        if row is None:
            if not self.cfg.create_slot:
                raise ConfigError(f"{self._where}: replication slot {self.slot!r} does not exist")
            created = await conn.fetchrow(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", self.slot
            )
            log.info("%s: created slot at %s", self._where, created["lsn"])
            self._slot_lsn = po.parse_lsn(created["lsn"])
            return self._slot_lsn
        if row["plugin"] != "pgoutput" or row["database"] != self._db:
            raise ConfigError(
                f"{self._where}: slot {self.slot!r} exists for plugin {row['plugin']!r} in database "
                f"{row['database']!r}; it must be a pgoutput slot of this database"
            )
        for _ in range(50):  # a killed reader's backend may hold the slot a few more seconds
            if row is None or row["active_pid"] is None:
                break
            await asyncio.sleep(0.2)
            row = await conn.fetchrow(
                "SELECT plugin, database, active_pid, confirmed_flush_lsn::text AS lsn "
                "FROM pg_replication_slots WHERE slot_name = $1",
                self.slot,
            )
        if row is None:
            raise RetriableConnectorError(f"{self._where}: slot {self.slot!r} vanished while starting")
        if row["active_pid"] is not None:
            raise RetriableConnectorError(
                f"{self._where}: slot {self.slot!r} is in use by another reader (backend PID "
                f"{row['active_pid']}); only one reader per slot"
            )
        self._slot_lsn = po.parse_lsn(row["lsn"])
        return self._slot_lsn

    async def _advance(self, lsn: int, conn: asyncpg.Connection | None = None) -> None:
        conn = conn or self._conn
        assert conn is not None
        try:
            await conn.execute("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)", self.slot,
                                     po.format_lsn(lsn))
        except asyncpg.ObjectInUseError as exc:
            raise RetriableConnectorError(f"{self._where}: slot is in use by another reader: {exc}") from exc
        self._slot_lsn = max(self._slot_lsn, lsn)

    # -- offsets ---------------------------------------------------------------

    def _offset(self, lsn: int) -> dict[str, Any]:
        off: dict[str, Any] = {"lsn": po.format_lsn(lsn), "snapshot_done": self._snapshot_done}
        if self._snapshot is not None:
            off["snapshot"] = self._snapshot.text()
        if not self._snapshot_done:
            off["snapshot_table"] = self._snap_table
            off["snapshot_after"] = self._snap_after
        return off

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

    async def _read_window(self) -> SourceBatch | None:
        """Decode the next batch of the current read into ``self._ready``, reading a
        new window of WAL when that one is done; maybe return a heartbeat."""
        if self._cursor is None:
            if self._fetching is None:
                self._fetching = asyncio.create_task(self._fetch())
            try:
                buffer, upto, flush = await self._fetching
            finally:
                self._fetching = None
            if buffer is None:  # nothing new since the last read
                return await self._heartbeat(upto)
            if upto < flush:
                # more WAL is there already: the server decodes the next window while
                # this one is decoded here and committed to the log
                self._fetching = asyncio.create_task(self._fetch(flush))
                await asyncio.sleep(0)  # let it send its query before the decoding holds the loop
            self._cursor = _Cursor(buffer, None, upto, flush)
        cursor = self._cursor
        before = len(self._ready)
        cursor.pos = await self._decode(cursor.buffer, cursor.pos, self.cfg.max_batch_records)
        cursor.transactions += len(self._ready) - before
        if cursor.pos is not None:
            return None  # the rest of this read at the next poll
        self._cursor = None
        upto, flush = cursor.upto, cursor.flush
        if not cursor.transactions and copy_is_empty(cursor.buffer) and upto < flush:
            # nothing whole in this window: a transaction larger than it, so widen the next read
            self._window *= 2
            return None
        if cursor.transactions or upto < flush:
            self._window = self.cfg.window_bytes
            return None
        return await self._heartbeat(upto)

    async def _heartbeat(self, upto: int) -> SourceBatch | None:
        """Everything committed before ``upto`` was read and nothing is pending: confirm
        it now and then, so the slot moves on (also after much WAL of other tables:
        every read decodes again from the slot's position)."""
        due = time.monotonic() - self._last_progress >= self.cfg.heartbeat_interval_s
        if upto > self._emitted_lsn and (due or upto - self._emitted_lsn >= self.cfg.window_bytes // 2):
            self._emitted_lsn = upto
            self._last_progress = time.monotonic()
            await self._refresh_lag()
            log.debug("%s: heartbeat at %s, slot lag %s bytes", self._where, po.format_lsn(upto),
                      self.slot_lag_bytes)
            return SourceBatch([], self._offset(upto))
        return None

    async def _fetch(self, flush: int = 0) -> tuple[bytes | None, int, int]:
        """Read the next window of changes: (binary COPY of ``lsn, data``, its end, the WAL flush LSN).

        ``flush`` is a WAL flush LSN seen before; the server is asked again only
        when the reader has caught up with it.

        The slot itself only ever moves to LSNs the log holds. Reading goes
        through a temporary copy of it (the reader slot, on a connection of its
        own), consumed as it is read, so the next window can be fetched while
        the last is still being decoded and committed: the server's decoding
        and ours run side by side instead of taking turns. A crash or restart
        drops the reader slot with its session; the next one is copied from
        the slot again, at or behind the log's offset, and what the log already
        holds is skipped.
        """
        conn = self._reader
        if conn is None:
            conn = await self._open_reader()
        try:
            start = self._read_lsn
            if flush <= start:
                flush = po.parse_lsn(await conn.fetchval("SELECT pg_current_wal_flush_lsn()::text"))
            if flush <= start:
                return None, start, flush
            upto = min(flush, start + self._window)
            chunks: list[bytes] = []

            async def received(chunk: bytes) -> None:
                chunks.append(bytes(chunk))

            # binary COPY: the rows arrive as one stream of bytes, not a Python object each
            await conn.copy_from_query(
                "SELECT lsn, data FROM pg_logical_slot_get_binary_changes("
                "$1, $2::text::pg_lsn, NULL, 'proto_version', '1', 'publication_names', $3)",
                self._reader_slot, po.format_lsn(upto), self.publication, output=received, format="binary",
            )
        except asyncpg.UndefinedObjectError as exc:
            raise ConnectorError(f"{self._where}: {exc} (was the slot or publication dropped?)") from exc
        except (OSError, asyncpg.PostgresConnectionError) as exc:
            raise RetriableConnectorError(f"{self._where}: reading the slot failed: {exc}") from exc
        self._read_lsn = upto
        return b"".join(chunks), upto, flush

    async def _open_reader(self) -> asyncpg.Connection:
        """A connection and, in its session, a temporary copy of the slot at the slot's position."""
        self._reader = conn = await self._connect()
        self._reader_slot = f"{self.slot[:40]}_reader_{os.getpid()}_{id(self) % 10_000}"  # <= 63 chars
        try:
            await conn.execute("SELECT pg_copy_logical_replication_slot($1, $2, true)", self.slot, self._reader_slot)
        except asyncpg.ObjectInUseError as exc:
            raise RetriableConnectorError(f"{self._where}: slot is in use by another reader: {exc}") from exc
        except asyncpg.ConfigurationLimitExceededError as exc:
            raise RetriableConnectorError(
                f"{self._where}: cannot make the temporary copy of the slot it reads through: {exc}; "
                "each postgres-cdc source needs two replication slots (raise max_replication_slots)"
            ) from exc
        self._read_lsn = self._slot_lsn
        return conn

    async def slot_lag(self) -> int | None:
        """Bytes of WAL the slot holds back (current WAL position minus the slot's restart LSN)."""
        await self._refresh_lag()
        return self.slot_lag_bytes

    async def _refresh_lag(self) -> None:
        assert self._conn is not None
        self.slot_lag_bytes = await self._conn.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = $1",
            self.slot,
        )

    # -- decoding ----------------------------------------------------------------

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

    def _codec(self, t: _Table) -> tuple[Any, ...] | None:
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

    def _source_block(self, t: _Table, xid: int, commit_ms: int, snapshot: bool = False) -> dict[str, Any]:
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

    def _row(self, t: _Table, data: po.TupleData | None, fill: po.TupleData | None,
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
        self, t: _Table, msg: po.Update, lsn: str, xid: int, commit_ms: int, txn: TxnRecords
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

    async def _read_back(self, t: _Table, after: dict[str, Any]) -> list[str]:
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

    def _change(self, t: _Table, op: str, before: dict[str, Any] | None, after: dict[str, Any] | None,
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

    # -- snapshot ------------------------------------------------------------------

    async def _snapshot_chunk(self) -> SourceBatch:
        """Copy the next chunk of the current table; one batch per chunk."""
        if self._snap_conn is None:
            self._snap_conn = await self._connect()
            self._snap_txn = self._snap_conn.transaction(isolation="repeatable_read", readonly=True)
            await self._snap_txn.start()
            text = await self._snap_conn.fetchval("SELECT pg_current_snapshot()::text")
            if self._snapshot is None:
                self._snapshot = _Snapshot.parse(text)
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

    async def _estimate(self, conn: asyncpg.Connection, t: _Table) -> int | None:
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
