"""The slot and what it needs: server checks, the captured tables, the publication, and
advancing the slot to what the log holds (never further)."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg

from millpond.errors import ConfigError, ConnectorError, RetriableConnectorError

from . import pgoutput as po
from .source_state import SourceState, Table
from .sql import ident as _ident
from .sql import split_table

#: one logger for every part of the source, named as it has always been (operators filter on it)
log = logging.getLogger("millpond.connectors.postgres.source")


class SlotKeeper(SourceState):
    """Sets up the server side (publication, slot) and moves the slot as the log commits."""

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
    ) -> Table:
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
        return Table(oid, schema, name, topic, key_columns, ident)

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
