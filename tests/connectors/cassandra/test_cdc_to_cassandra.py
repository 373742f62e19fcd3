"""Postgres CDC -> embedded log -> Cassandra, with ``millpond run`` on the real servers.

The Postgres source's records (snapshot reads, inserts, updates, deletes
followed by tombstones, a transaction touching one row twice, a truncate)
go through the log into a Cassandra table; afterwards the Cassandra table
holds exactly what the Postgres table holds, value for value.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from .test_pipeline_cassandra import millpond

pytestmark = [pytest.mark.cassandra, pytest.mark.postgres]

PG_TABLE = """CREATE TABLE {t} (
    id bigint PRIMARY KEY, name text NOT NULL, balance numeric(12,2) NOT NULL, tags text[] NOT NULL,
    updated_at timestamptz NOT NULL, flag boolean NOT NULL, ratio double precision NOT NULL,
    ref uuid NOT NULL, raw bytea NOT NULL, doc jsonb NOT NULL)"""

CASSANDRA_COLUMNS = {
    "id": "bigint", "name": "text", "balance": "decimal", "tags": "frozen<list<text>>",
    "updated_at": "timestamp", "flag": "boolean", "ratio": "double", "ref": "uuid", "raw": "blob", "doc": "text",
}


def pg(dsn: str, *statements: str) -> list[Any]:
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            out: list[Any] = []
            async with conn.transaction():  # several statements: one transaction
                for sql in statements:
                    if sql.lstrip().upper().startswith("SELECT"):
                        out = await conn.fetch(sql)
                    else:
                        await conn.execute(sql)
            return out
        finally:
            await conn.close()

    return asyncio.run(go())


def insert(table: str, i: int, name: str) -> str:
    return (
        f"INSERT INTO {table} VALUES ({i}, '{name}', {i}.25, ARRAY['t{i}', 'x'], "
        f"'2026-01-0{1 + i % 9} 10:00:00.{i:03d}+02', {str(i % 2 == 0).lower()}, {i} / 3.0, "
        f"'{uuid.UUID(int=i)}', '\\x{i:04x}ff', '{{\"n\": {i}, \"a\": [1, \"b\"]}}')"
    )


def test_postgres_cdc_into_cassandra(
    tmp_path: Path, pg_dsn: str, cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    table = f"cdc_{keyspace}"[:40]
    pg(pg_dsn, f"DROP TABLE IF EXISTS {table}", PG_TABLE.format(t=table),
       *(insert(table, i, f"snap{i}") for i in range(1, 6)))
    config = {
        "name": "cdc-to-cassandra",
        "log": {"embedded": {"dir": "./data"}},
        "topics": [{"name": "cdc", "partitions": 1}],
        "connectors": [
            {"name": f"src_{table}", "kind": "source", "type": "postgres-cdc", "topic": "cdc",
             "config": {"dsn": pg_dsn, "tables": [f"public.{table}"], "topics": {f"public.{table}": "cdc"},
                        "idle_sleep_s": 0.05},
             "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once"},
            {"name": "to-cassandra", "kind": "sink", "type": "cassandra", "topics": ["cdc"],
             "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once",
             "config": {"contact_points": [cassandra_contact[0]], "port": cassandra_contact[1],
                        "keyspace": keyspace,
                        "tables": [{"topic": "cdc", "table": "replica", "truncates": "apply",
                                    "create": {"columns": CASSANDRA_COLUMNS, "partition_key": ["id"]}}]}},
        ],
    }
    (tmp_path / "p.yaml").write_text(json.dumps(config))
    try:
        run = millpond("run", "p.yaml", "--until-idle", cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert cql.execute(f"SELECT count(*) FROM {keyspace}.replica").one()[0] == 5

        # a truncate, then changes of every kind, one transaction touching a row twice
        pg(pg_dsn, f"TRUNCATE {table}", *(insert(table, i, f"new{i}") for i in range(3, 12)))
        pg(pg_dsn, f"UPDATE {table} SET name = 'first', balance = 1.10 WHERE id = 4",
           f"UPDATE {table} SET name = 'second', tags = ARRAY['y'] WHERE id = 4")
        pg(pg_dsn, f"DELETE FROM {table} WHERE id IN (5, 6)", insert(table, 5, "back"))
        pg(pg_dsn, f"UPDATE {table} SET doc = '{{\"k\": null}}', raw = '\\x00' WHERE id = 7")
        run = millpond("run", "p.yaml", "--until-idle", cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]

        want = {r["id"]: r for r in pg(pg_dsn, f"SELECT * FROM {table}")}
        got = {r.id: r for r in cql.execute(f"SELECT * FROM {keyspace}.replica")}
        assert sorted(got) == sorted(want) == [3, 4, 5, 7, 8, 9, 10, 11]
        for i, w in want.items():
            g = got[i]
            assert g.name == w["name"], i
            assert g.balance == w["balance"], i
            assert g.tags == w["tags"], i
            assert g.updated_at == w["updated_at"].replace(tzinfo=None) - w["updated_at"].utcoffset(), i
            assert (g.flag, g.ratio, g.ref, g.raw) == (w["flag"], w["ratio"], w["ref"], w["raw"]), i
            assert json.loads(g.doc) == json.loads(w["doc"]), i
        assert got[4].name == "second" and got[5].name == "back"
    finally:
        pg(pg_dsn, f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                   f"WHERE slot_name = 'millpond_src_{table}' AND NOT active")
        pg(pg_dsn, f"DROP PUBLICATION IF EXISTS millpond_src_{table}", f"DROP TABLE IF EXISTS {table}")
