"""Postgres sink: upserts and deletes by primary key, exactly-once through an offsets table.

``write`` only buffers. ``flush(offsets)`` applies everything buffered and
stores ``offsets`` (the next offset to read per topic-partition) in the
connector's offsets table in *one* database transaction, so rows and offsets
never disagree; ``start`` returns the stored offsets and the runtime seeks
there. A replay after a crash therefore starts exactly after the last flush.

What a record means (``value`` as the converter deserialised it):

- a CDC envelope (``{"op", "after", "before", ...}``, as ``postgres-cdc``
  writes): ``c``/``u``/``r`` upsert ``after``; ``d`` deletes the key;
  ``t`` truncates the table;
- any other dict: an upsert of that row;
- ``None`` (a tombstone): a delete of the record's key.

Rows go in through ``COPY`` (binary) into a temporary staging table of
JSON documents, then one ``INSERT ... SELECT jsonb_populate_record(...) ON
CONFLICT (pk) DO UPDATE`` per table: PostgreSQL itself turns each JSON value
into the column's type (arrays, jsonb, bytea in ``\\x`` hex, timestamps,
numerics as strings...). Within one flush only the last change of each key
is applied, which gives the same rows as applying them one by one. Columns a
row does not carry (or carries as the source's "unavailable" TOAST marker)
keep their current value.

Column types and schema changes
-------------------------------
A ``postgres-cdc`` change names every column's SQL type in
``source.column_types`` (``{"id": "bigint", "total": "numeric(12,2)"}``, the
relation as the source last saw it). ``auto_create`` creates exactly those
types, and ``schema_changes`` says what happens when they differ from the
table's columns:

- ``add`` (default): a column the source has and the table lacks is added
  (``ALTER TABLE ... ADD COLUMN``); a column dropped or retyped at the source
  while the sink runs stops the sink with a message naming table and column
  (dropping data is never done unasked).
- ``apply``: the table follows the source: columns are added, dropped and
  retyped (``ALTER COLUMN ... TYPE ... USING col::type``).
- ``fail``: any difference that needs a change to the table stops the sink.

A drop or a type change is a change between two records of one topic, so a
table's own extra columns or types (or those of another topic written into
the same table) are left alone. A sink that stopped resumes from its last
flush, before the change, so setting ``apply`` and restarting applies it.

The changes run in the flush's transaction, in stream order: rows before an
``ALTER`` are written before it, rows after it after it. A type the sink's
database does not know (an enum of the source's) becomes ``text``, with a
warning. Rows that existed before an ADD COLUMN get NULL there: pgoutput
sends nothing for a DEFAULT the source filled them with (see the source's
docstring), so such a default reaches the sink only row by row as rows change.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import asyncpg
import orjson
from pydantic import Field, SecretStr

from millpond.connector import ConnectorConfig, ConnectorContext, Guarantee, Sink
from millpond.errors import ConfigError, ConnectorError, RecordError, RetriableConnectorError
from millpond.records import Record, TopicPartition

from .source import UNAVAILABLE
from .sql import connect, split_table
from .sql import ident as _ident

log = logging.getLogger("millpond.connectors.postgres.sink")

STAGE = "millpond_stage"


class PostgresSinkConfig(ConnectorConfig):
    """``config:`` of a ``postgres`` sink."""

    dsn: SecretStr
    #: one table for every topic (``schema.table``)
    table: str | None = None
    #: per-topic tables: ``{"cdc.public.orders": "replica.orders"}``
    tables: dict[str, str] = Field(default_factory=dict)
    #: schema for tables named after their topic (default: from the topic
    #: ``<prefix>.<schema>.<table>``, else ``public``)
    schema_: str | None = Field(default=None, alias="schema")
    #: key columns when neither the record key nor the table's primary key says
    key_columns: list[str] | None = None
    #: create a missing table from the first record (types inferred from JSON values)
    auto_create: bool = False
    #: the table holding this sink's offsets (created if missing)
    offsets_table: str = "millpond_sink_offsets"
    #: apply ``op: t`` (truncate) envelopes
    apply_truncate: bool = True
    #: what a change of the source's columns does to the table (see the module's docstring)
    schema_changes: Literal["add", "apply", "fail"] = "add"


@dataclass(slots=True)
class _Target:
    schema: str
    name: str
    columns: list[str]
    key: list[str]
    #: the key is the table's primary key (ON CONFLICT works); else delete + insert
    unique: bool = True
    sql: str = ""
    #: ``{column: SQL type}`` of the table as the buffered changes leave it (``columns`` is the
    #: table as the last flush left it)
    types: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sql = f"{_ident(self.schema)}.{_ident(self.name)}"


#: one encoder for every document (json.dumps with options builds a new one per call)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


_UPSERTS = frozenset(("c", "u", "r"))
#: key values that are hashable as they are (the usual single-column keys)
_SCALARS = frozenset((int, str))


def _key_of(row: dict[str, Any], columns: list[str]) -> Any:
    """A hashable identity of the row's key (JSON text when a key value is a list or dict)."""
    if len(columns) == 1:
        value = row[columns[0]]
        if value.__class__ in _SCALARS:
            return (value,)
    values = tuple(row[k] for k in columns)
    try:
        hash(values)
    except TypeError:
        return _encode(values)
    return values


