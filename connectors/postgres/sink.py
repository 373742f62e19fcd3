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

Rows go in through ``COPY``: rows carrying every column as COPY text, in the
columns' own types (straight into the table while its keys are new, else
through a staging table and one ``INSERT ... ON CONFLICT (pk) DO UPDATE``);
the rest as JSON documents that ``jsonb_populate_record`` turns into the
columns' types (see :mod:`.sink_apply`). Within one flush only the last
change of each key is applied, which gives the same rows as applying them one
by one. Columns a row does not carry (or carries as the source's
"unavailable" TOAST marker) keep their current value.

With the JSON converters and no transform the runtime hands the sink the
log's values in columns (``write_encoded``): a plain insert or update is read
from its bytes (only the row is parsed), everything else goes through
``write`` as decoded. Such rows are COPYed while the next ones are read, in the
transaction the next flush continues and commits with the offsets
(:class:`~.sink_apply.EarlyCopy`), so the server works while the sink reads.

The module's seams: :mod:`.sink_config` (settings), :mod:`.sink_schema`
(describing, creating and changing tables), :mod:`.sink_apply` and
:mod:`.sink_copy` (writing a flush), :mod:`.sink_envelope` (plain changes
read from their bytes); this module holds the connector: its
lifecycle, what each record means, and the flush's transaction.

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

import asyncio
import contextlib
import logging
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import asyncpg
import orjson

from millpond.connector import ConnectorConfig, ConnectorContext, Guarantee, Sink
from millpond.converters import JsonConverter
from millpond.errors import ConfigError, ConnectorError, RecordError, RetriableConnectorError
from millpond.records import EncodedRecords, Record, TopicPartition

from . import sink_schema
from .sink_apply import SCALARS, STAGE, Applier, EarlyCopy, Entry, Target, key_of
from .sink_config import PostgresSinkConfig
from .sink_envelope import HEAD, SCAN_VALUES, learn_types, plain_row, scan_rows
from .source import UNAVAILABLE
from .sql import connect, split_table
from .sql import ident as _ident

__all__ = ["PostgresSink", "PostgresSinkConfig"]

log = logging.getLogger("millpond.connectors.postgres.sink")

_UPSERTS = frozenset(("c", "u", "r"))
#: plain rows that make an entry of their own, COPYed early while the rest of a large poll is read
EARLY_ROWS = 8192
#: while rows COPYed early are in flight, ``write_encoded`` lets the event loop send them every this many + 1
YIELD_MASK = 1023

