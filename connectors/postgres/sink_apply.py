"""Applying a flush's buffered changes to the tables, inside the flush's transaction.

Within one flush only the last change of each key is applied (merged onto an
earlier upsert of that key, so columns it lacks keep the earlier value), which
gives the same rows as applying the changes one by one. A DDL entry splits the
stream: the rows before it go in with the table as it was.

Rows that carry every column of the table ("full" rows, the bulk of any CDC
stream) take the typed path: COPY text (:mod:`.sink_copy`) into a temporary
staging table shaped like the target's columns, then one ``INSERT ... SELECT
... ON CONFLICT (key) DO UPDATE``. Before that, while a table's flushes keep
meeting only new keys, they are COPYed straight into the target under a
savepoint: a duplicate key rolls the savepoint back (nothing else of the
transaction) and the rows take the staged upsert, and the next few flushes of
that table go straight to the upsert (:class:`_Direct`). Deletes stage their
keys the same way, as COPY text in the key columns' types, for one ``DELETE
... USING``. Everything else (rows lacking columns, such as the source's TOAST
"unavailable" marker leaves; tables keyed without a unique index; rows and
keys whose values text cannot carry) takes the JSON documents path: COPY of
``jsonb`` documents into a staging table, then ``jsonb_populate_record`` in
the statement, where PostgreSQL turns each JSON value into the column's type
(arrays, composites...).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from .sink_copy import copy_text, document
from .source import UNAVAILABLE
from .sql import ident as _ident

#: the staging table of JSON documents (one per session, created at start)
STAGE = "millpond_stage"
#: a flush of this many rows or more is worth statistics on its staging table before a join
ANALYZE_ROWS = 1000
#: after a direct COPY met an existing key, skip it for this many of the table's flushes (doubling
#: on each miss in a row, up to ``DIRECT_SKIP_MAX``): a stream of updates pays the failed COPY rarely
DIRECT_SKIP = 4
DIRECT_SKIP_MAX = 256
#: rows per COPY chunk (about 50 bytes a column): the server parses a chunk while the next is encoded
COPY_CHUNK_ROWS = 4096


@dataclass(slots=True)
class _Direct:
    """Whether the next flush of a table tries a direct COPY (see the module's docstring)."""

    skip: int = 0
    backoff: int = DIRECT_SKIP

    def due(self) -> bool:
        if self.skip:
            self.skip -= 1
            return False
        return True

    def missed(self) -> None:
        self.skip = self.backoff
        self.backoff = min(self.backoff * 2, DIRECT_SKIP_MAX)

    def hit(self) -> None:
        self.backoff = DIRECT_SKIP


@dataclass(slots=True)
class Target:
    """A table the sink writes, as it knows it."""

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
    #: ``{column: SQL type}`` of the table as the last flush left it (what a COPY into it reads)
    column_types: dict[str, str] = field(default_factory=dict)
    direct: _Direct = field(default_factory=_Direct)

    def __post_init__(self) -> None:
        self.sql = f"{_ident(self.schema)}.{_ident(self.name)}"
        if not self.column_types:
            self.column_types = dict(self.types)


#: one buffered change: (table, what, row, key identity); what is "up" | "del" | "trunc" | "ddl" (then
#: the row holds the statements, why, the table's types after and where). A plain tuple: built per record.
Entry = tuple[Target, str, dict[str, Any] | None, Any]

#: key values that are hashable as they are (the usual single-column keys)
SCALARS = frozenset((int, str))


def key_of(row: dict[str, Any], columns: list[str]) -> Any:
    """A hashable identity of the row's key: the value of a one-column int or text key as it is,
    else a tuple of the values (holding their JSON text when one is a list or dict)."""
    if len(columns) == 1:
        value = row[columns[0]]
        if value.__class__ in SCALARS:
            return value
    values = tuple(row[k] for k in columns)
    try:
        hash(values)
    except TypeError:
        return ("json", document(values))
    return values


class Changes:
    """One table's changes in a stretch of the stream: the last change of each key wins."""

    __slots__ = ("ups", "dels", "appends")

    def __init__(self) -> None:
        self.ups: dict[Any, dict[str, Any]] = {}
        self.dels: dict[Any, dict[str, Any]] = {}
        #: rows of a table without a key, in order
        self.appends: list[dict[str, Any]] = []

    def upsert(self, key: Any, row: dict[str, Any]) -> None:
        if UNAVAILABLE in row.values():
            row = {k: v for k, v in row.items() if v != UNAVAILABLE}
        prev = self.ups.get(key)
        if prev is not None:  # merged onto the earlier upsert: what this row lacks keeps that value
            row = {**prev, **row}
        elif key in self.dels:
            del self.dels[key]
        self.ups[key] = row

    def upsert_many(self, rows: dict[Any, dict[str, Any]]) -> None:
        """``upsert`` of each of ``rows`` (key -> row, none holding the "unavailable" marker), by the dict."""
        ups = self.ups
        if not ups and not self.dels:
            self.ups = dict(rows)  # a copy: the buffer keeps its own for a retried flush
            return
        for key in rows.keys() & self.dels.keys():
            del self.dels[key]
        merged = {key: {**ups[key], **rows[key]} for key in rows.keys() & ups.keys()}
        ups.update(rows)
        ups.update(merged)

    def delete(self, key: Any, row: dict[str, Any]) -> None:
        self.ups.pop(key, None)
        self.dels[key] = row


class Applier:
    """Writes buffered entries with one connection; knows the session's typed staging tables."""

    def __init__(self, where: str, apply_truncate: bool) -> None:
        self.where = where
        self.apply_truncate = apply_truncate
        #: (target, columns) -> typed staging table of this session; ``_new`` holds those made in the
        #: running flush, which only count once it commits (a rollback takes them away)
        self._stages: dict[tuple[str, tuple[str, ...]], str] = {}
        self._new: dict[tuple[str, tuple[str, ...]], str] = {}
        self._names = itertools.count(1)

    def committed(self, ok: bool) -> None:
        """The flush's transaction ended: keep (``ok``) or forget the staging tables it created."""
        if ok:
            self._stages.update(self._new)
        self._new.clear()

    async def apply(self, conn: asyncpg.Connection, entries: list[Entry], ddl: Any) -> int:
        """Write ``entries`` in stream order; ``ddl(conn, target, change)`` runs a schema change."""
        pending: dict[str, Changes] = {}
        targets: dict[str, Target] = {}
        written = 0
        for target, what, row, key in entries:
            if what == "rows":  # key -> row of plain upserts, gathered by the sink's write
                per_table = pending.get(target.sql)
                if per_table is None:
                    targets[target.sql] = target
                    per_table = pending[target.sql] = Changes()
                per_table.upsert_many(row)  # type: ignore[arg-type]
                continue
            tkey = target.sql
            targets[tkey] = target
            if what == "ddl":
                before = pending.pop(tkey, None)
                if before:  # the rows before the change go in with the table as it was
                    written += await self._write_table(conn, target, before)
                await ddl(conn, target, row)
                continue
            if what == "trunc":
                pending.pop(tkey, None)  # what came before the truncate is gone anyway
                if self.apply_truncate:
                    await conn.execute(f"TRUNCATE {tkey}")
                continue
            assert row is not None
            per_table = pending.get(tkey)
            if per_table is None:
                per_table = pending[tkey] = Changes()
            if key is None:  # a table without a key: append
                per_table.appends.append(row)
            elif what == "up":
                per_table.upsert(key, row)
            else:
                per_table.delete(key, row)
        for tkey, changes in pending.items():
            written += await self._write_table(conn, targets[tkey], changes)
        return written

    async def _stage(self, conn: asyncpg.Connection, docs: list[dict[str, Any]], joined: bool = True) -> None:
        """Copy ``docs`` into the JSON staging table; statistics only when a statement joins it to the
        target (a plain INSERT ... SELECT reads it once in any plan, so ANALYZE would be wasted)."""
        await conn.execute(f"TRUNCATE {STAGE}")
        await conn.copy_records_to_table(STAGE, records=[(document(d),) for d in docs], columns=["doc"])
        if joined and len(docs) > ANALYZE_ROWS:
            await conn.execute(f"ANALYZE {STAGE}")

    async def _typed_stage(self, conn: asyncpg.Connection, t: Target, columns: list[str]) -> str:
        """The session's staging table with ``columns`` of ``t`` in their types (created in this flush if new)."""
        ref = (t.sql, tuple(columns))
        name = self._stages.get(ref) or self._new.get(ref)
        if name is not None:
            await conn.execute(f"TRUNCATE {name}")
            return name
        name = f"millpond_stage_{next(self._names)}"
        cols = ", ".join(_ident(c) for c in columns)
        # CREATE ... AS keeps the column types (typmods included) and none of the constraints
        await conn.execute(f"CREATE TEMP TABLE {name} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {t.sql} WITH NO DATA")
        self._new[ref] = name
        return name

    async def _write_table(self, conn: asyncpg.Connection, t: Target, changes: Changes) -> int:
        ups = list(changes.ups.values()) + changes.appends
        deletes = list(changes.dels.values())
        rec = f"jsonb_populate_record(NULL::{t.sql}, s.doc)"
        cols = ", ".join(_ident(c) for c in t.columns)
        rcols = ", ".join(f"r.{_ident(c)}" for c in t.columns)
        match = " AND ".join(f"t.{_ident(k)} = r.{_ident(k)}" for k in t.key)
        conflict = ""
        if t.key:
            others = [c for c in t.columns if c not in t.key]
            action = (
                "DO UPDATE SET " + ", ".join(f"{_ident(c)} = EXCLUDED.{_ident(c)}" for c in others)
                if others else "DO NOTHING"
            )
            conflict = f" ON CONFLICT ({', '.join(_ident(k) for k in t.key)}) {action}"
        if deletes:
            # the keys as COPY text in their own types; what text cannot carry as JSON documents
            keys = _Text(deletes, t.key, t.column_types)
            if keys.any():
                stage = await self._typed_stage(conn, t, t.key)
                await conn.copy_to_table(stage, columns=t.key, source=keys.stream())
                if len(deletes) > ANALYZE_ROWS:
                    await conn.execute(f"ANALYZE {stage}")
                on = " AND ".join(f"t.{_ident(k)} = s.{_ident(k)}" for k in t.key)
                await conn.execute(f"DELETE FROM {t.sql} t USING {stage} s WHERE {on}")
            if keys.unfit:
                await self._stage(conn, keys.unfit)
                await conn.execute(f"DELETE FROM {t.sql} t USING {STAGE} s, {rec} r WHERE {match}")
        full, partial = ups, []
        if t.key and not t.unique:
            # no unique index to conflict on: replace the rows by key instead
            wanted = set(t.columns)
            full = [row for row in ups if wanted.issubset(row.keys())]
            partial = [row for row in ups if not wanted.issubset(row.keys())] if len(full) < len(ups) else []
            if full:
                await self._stage(conn, full)
                await conn.execute(f"DELETE FROM {t.sql} t USING {STAGE} s, {rec} r WHERE {match}")
                await conn.execute(f"INSERT INTO {t.sql} ({cols}) SELECT {rcols} FROM {STAGE} s, {rec} r")
        elif ups:
            text = _Text(ups, t.columns, t.column_types)
            await self._typed(conn, t, text, conflict)
            if text.unfit:
                # rows lacking a column keep the table's value there; the rest only need the JSON path's types
                wanted = set(t.columns)
                full = [row for row in text.unfit if not t.key or wanted.issubset(row.keys())]
                partial = [row for row in text.unfit if t.key and not wanted.issubset(row.keys())]
                if full:
                    await self._stage(conn, full, joined=False)
                    await conn.execute(
                        f"INSERT INTO {t.sql} ({cols}) SELECT {rcols} FROM {STAGE} s, {rec} r{conflict}")
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
        return len(deletes) + len(ups)

    async def _typed(self, conn: asyncpg.Connection, t: Target, text: _Text, conflict: str) -> None:
        """The fit rows of ``text``: straight into ``t`` while its keys are new, else staged and upserted."""
        if not text.any():
            return
        if not t.key or t.direct.due():
            try:
                async with conn.transaction():  # a savepoint: a duplicate key undoes this COPY alone
                    await conn.copy_to_table(t.name, schema_name=t.schema, columns=t.columns, source=text.stream())
                t.direct.hit()
                return
            except asyncpg.UniqueViolationError:
                t.direct.missed()
        stage = await self._typed_stage(conn, t, t.columns)
        await conn.copy_to_table(stage, columns=t.columns, source=text.stream())
        cols = ", ".join(_ident(c) for c in t.columns)
        await conn.execute(f"INSERT INTO {t.sql} ({cols}) SELECT {cols} FROM {stage}{conflict}")


class _Text:
    """Rows as COPY text, encoded a chunk at a time while the COPY sends the chunks before (the server
    parses one chunk while Python encodes the next), and kept for a second COPY if the first fails."""

    def __init__(self, rows: list[dict[str, Any]], columns: list[str], types: dict[str, str]) -> None:
        self.rows = rows
        self.columns = columns
        self.types = types
        self.chunks: list[bytes] = []
        #: rows that text cannot carry as the JSON path would, or that lack a column
        self.unfit: list[dict[str, Any]] = []
        self._done = 0

    def _next(self) -> bytes | None:
        """Encode the next chunk (None when every row is encoded)."""
        while self._done < len(self.rows):
            lo = self._done
            self._done += COPY_CHUNK_ROWS
            data, _, unfit = copy_text(self.rows[lo:self._done], self.columns, self.types)
            self.unfit.extend(unfit)
            if data:
                self.chunks.append(data)
                return data
        return None

    def any(self) -> bool:
        """Whether any row fits (encodes up to the first chunk that holds one)."""
        return bool(self.chunks) or self._next() is not None

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in list(self.chunks):
            yield chunk
        while (more := self._next()) is not None:
            yield more


class EarlyCopy:
    """Rows COPYed into their table while the runtime reads the next poll, in the flush's transaction.

    Without it a flush does all its server work at once, while the sink (and the runtime) wait,
    and between flushes the server has nothing to do. A poll's plain rows ("rows" entry) go to
    the server at once: COPY text straight into the table under a savepoint, in a transaction
    that the next flush continues and commits with the offsets, so nothing is visible (or
    durable) before the flush. Rows may go ahead of entries the flush applies later only where
    the order makes no difference: the entries before them are rows COPYed already, or inserts,
    updates and deletes of other keys (``blockers``); the flush applies the rest as before, in
    order, and sees the early rows in the table, which is what applying the buffer in order
    gives. A COPY that meets an existing key, or an entry that cannot be passed (a truncate, a
    schema change, rows of a key changed before, rows text cannot carry) ends this until the
    flush. Every other use of the connection waits for the COPY in flight first (``settle``).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        #: the transaction the COPYs run in, until the flush takes it
        self.tx: Any = None
        #: the COPY in flight: its task, the queue its data comes from (None ends it), its table and
        #: the buffer indexes of the entries it holds
        self.task: asyncio.Task[bool] | None = None
        self.queue: asyncio.Queue[bytes | None] | None = None
        self.table: Target | None = None
        self.inflight: list[int] = []
        #: buffer index of the next entry to look at
        self.index = 0
        #: False once an entry could not be passed: the rest waits for the flush
        self.open = True
        #: per table, the keys of the entries passed that the flush applies (rows of those wait)
        self.blockers: dict[str, set[Any]] = {}

    async def settle(self, buffer: list[Entry]) -> None:
        """End the COPY in flight and wait for it: its entries are done (``"early"``), or, if it met
        an existing key, none of them is and copying early stops until the flush."""
        task, queue, self.task, self.queue = self.task, self.queue, None, None
        if task is None:
            return
        assert queue is not None
        queue.put_nowait(None)
        inflight, self.inflight = self.inflight, []
        if await task:
            for i in inflight:
                target, _, rows, _ = buffer[i]
                buffer[i] = (target, "early", rows, None)
        else:
            self.open = False

    async def feed(self, conn: asyncpg.Connection, buffer: list[Entry]) -> None:
        """Send the rows of ``buffer`` not looked at yet that can go early to the COPY in flight (one
        is started for their table if none is; one of another table is ended first)."""
        while self.open and self.index < len(buffer):
            target, what, rows, key = buffer[self.index]
            if what in ("up", "del") and key is not None:
                self.blockers.setdefault(target.sql, set()).add(key)
                self.index += 1
                continue
            if what != "rows" or not target.key or not target.unique or target.direct.skip:
                self.open = False
                return
            assert isinstance(rows, dict)
            blockers = self.blockers.get(target.sql)
            if blockers and not blockers.isdisjoint(rows):
                self.open = False
                return
            data, count, unfit = copy_text(list(rows.values()), target.columns, target.column_types)
            if unfit or not count:
                self.open = False
                return
            if self.task is not None and self.table is not target:
                await self.settle(buffer)
                continue
            if self.task is None or self.queue is None:
                self.queue = asyncio.Queue()
                self.table = target
                self.task = asyncio.get_running_loop().create_task(self._copy(conn, target, self.queue))
            self.queue.put_nowait(data)
            self.inflight.append(self.index)
            self.index += 1

    async def _copy(self, conn: asyncpg.Connection, t: Target, queue: asyncio.Queue[bytes | None]) -> bool:
        async def source() -> AsyncIterator[bytes]:
            while (data := await queue.get()) is not None:
                yield data

        if self.tx is None:
            tx = conn.transaction()
            await tx.start()
            self.tx = tx
        try:
            async with conn.transaction():  # a savepoint: a duplicate key undoes this COPY alone
                await conn.copy_to_table(t.name, schema_name=t.schema, columns=t.columns, source=source())
        except asyncpg.UniqueViolationError:
            t.direct.missed()
            return False
        t.direct.hit()
        return True

    def take(self) -> Any:
        """The transaction the COPYs ran in (None if none did), for the flush to continue and end."""
        tx, self.tx = self.tx, None
        return tx

    def reset(self, buffer: list[Entry], committed: bool) -> None:
        """The flush ended: start afresh; if it rolled back, the early entries are to be written again."""
        if not committed:
            for i, (target, what, rows, key) in enumerate(buffer):
                if what == "early":
                    buffer[i] = (target, "rows", rows, key)
        self.tx = None
        self.index = 0
        self.open = True
        self.blockers = {}

    async def abandon(self) -> None:
        """Stop a COPY in flight (the sink stops; its transaction goes with the connection)."""
        task, self.task, self.queue, self.inflight = self.task, None, None, []
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.tx = None