def _document(row: dict[str, Any]) -> str:
    """``row`` as JSON text for the staging table: orjson (about 8x faster than the
    stdlib encoder), the stdlib for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(row, default=str).decode()  # string keys: rows come from JSON objects
    except TypeError:
        pass
    try:
        return orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return _encode(row)


class _Entry(NamedTuple):
    target: _Target
    what: str  # "up" | "del" | "trunc" | "ddl" (row: statements, why, the columns after, where)
    row: dict[str, Any] | None
    key: Any


def _sql_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, (dict, list)):
        return "jsonb"
    return "text"


class PostgresSink(Sink):
    """``postgres``: rows into tables, offsets in the same transaction."""

    guarantee: ClassVar[Guarantee] = Guarantee.exactly_once
    config_model: ClassVar[type[ConnectorConfig]] = PostgresSinkConfig
    owns_offsets: ClassVar[bool] = True

    def __init__(self, config: PostgresSinkConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self._conn: asyncpg.Connection | None = None
        self._buffer: list[_Entry] = []
        self._targets: dict[str, _Target] = {}
        self._by_topic: dict[str, _Target] = {}
        #: per topic, the source's ``column_types`` of the last change seen
        self._seen: dict[str, dict[str, str]] = {}
        self._where = f"postgres sink {context.name!r}"
        self.rows_written = 0
        #: the stored offsets as this sink last read or wrote them (see ``_check_owner``)
        self._expected: dict[TopicPartition, int] = {}

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> Mapping[TopicPartition, int] | None:
        self._conn = conn = await connect(self.cfg.dsn.get_secret_value(), self._where)
        self._where = f"postgres sink {self.context.name!r} (database {await conn.fetchval('SELECT current_database()')!r})"
        offsets = self._offsets_sql()
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {offsets} (connector text NOT NULL, topic text NOT NULL, "
                "partition int NOT NULL, next_offset bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), "
                "PRIMARY KEY (connector, topic, partition))"
            )
        except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError):
            pass  # another worker's task created it at the same moment (IF NOT EXISTS does not lock)
        await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (doc jsonb) ON COMMIT DELETE ROWS")
        stored = await self.stored_offsets()
        log.info("%s: resuming from %d stored offset(s)", self._where, len(stored))
        return stored

    async def stored_offsets(self) -> dict[TopicPartition, int]:
        """The offsets table as it is now (after a rebalance, another worker may have moved partitions on)."""
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where}: stored_offsets before start")
        try:
            rows = await conn.fetch(f"SELECT topic, partition, next_offset FROM {self._offsets_sql()} "
                                    "WHERE connector = $1", self.context.name)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise RetriableConnectorError(f"{self._where}: cannot read the stored offsets: {exc}") from exc
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        self._expected = dict(stored)
        return stored

    async def stop(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            try:
                await self._conn.close(timeout=5)
            except Exception:  # noqa: BLE001 - closing is best effort
                self._conn.terminate()
        self._conn = None

    async def reset_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store the new next offsets in the offsets table (upserts by key make the replay land once per key)."""
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where}: reset_offsets before start")
        try:
            await conn.execute(
                f"INSERT INTO {self._offsets_sql()} AS o (connector, topic, partition, next_offset) "
                "SELECT $1, t, p, n FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) "
                "ON CONFLICT (connector, topic, partition) DO UPDATE "
                "SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                self.context.name,
                [tp[0] for tp in offsets], [tp[1] for tp in offsets], list(offsets.values()),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise RetriableConnectorError(f"{self._where}: offsets not reset, nothing changed: {exc}") from exc
        self._expected.update({TopicPartition(*tp): o for tp, o in offsets.items()})
        log.info("%s: offsets reset to %s", self._where,
                 ", ".join(f"{tp[0]}-{tp[1]}@{o}" for tp, o in sorted(offsets.items())))

    def _offsets_sql(self) -> str:
        schema, name = split_table(self.cfg.offsets_table)
        return f"{_ident(schema)}.{_ident(name)}"

    # -- write / flush ----------------------------------------------------------

    async def write(self, records: list[Record]) -> None:
        """Check every record (raising RecordError before buffering any), then buffer them.

        A failed call leaves no trace: what it learnt of the source's columns is
        undone with its entries, so the runtime's one-by-one retry of the batch
        sees (and buffers) a schema change again.
        """
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where}: write before start")
        seen = dict(self._seen)
        undo: list[tuple[_Target, dict[str, str]]] = []
        try:
            self._buffer.extend(await self._entries(conn, records, undo))
        except BaseException:
            self._seen = seen
            for target, types in reversed(undo):
                target.types = types
            raise

    async def _entries(
        self, conn: asyncpg.Connection, records: list[Record], undo: list[tuple[_Target, dict[str, str]]]
    ) -> list[_Entry]:
        entries: list[_Entry] = []
        by_topic = self._by_topic
        for record in records:
            what, row = self._meaning(record)
            # the table is known after a topic's first record: no coroutine per record
            target = by_topic.get(record.topic or "")
            if target is None:
                target = await self._target(conn, record, row if what == "up" else None)
            value = record.value
            if value.__class__ is dict and "op" in value:
                source = value.get("source")
                types = source.get("column_types") if source.__class__ is dict else None
                if types is not None and types != self._seen.get(record.topic or ""):
                    ddl = await self._schema_change(conn, target, types, record, undo)
                    if ddl is not None:
                        entries.append(ddl)
            if what == "up" and row.__class__ is dict and target.key:
                # the common upsert, inline; a missing key column takes _entry's path for its error
                assert row is not None
                try:
                    entries.append(_Entry(target, what, row, _key_of(row, target.key)))
                    continue
                except KeyError:
                    pass
            entry = self._entry(target, record, what, row)
            if entry is not None:
                entries.append(entry)
        return entries

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where}: flush before start")
        # a schema change in the buffer moves a table's columns inside the transaction:
        # if it rolls back, so do they (the buffer stays for a retry)
        columns = [(t, t.columns) for t in self._targets.values()]
        try:
            async with conn.transaction():
                if offsets:
                    await self._check_owner(conn, offsets)
                written = await self._apply(conn, self._buffer)
                if offsets:
                    await conn.execute(
                        f"INSERT INTO {self._offsets_sql()} AS o (connector, topic, partition, next_offset) "
                        "SELECT $1, t, p, n FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) "
                        "ON CONFLICT (connector, topic, partition) DO UPDATE "
                        "SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                        self.context.name,
                        [tp.topic for tp in offsets], [tp.partition for tp in offsets], list(offsets.values()),
                    )
        except BaseException as exc:
            for target, before in columns:
                target.columns = before
            if isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
                raise RetriableConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
            if isinstance(exc, asyncpg.PostgresError):
                raise ConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
            raise
        self._buffer = []
        self.rows_written += written
        self._expected.update(offsets)

    async def _check_owner(self, conn: asyncpg.Connection, offsets: Mapping[TopicPartition, int]) -> None:
        """Lock this sink's offset rows of the partitions in ``offsets`` and check that each stands
        where this sink last read or wrote it. When several workers share a topic, a writer that lost
        a partition without knowing it (paused past its group session) must not write over what the
        new owner wrote since: its flush fails here, nothing of it is written, and its task restarts
        from the stored offsets."""
        rows = await conn.fetch(
            f"SELECT topic, partition, next_offset FROM {self._offsets_sql()} WHERE connector = $1 AND "
            "(topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[])) FOR UPDATE",
            self.context.name, [tp.topic for tp in offsets], [tp.partition for tp in offsets],
        )
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        moved = [tp for tp in offsets if stored.get(tp) != self._expected.get(tp)]
        if moved:
            tp = moved[0]
            raise RetriableConnectorError(
                f"{self._where}: {tp.topic}-{tp.partition} was moved on to offset {stored.get(tp)} by another "
                f"writer (this one last saw {self._expected.get(tp)}): the partition is no longer this task's; "
                f"nothing was written")

    # -- applying records -----------------------------------------------------

    def _table_for(self, topic: str) -> tuple[str, str]:
        name = self.cfg.tables.get(topic) or self.cfg.table
        if name:
            return split_table(name)
        parts = topic.split(".")
        if len(parts) >= 3:
            schema, table = parts[-2], parts[-1]
        else:
            schema, table = "public", re.sub(r"[^A-Za-z0-9_]", "_", topic)
        return (self.cfg.schema_ or schema, table)

    async def _target(self, conn: asyncpg.Connection, record: Record, row: dict[str, Any] | None) -> _Target:
        topic = record.topic or ""
        target = self._by_topic.get(topic)
        if target is not None:
            return target
        schema, name = self._table_for(topic)
        target = self._targets.get(f"{schema}.{name}")
        if target is None:
            target = await self._describe(conn, schema, name)
            if target is None:
                if not self.cfg.auto_create or row is None:
                    raise ConfigError(
                        f"{self._where}: table {schema}.{name} (for topic {topic!r}) does not exist; "
                        "create it or set auto_create: true"
                    )
                target = await self._create(conn, schema, name, record, row)
            if not target.key and isinstance(record.key, dict) and record.key:
                # no primary key and none configured: the record key names the key columns
                target.key = [k for k in record.key if k in target.columns]
                target.unique = False
            self._targets[f"{schema}.{name}"] = target
        self._by_topic[topic] = target
        return target

    async def _describe(self, conn: asyncpg.Connection, schema: str, name: str) -> _Target | None:
        oid = await conn.fetchval(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            schema, name,
        )
        if oid is None:
            return None
        cols = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS sqltype FROM pg_attribute "
            "WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
            oid,
        )
        key = await conn.fetch(
            "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
            oid,
        )
        key_columns = [r["attname"] for r in key]
        return _Target(schema, name, [r["attname"] for r in cols], key_columns or list(self.cfg.key_columns or []),
                       unique=bool(key_columns), types={r["attname"]: r["sqltype"] for r in cols})

    async def _create(
        self, conn: asyncpg.Connection, schema: str, name: str, record: Record, row: dict[str, Any]
    ) -> _Target:
        """Create the table of ``record``: the source's column types when the change names them,
        else types guessed from the JSON values of ``row``."""
        key = list(self.cfg.key_columns or (record.key.keys() if isinstance(record.key, dict) else []))
        source = record.value.get("source") if isinstance(record.value, dict) else None
        named = source.get("column_types") if isinstance(source, dict) else None
        if isinstance(named, dict) and named:
            known = await self._known_types(conn, named, f"{schema}.{name}")
            columns = dict.fromkeys([*key, *named, *row])
            types = {c: known.get(c) or _sql_type(row.get(c, (record.key or {}).get(c))) for c in columns}
        else:
            columns = dict.fromkeys([*key, *row])
            types = {c: _sql_type(row.get(c, (record.key or {}).get(c))) for c in columns}
        defs = [f"{_ident(c)} {typ}" for c, typ in types.items()]
        if key:
            defs.append(f"PRIMARY KEY ({', '.join(_ident(k) for k in key)})")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
        await conn.execute(f"CREATE TABLE IF NOT EXISTS {_ident(schema)}.{_ident(name)} ({', '.join(defs)})")
        log.info("%s: created table %s.%s (%s)", self._where, schema, name, ", ".join(defs))
        return _Target(schema, name, list(columns), key, types=types)

    async def _known_types(self, conn: asyncpg.Connection, types: dict[str, str], table: str) -> dict[str, str]:
        """``types`` with each type this database lacks (a source's enum, say) replaced by ``text``."""
        rows = await conn.fetch(
            "SELECT t, to_regtype(t) IS NOT NULL AS known FROM unnest($1::text[]) AS u(t)", sorted(set(types.values()))
        )
        known = {r["t"] for r in rows if r["known"]}
        out = {}
        for column, typ in types.items():
            if typ not in known:
                log.warning("%s: type %r of column %s.%s is unknown in this database; the column is text",
                            self._where, typ, table, column)
                typ = "text"
            out[column] = typ
        return out

    async def _schema_change(
        self, conn: asyncpg.Connection, t: _Target, types: dict[str, str], record: Record,
        undo: list[tuple[_Target, dict[str, str]]],
    ) -> _Entry | None:
        """Compare the source's ``types`` with the table; the DDL to run in order, or a clear stop.

        What the source said before on this topic tells the changes: a column
        that was there and is gone was dropped at the source, one whose type
        differs from before was retyped. Without an earlier view (the topic's
        first change in this run) only missing columns are added.
        """
        topic = record.topic or ""
        previous = self._seen.get(topic)
        self._seen[topic] = types
        mode = self.cfg.schema_changes
        table = f"{t.schema}.{t.name}"
        where = f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
        wanted = await self._known_types(conn, types, table)
        added = [c for c in types if c not in t.types]
        if previous is not None:
            dropped = [c for c in previous if c not in types and c in t.types]
            retyped = [c for c in types if c in t.types and c in previous and previous[c] != types[c]
                       and wanted[c] != t.types[c]]
        else:
            dropped, retyped = [], []
        if not (added or dropped or retyped):
            return None
        lost_key = [c for c in dropped if c in t.key]
        if lost_key:
            raise ConnectorError(
                f"{self._where}: key column {table}.{lost_key[0]} was dropped at the source ({where}); "
                "the sink cannot go on keyed by it. Change the table's primary key by hand, then restart"
            )
        problems = [(c, f"was added at the source (type {types[c]})") for c in added if mode == "fail"]
        if mode != "apply":
            problems += [(c, "was dropped at the source") for c in dropped]
            problems += [(c, f"changed type at the source from {(previous or {}).get(c, t.types[c])} to {types[c]}")
                         for c in retyped]
        if problems:
            column, what = problems[0]
            more = f" (and {len(problems) - 1} more change(s))" if len(problems) > 1 else ""
            raise ConnectorError(
                f"{self._where}: column {table}.{column} {what} ({where}){more}; schema_changes is "
                f"{mode!r}, so the sink stops. Change {table} by hand, or set schema_changes: apply, then restart"
            )
        sql = [f"ALTER TABLE {t.sql} ADD COLUMN IF NOT EXISTS {_ident(c)} {wanted[c]}" for c in added]
        sql += [f"ALTER TABLE {t.sql} DROP COLUMN IF EXISTS {_ident(c)}" for c in dropped]
        sql += [f"ALTER TABLE {t.sql} ALTER COLUMN {_ident(c)} TYPE {wanted[c]} USING {_ident(c)}::{wanted[c]}"
                for c in retyped]
        undo.append((t, dict(t.types)))
        for c in dropped:
            del t.types[c]
        for c in (*added, *retyped):
            t.types[c] = wanted[c]
        why = ", ".join([*(f"add {c} {wanted[c]}" for c in added), *(f"drop {c}" for c in dropped),
                         *(f"retype {c} to {wanted[c]}" for c in retyped)])
        return _Entry(t, "ddl", {"sql": sql, "why": why, "columns": list(t.types), "at": where}, None)

    async def _ddl(self, conn: asyncpg.Connection, t: _Target, change: dict[str, Any]) -> None:
        for statement in change["sql"]:
            try:
                await conn.execute(statement)
            except asyncpg.PostgresError as exc:
                raise ConnectorError(
                    f"{self._where}: cannot change {t.schema}.{t.name} as the source did "
                    f"({change['why']}, {change['at']}): {exc}"
                ) from exc
        t.columns = list(change["columns"])
        log.warning("%s: changed table %s.%s as the source did: %s", self._where, t.schema, t.name, change["why"])

    @staticmethod
    def _meaning(record: Record) -> tuple[str, dict[str, Any] | None]:
        """('up', row) | ('del', key-row) | ('trunc', None) for one record."""
        value = record.value
        if value.__class__ is dict and value.get("op") in _UPSERTS and "after" in value and "source" in value:
            return "up", value["after"]  # the bulk of a CDC stream, decided in one step
        if value is None:
            return "del", record.key if isinstance(record.key, dict) else None
        if not isinstance(value, dict):
            raise RecordError(
                f"a postgres sink needs a JSON object (row or change envelope) as value, got "
                f"{type(value).__name__} at {record.topic}-{record.partition}@{record.offset}"
            )
        op = value.get("op")
        if op is not None and "after" in value and "source" in value:
            if op in ("c", "u", "r"):
                return "up", value["after"]
            if op == "d":
                key = record.key if isinstance(record.key, dict) else value.get("before")
                return "del", key
            if op == "t":
                return "trunc", None
            raise RecordError(f"unknown change op {op!r} at {record.topic}-{record.partition}@{record.offset}")
        return "up", value

    def _entry(self, target: _Target, record: Record, what: str, row: dict[str, Any] | None) -> _Entry | None:
        """What ``record`` (meaning ``what``/``row``) asks of ``target``, checked; None for a tombstone that says nothing."""
        if what == "trunc":
            return _Entry(target, what, None, None)
        where = f"{record.topic}-{record.partition}@{record.offset}"
        if not isinstance(row, dict):
            if what == "del" and record.value is None and record.key is None:
                return None  # a tombstone without a key
            raise RecordError(
                f"{self._where}: {'a delete without a key' if what == 'del' else 'a change without a row'} "
                f"for {target.schema}.{target.name} at {where}"
            )
        if not target.key:
            if what == "del":
                raise RecordError(
                    f"{self._where}: cannot delete from {target.schema}.{target.name} ({where}): it has no "
                    "primary key and no key_columns are configured"
                )
            return _Entry(target, what, row, None)
        key_row = record.key if isinstance(record.key, dict) and what == "del" else row
        try:
            key = _key_of(key_row, target.key)
        except KeyError as exc:
            raise RecordError(
                f"{self._where}: record at {where} lacks key column {exc} of {target.schema}.{target.name}"
            ) from None
        if what == "del":
            row = {k: key_row[k] for k in target.key}
        return _Entry(target, what, row, key)

    async def _apply(self, conn: asyncpg.Connection, entries: list[_Entry]) -> int:
        # per table: key -> ("up" | "del", doc), last change wins (merged onto an earlier upsert)
        pending: dict[str, dict[Any, tuple[str, dict[str, Any]]]] = {}
        targets: dict[str, _Target] = {}
        written = 0
        for target, what, row, key in entries:
            tkey = target.sql
            targets[tkey] = target
            if what == "ddl":
                assert row is not None
                before = pending.pop(tkey, None)
                if before:  # the rows before the change go in with the table as it was
                    written += await self._write_table(conn, target, before)
                await self._ddl(conn, target, row)
                continue
            if what == "trunc":
                pending.pop(tkey, None)  # what came before the truncate is gone anyway
                if self.cfg.apply_truncate:
                    await conn.execute(f"TRUNCATE {tkey}")
                continue
            assert row is not None
            per_table = pending.setdefault(tkey, {})
            if key is None:  # a table without a key: append
                per_table[("#", len(per_table))] = ("up", row)
            elif what == "up":
                doc = {k: v for k, v in row.items() if v != UNAVAILABLE} if UNAVAILABLE in row.values() else row
                prev = per_table.get(key)
                if prev is not None and prev[0] == "up":
                    doc = {**prev[1], **doc}
                per_table[key] = ("up", doc)
            else:
                per_table[key] = ("del", row)
        for tkey, changes in pending.items():
            written += await self._write_table(conn, targets[tkey], changes)
        return written

    async def _stage(self, conn: asyncpg.Connection, docs: list[dict[str, Any]], joined: bool = True) -> None:
        """Copy ``docs`` into the staging table; statistics only when a statement joins it to the target
        (a plain INSERT ... SELECT reads it once in any plan, so ANALYZE would be wasted)."""
        await conn.execute(f"TRUNCATE {STAGE}")
        await conn.copy_records_to_table(STAGE, records=[(_document(d),) for d in docs], columns=["doc"])
        if joined and len(docs) > 1000:
            await conn.execute(f"ANALYZE {STAGE}")

    async def _write_table(
        self, conn: asyncpg.Connection, t: _Target, changes: dict[Any, tuple[str, dict[str, Any]]]
    ) -> int:
        deletes = [doc for op, doc in changes.values() if op == "del"]
        wanted = set(t.columns)
        full: list[dict[str, Any]] = []
        partial: list[dict[str, Any]] = []
        for op, doc in changes.values():
            if op == "up":
                (full if not t.key or wanted.issubset(doc.keys()) else partial).append(doc)
        rec = f"jsonb_populate_record(NULL::{t.sql}, s.doc)"
        cols = ", ".join(_ident(c) for c in t.columns)
        rcols = ", ".join(f"r.{_ident(c)}" for c in t.columns)
        match = " AND ".join(f"t.{_ident(k)} = r.{_ident(k)}" for k in t.key)
        if deletes:
            await self._stage(conn, deletes)
            await conn.execute(f"DELETE FROM {t.sql} t USING {STAGE} s, {rec} r WHERE {match}")
        if full and t.key and not t.unique:
            # no unique index to conflict on: replace the rows by key instead
            await self._stage(conn, full)
            await conn.execute(f"DELETE FROM {t.sql} t USING {STAGE} s, {rec} r WHERE {match}")
            await conn.execute(f"INSERT INTO {t.sql} ({cols}) SELECT {rcols} FROM {STAGE} s, {rec} r")
        elif full:
            await self._stage(conn, full, joined=False)
            if not t.key:
                conflict = ""
            else:
                others = [c for c in t.columns if c not in t.key]
                action = (
                    "DO UPDATE SET " + ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in others)
                    if others else "DO NOTHING"
                )
                conflict = f" ON CONFLICT ({', '.join(_ident(k) for k in t.key)}) {action}"
            await conn.execute(f"INSERT INTO {t.sql} ({cols}) SELECT {rcols} FROM {STAGE} s, {rec} r{conflict}")
        if partial:
            await self._stage(conn, partial)
            keep = ", ".join(f"p.{_ident(c)}" for c in t.columns)
            await conn.execute(
                f"UPDATE {t.sql} t SET ({cols}) = (SELECT {keep} FROM jsonb_populate_record(t, s.doc) p) "
                f"FROM {STAGE} s, {rec} r WHERE {match}"
            )
            await conn.execute(
                f"INSERT INTO {t.sql} ({cols}) SELECT {rcols} FROM {STAGE} s, {rec} r "
                f"WHERE NOT EXISTS (SELECT 1 FROM {t.sql} t WHERE {match})"
            )
        return len(deletes) + len(full) + len(partial)
