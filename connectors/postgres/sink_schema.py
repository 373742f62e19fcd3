"""The Postgres sink's tables: describing, creating, and following the source's schema changes.

See the sink's module docstring ("Column types and schema changes") for what
``schema_changes`` promises; this module keeps those promises. The functions
take the connection and the sink's ``where`` (the one-line name its messages
start with) rather than the sink, so each reads on its own.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from millpond.errors import ConnectorError
from millpond.records import Record

from .sink_apply import Entry, Target
from .sql import ident as _ident

log = logging.getLogger("millpond.connectors.postgres.sink")


def sql_type(value: Any) -> str:
    """The column type ``auto_create`` gives a JSON value when the source names none."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "bigint"
    if isinstance(value, float):
        return "double precision"
    if isinstance(value, (dict, list)):
        return "jsonb"
    return "text"


async def describe(conn: asyncpg.Connection, schema: str, name: str, key_columns: list[str] | None) -> Target | None:
    """The table ``schema.name`` (None if missing): its columns, types and primary key, else ``key_columns``."""
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
    primary = [r["attname"] for r in key]
    return Target(schema, name, [r["attname"] for r in cols], primary or list(key_columns or []),
                  unique=bool(primary), types={r["attname"]: r["sqltype"] for r in cols})


async def create(
    conn: asyncpg.Connection, where: str, schema: str, name: str, record: Record, row: dict[str, Any],
    key_columns: list[str] | None,
) -> Target:
    """Create the table of ``record``: the source's column types when the change names them,
    else types guessed from the JSON values of ``row``."""
    key = list(key_columns or (record.key.keys() if isinstance(record.key, dict) else []))
    source = record.value.get("source") if isinstance(record.value, dict) else None
    named = source.get("column_types") if isinstance(source, dict) else None
    if isinstance(named, dict) and named:
        known = await known_types(conn, where, named, f"{schema}.{name}")
        columns = dict.fromkeys([*key, *named, *row])
        types = {c: known.get(c) or sql_type(row.get(c, (record.key or {}).get(c))) for c in columns}
    else:
        columns = dict.fromkeys([*key, *row])
        types = {c: sql_type(row.get(c, (record.key or {}).get(c))) for c in columns}
    defs = [f"{_ident(c)} {typ}" for c, typ in types.items()]
    if key:
        defs.append(f"PRIMARY KEY ({', '.join(_ident(k) for k in key)})")
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)}")
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {_ident(schema)}.{_ident(name)} ({', '.join(defs)})")
    log.info("%s: created table %s.%s (%s)", where, schema, name, ", ".join(defs))
    # the types as the server spells them (format_type), which the typed COPY path reads
    return await describe(conn, schema, name, key) or Target(schema, name, list(columns), key, types=types)


async def known_types(conn: asyncpg.Connection, where: str, types: dict[str, str], table: str) -> dict[str, str]:
    """``types`` with each type this database lacks (a source's enum, say) replaced by ``text``."""
    rows = await conn.fetch(
        "SELECT t, to_regtype(t) IS NOT NULL AS known FROM unnest($1::text[]) AS u(t)", sorted(set(types.values()))
    )
    known = {r["t"] for r in rows if r["known"]}
    out = {}
    for column, typ in types.items():
        if typ not in known:
            log.warning("%s: type %r of column %s.%s is unknown in this database; the column is text",
                        where, typ, table, column)
            typ = "text"
        out[column] = typ
    return out


async def schema_change(
    conn: asyncpg.Connection, where: str, mode: str, t: Target, types: dict[str, str],
    previous: dict[str, str] | None, record: Record, undo: list[tuple[Target, dict[str, str]]],
) -> Entry | None:
    """Compare the source's ``types`` with the table; the DDL to run in order, or a clear stop.

    What the source said before on this topic (``previous``) tells the changes:
    a column that was there and is gone was dropped at the source, one whose
    type differs from before was retyped. Without an earlier view (the topic's
    first change in this run) only missing columns are added.
    """
    table = f"{t.schema}.{t.name}"
    at = f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
    wanted = await known_types(conn, where, types, table)
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
            f"{where}: key column {table}.{lost_key[0]} was dropped at the source ({at}); "
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
            f"{where}: column {table}.{column} {what} ({at}){more}; schema_changes is "
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
    return (t, "ddl", {"sql": sql, "why": why, "types": dict(t.types), "at": at}, None)


async def run_ddl(conn: asyncpg.Connection, where: str, t: Target, change: dict[str, Any]) -> None:
    """Run one buffered schema change (in the flush's transaction)."""
    for statement in change["sql"]:
        try:
            await conn.execute(statement)
        except asyncpg.PostgresError as exc:
            raise ConnectorError(
                f"{where}: cannot change {t.schema}.{t.name} as the source did ({change['why']}, {change['at']}): {exc}"
            ) from exc
    t.columns = list(change["types"])
    t.column_types = dict(change["types"])
    log.warning("%s: changed table %s.%s as the source did: %s", where, t.schema, t.name, change["why"])