class PostgresSink(Sink):
    """``postgres``: rows into tables, offsets in the same transaction."""

    guarantee: ClassVar[Guarantee] = Guarantee.exactly_once
    config_model: ClassVar[type[ConnectorConfig]] = PostgresSinkConfig
    owns_offsets: ClassVar[bool] = True
    takes_encoded: ClassVar[str | None] = "json"

    def __init__(self, config: PostgresSinkConfig, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.cfg = config
        self._conn: asyncpg.Connection | None = None
        self._buffer: list[Entry] = []
        self._targets: dict[str, Target] = {}
        self._by_topic: dict[str, Target] = {}
        #: per topic, the source's ``column_types`` of the last change seen
        self._seen: dict[str, dict[str, str]] = {}
        self._where = f"postgres sink {context.name!r}"
        self.rows_written = 0
        #: the stored offsets as this sink last read or wrote them (see ``_check_owner``)
        self._expected: dict[TopicPartition, int] = {}
        self._applier = Applier(self._where, config.apply_truncate)
        #: per topic, the bytes of the last change's ``column_types`` and the dict they read as (which
        #: ``_seen`` holds while they are current): a plain upsert whose bytes match needs no parse of them
        self._types_raw: dict[str, tuple[bytes, dict[str, str]]] = {}
        #: per topic, ``[those bytes, the source block's shape for them]`` (see :func:`plain_row`)
        self._shapes: dict[str, tuple[bytes, list[Any]]] = {}
        self._early = EarlyCopy(self._where)

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> Mapping[TopicPartition, int] | None:
        self._conn = conn = await connect(self.cfg.dsn.get_secret_value(), self._where)
        self._where = f"postgres sink {self.context.name!r} (database {await conn.fetchval('SELECT current_database()')!r})"
        self._applier = Applier(self._where, self.cfg.apply_truncate)  # a new session: no staging tables yet
        self._early = EarlyCopy(self._where)
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
            await self._settle()
            rows = await conn.fetch(f"SELECT topic, partition, next_offset FROM {self._offsets_sql()} "
                                    "WHERE connector = $1", self.context.name)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise RetriableConnectorError(f"{self._where}: cannot read the stored offsets: {exc}") from exc
        stored = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
        self._expected = dict(stored)
        return stored

    async def stop(self) -> None:
        await self._early.abandon()
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
            await self._settle()
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
        await self._settle()
        seen = dict(self._seen)
        undo: list[tuple[Target, dict[str, str]]] = []
        try:
            self._buffer.extend(await self._entries(conn, records, undo))
        except BaseException:
            self._seen = seen
            for target, types in reversed(undo):
                target.types = types
            raise

    async def write_encoded(self, part: EncodedRecords) -> int:
        """Buffer one partition's JSON values as ``write`` would buffer them decoded, in order.

        The bulk of a CDC stream, a plain insert or update of a table known already whose columns
        are as the topic's last change said, is read straight from the bytes (:func:`plain_row`:
        the row alone is parsed, by orjson) and gathered as ``_entries`` gathers it. The rest
        (deletes, tombstones, truncates, schema changes, TOAST "unavailable" columns, a topic's
        first change, any value of another shape) is decoded exactly as the JSON converter decodes
        it and goes through ``write`` one record at a time, so the buffer ends up as the record path
        leaves it. A record that does not decode or that ``write`` rejects ends the call: the
        runtime sends it the record path, where the error policy sees it, and calls again after it.
        """
        if self._conn is None:
            raise ConnectorError(f"{self._where}: write before start")
        values = part.values
        topic = part.tp.topic
        buffer = self._buffer
        target, key, types, shape = self._plain_target(topic)
        #: the "rows" entry (key -> row) plain upserts gather in until another change comes
        rows: dict[Any, dict[str, Any]] | None = None
        loads = orjson.loads
        #: the rows' JSON text the C scan found from value ``base`` on, with the template it used
        scanned: list[bytes | None] = []
        base = 0
        template: tuple[bytes | int, ...] | None = None
        in_flight = self._early.task is not None
        #: records for ``write`` (index, decoded), written together when a plain row or the end comes
        pending: list[tuple[int, Record]] = []
        for i, value in enumerate(values):
            if in_flight and not i & YIELD_MASK:
                # let the loop write the rows COPYed early to the server while this poll is parsed
                await asyncio.sleep(0)
            if pending and value is not None and value.startswith(HEAD):
                # perhaps a plain change: judged by what the records before it leave (a topic's first change,
                # a schema change), so they are written first
                failed = await self._write_run(part, pending)
                if failed is not None:
                    return failed
                pending, rows = [], None
                target, key, types, shape = self._plain_target(topic)
            if types is not None and value is not None:
                row = None
                if scan_rows is not None and len(shape) > 2 and shape[2] is not None:
                    if shape[2] is not template or i - base >= len(scanned):
                        template = shape[2]
                        scanned, base = scan_rows(values[i:i + SCAN_VALUES], template), i
                    text = scanned[i - base]
                    if text is not None:
                        try:
                            row = loads(text)
                        except orjson.JSONDecodeError:
                            pass
                if row is None:
                    row = plain_row(value, types, shape)
                if row is not None:
                    k = row.get(key)
                    if k.__class__ in SCALARS and UNAVAILABLE not in row.values():
                        if rows is None:
                            rows = {}
                            buffer.append((target, "rows", rows, None))  # type: ignore[arg-type]
                        prev = rows.get(k)
                        rows[k] = row if prev is None else {**prev, **row}
                        if len(rows) >= EARLY_ROWS and self._early.open:
                            # off to the server while the rest of the poll is read
                            await self._feed()
                            in_flight = self._early.task is not None
                            rows = None
                        continue
            record = self._decoded(part, i)
            if record is None:
                failed = await self._write_run(part, pending) if pending else None
                return i if failed is None else failed
            pending.append((i, record))
            rows = None
        if pending:
            failed = await self._write_run(part, pending)
            if failed is not None:
                return failed
        await self._feed()
        return len(values)

    async def _write_run(self, part: EncodedRecords, pending: list[tuple[int, Record]]) -> int | None:
        """``write`` records of ``part`` (index, decoded), in one call; after a RecordError one at a
        time, returning the index of the first rejected (those before it are written)."""
        try:
            await self.write([record for _, record in pending])
        except RecordError:
            for i, record in pending:
                try:
                    await self.write([record])
                except RecordError:
                    return i
        topic = part.tp.topic
        seen = self._seen.get(topic)
        if seen is not None:
            for i, _ in reversed(pending):
                value = part.values[i]
                if value is not None:
                    learn_types(self._types_raw, topic, value, seen)
                    break
        return None

    async def _feed(self) -> None:
        """Hand the rows buffered that can go early to :class:`~.sink_apply.EarlyCopy`."""
        assert self._conn is not None
        try:
            await self._early.feed(self._conn, self._buffer)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise RetriableConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise ConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc

    async def _settle(self) -> None:
        """Wait for the rows COPYed early (:class:`~.sink_apply.EarlyCopy`): the connection serves one
        call at a time. Their failure is the flush's failure, named as a flush failure."""
        try:
            await self._early.settle(self._buffer)
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
            raise RetriableConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise ConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc

    def _plain_target(self, topic: str) -> tuple[Target | None, str, bytes | None, list[Any]]:
        """What a plain upsert of ``topic`` needs for ``write_encoded``'s fast way: the table, its key
        column, the column types as the last change wrote them (None when there are none yet) and
        the shape of the source block that goes with them (see :func:`plain_row`)."""
        target = self._by_topic.get(topic)
        raw = self._types_raw.get(topic)
        if target is None or len(target.key) != 1 or raw is None or raw[1] is not self._seen.get(topic):
            return None, "", None, []
        shape = self._shapes.get(topic)
        if shape is None or shape[0] is not raw[0]:
            shape = self._shapes[topic] = (raw[0], [])
        return target, target.key[0], raw[0], shape[1]

    @staticmethod
    def _decoded(part: EncodedRecords, i: int) -> Record | None:
        """Record ``i`` of ``part`` as the JSON converter decodes it; None if it does not decode."""
        convert = _JSON.deserialize
        try:
            key, value = convert(part.keys[i]), convert(part.values[i])
        except RecordError:
            return None
        topic, partition = part.tp
        return Record(value, key, part.timestamps[i], [], topic, partition, part.offsets[i])

    async def _entries(
        self, conn: asyncpg.Connection, records: list[Record], undo: list[tuple[Target, dict[str, str]]]
    ) -> list[Entry]:
        entries: list[Entry] = []
        append = entries.append
        by_topic = self._by_topic
        seen = self._seen
        #: per table, the "rows" entry (key -> row) plain upserts gather in until another change of the table
        gathering: dict[str, dict[Any, dict[str, Any]]] = {}
        for record in records:
            value = record.value
            target = by_topic.get(record.topic or "")
            # the bulk of a CDC stream, decided inline: an insert or update of a table known already, keyed by
            # one column, whose columns are as the topic's last change said (anything else: the general path)
            if target is not None and value.__class__ is dict and value.get("op") in _UPSERTS:
                row = value.get("after")
                source = value.get("source")
                if row.__class__ is dict and source.__class__ is dict and len(target.key) == 1:
                    types = source.get("column_types")
                    if types is None or types == seen.get(record.topic or ""):
                        k = row.get(target.key[0])
                        if k.__class__ in SCALARS and UNAVAILABLE not in row.values():
                            rows = gathering.get(target.sql)
                            if rows is None:
                                rows = gathering[target.sql] = {}
                                append((target, "rows", rows, None))
                            prev = rows.get(k)
                            rows[k] = row if prev is None else {**prev, **row}
                            continue
            what, row = self._meaning(record)
            if target is None:
                target = await self._target(conn, record, row if what == "up" else None)
            if value.__class__ is dict and "op" in value:
                source = value.get("source")
                types = source.get("column_types") if source.__class__ is dict else None
                if types is not None and types != self._seen.get(record.topic or ""):
                    topic = record.topic or ""
                    previous, self._seen[topic] = self._seen.get(topic), types
                    ddl = await sink_schema.schema_change(conn, self._where, self.cfg.schema_changes, target, types,
                                                          previous, record, undo)
                    if ddl is not None:
                        gathering.pop(target.sql, None)
                        append(ddl)
            if what == "up" and row.__class__ is dict and target.key:
                # the common upsert, inline; a missing key column takes _entry's path for its error
                assert row is not None
                try:
                    append((target, what, row, key_of(row, target.key)))
                    gathering.pop(target.sql, None)
                    continue
                except KeyError:
                    pass
            entry = self._entry(target, record, what, row)
            if entry is not None:
                gathering.pop(target.sql, None)
                append(entry)
        return entries

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectorError(f"{self._where}: flush before start")
        # a schema change in the buffer moves a table's columns inside the transaction:
        # if it rolls back, so do they (the buffer stays for a retry)
        columns = [(t, t.columns, t.column_types) for t in self._targets.values()]
        try:
            # rows COPYed early are in a transaction of their own making: this one goes on in it
            await self._early.settle(self._buffer)
            tx = self._early.take()
            if tx is None:
                tx = conn.transaction()
                await tx.start()
            try:
                if offsets:
                    await self._check_owner(conn, offsets)
                early = [e for e in self._buffer if e[1] == "early"]
                entries = [e for e in self._buffer if e[1] != "early"] if early else self._buffer
                written = await self._applier.apply(conn, entries, self._ddl)
                written += sum(len(e[2] or ()) for e in early)
                if offsets:
                    await conn.execute(
                        f"INSERT INTO {self._offsets_sql()} AS o (connector, topic, partition, next_offset) "
                        "SELECT $1, t, p, n FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, n) "
                        "ON CONFLICT (connector, topic, partition) DO UPDATE "
                        "SET next_offset = EXCLUDED.next_offset, updated_at = now()",
                        self.context.name,
                        [tp.topic for tp in offsets], [tp.partition for tp in offsets], list(offsets.values()),
                    )
            except BaseException:
                with contextlib.suppress(Exception):  # a broken connection has no transaction left to end
                    await tx.rollback()
                raise
            await tx.commit()
        except BaseException as exc:
            self._early.reset(self._buffer, committed=False)
            self._applier.committed(False)
            for target, before, types in columns:
                target.columns, target.column_types = before, types
            if isinstance(exc, (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)):
                raise RetriableConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
            if isinstance(exc, asyncpg.PostgresError):
                raise ConnectorError(f"{self._where}: flush failed, nothing was written: {exc}") from exc
            raise
        self._applier.committed(True)
        self._early.reset(self._buffer, committed=True)
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

    async def _target(self, conn: asyncpg.Connection, record: Record, row: dict[str, Any] | None) -> Target:
        topic = record.topic or ""
        target = self._by_topic.get(topic)
        if target is not None:
            return target
        schema, name = self._table_for(topic)
        target = self._targets.get(f"{schema}.{name}")
        if target is None:
            target = await sink_schema.describe(conn, schema, name, self.cfg.key_columns)
            if target is None:
                if not self.cfg.auto_create or row is None:
                    raise ConfigError(
                        f"{self._where}: table {schema}.{name} (for topic {topic!r}) does not exist; "
                        "create it or set auto_create: true"
                    )
                target = await sink_schema.create(conn, self._where, schema, name, record, row, self.cfg.key_columns)
            if not target.key and isinstance(record.key, dict) and record.key:
                # no primary key and none configured: the record key names the key columns
                target.key = [k for k in record.key if k in target.columns]
                target.unique = False
            self._targets[f"{schema}.{name}"] = target
        self._by_topic[topic] = target
        return target

    async def _ddl(self, conn: asyncpg.Connection, t: Target, change: dict[str, Any]) -> None:
        await sink_schema.run_ddl(conn, self._where, t, change)

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

    def _entry(self, target: Target, record: Record, what: str, row: dict[str, Any] | None) -> Entry | None:
        """What ``record`` (meaning ``what``/``row``) asks of ``target``, checked; None for a tombstone that says nothing."""
        if what == "trunc":
            return (target, what, None, None)
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
            return (target, what, row, None)
        key_row = record.key if isinstance(record.key, dict) and what == "del" else row
        try:
            key = key_of(key_row, target.key)
        except KeyError as exc:
            raise RecordError(
                f"{self._where}: record at {where} lacks key column {exc} of {target.schema}.{target.name}"
            ) from None
        if what == "del":
            row = {k: key_row[k] for k in target.key}
        return (target, what, row, key)


_JSON = JsonConverter()
