"""A postgres-cdc record a transform rejects is dead-lettered naming the change it came from.

``millpond run --until-idle`` as a user types it, on the real server: a ``timestamp`` transform
rejects rows whose ``at`` is not a time. A snapshot row names its table, the snapshot and the chunk
(its number and the key it starts after, or for a table without a key the rows before it); a streamed change names its table, its own LSN and its
transaction id, both checked against what the server said while the transaction ran (the id
exactly, the LSN between the WAL positions before and after the transaction), not against the
envelope the header was read from.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from millpond.connectors.postgres.pgoutput import parse_lsn

from ...test_cli import consume, run
from .conftest import connect

pytestmark = pytest.mark.postgres

SOURCE = "millpond.error.source."


def pipeline(tmp_path: Path, dsn: str, name: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}, fsync: false}}}}
        topics: [{{name: rows}}, {{name: dlq}}]
        connectors:
          - name: cdc
            kind: source
            type: postgres-cdc
            topic: rows
            config:
              dsn: "{dsn}"
              tables: [public.{name}, public.{name}_nokey]
              topics: {{public.{name}: rows, public.{name}_nokey: rows}}
              slot: {name}
              publication: {name}
              snapshot_chunk_rows: 2
              heartbeat_interval_s: 1
              idle_sleep_s: 0.05
            converter: {{key: json, value: json}}
            errors: {{policy: dead_letter, topic: dlq}}
            transforms:
              - {{type: timestamp, config: {{field: after.at, required: false}}}}
    """))
    return path


def origins(records: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k[len(SOURCE):]: v for k, v in dict(r["headers"]).items() if k.startswith(SOURCE)}  # type: ignore[arg-type]
            for r in records]


def test_dead_letters_name_table_lsn_txid_and_snapshot_chunk(
    pg_dsn: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> None:
        conn = await connect(pg_dsn)
        try:
            await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, at text)")
            await conn.execute(f"INSERT INTO {name} SELECT i, '2024-05-01T12:00:0' || i || 'Z' FROM generate_series(1, 5) i")
            await conn.execute(f"UPDATE {name} SET at = 'not a time' WHERE id = 4")
            # no key: chunks by OFFSET in the snapshot's transaction, in heap (here: insert) order
            await conn.execute(f"CREATE TABLE {name}_nokey (id int, at text)")
            await conn.execute(f"ALTER TABLE {name}_nokey REPLICA IDENTITY FULL")
            await conn.execute(f"INSERT INTO {name}_nokey VALUES (1, '2024-05-01T12:00:01Z'), "
                               f"(2, '2024-05-01T12:00:02Z'), (3, 'bad')")
        finally:
            await conn.close()

    asyncio.run(setup())
    config = pipeline(tmp_path, pg_dsn, name)
    code, _, err = run(capsys, "run", str(config), "--until-idle")
    assert code == 0, err
    dead = consume(capsys, "dlq", "--from-beginning", "-c", str(config))
    assert len(dead) == 2
    snap, keyless = origins(dead)
    # chunks of two rows by key: 1-2, 3-4, 5; row 4 is in the second, after key 2
    snapshot = snap.pop("snapshot")  # the snapshot's xmin:xmax:xip
    assert snapshot.count(":") == 2
    assert snap == {"table": f"public.{name}", "snapshot_chunk": "2", "snapshot_after": '["2"]'}
    assert dead[0]["value"]["after"] == {"id": 4, "at": "not a time"}  # type: ignore[index]
    # the keyless table: its second chunk, after the two rows before it
    assert keyless == {"table": f"public.{name}_nokey", "snapshot": snapshot, "snapshot_chunk": "2",
                       "snapshot_offset": "2"}
    assert dead[1]["value"]["after"] == {"id": 3, "at": "bad"}  # type: ignore[index]

    async def change() -> tuple[int, int, int]:
        conn = await connect(pg_dsn)
        try:
            before = parse_lsn(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {name} VALUES (6, '2024-05-01T12:00:06Z')")
                await conn.execute(f"INSERT INTO {name} VALUES (7, 'never')")
                xid = int(await conn.fetchval("SELECT txid_current()")) & 0xFFFFFFFF  # pgoutput's 32 bits
            after = parse_lsn(await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
            return before, after, xid
        finally:
            await conn.close()

    before, after, xid = asyncio.run(change())
    code, _, err = run(capsys, "run", str(config), "--until-idle")
    assert code == 0, err
    dead = consume(capsys, "dlq", "--from-beginning", "-c", str(config))
    assert len(dead) == 3
    streamed = origins(dead)[2]
    assert streamed["table"] == f"public.{name}"
    assert streamed["txid"] == str(xid)
    assert before < parse_lsn(streamed["lsn"]) < after
    assert dead[2]["value"]["after"] == {"id": 7, "at": "never"}  # type: ignore[index]
    assert dict(dead[2]["headers"])["millpond.error.offset"].startswith(  # type: ignore[arg-type]
        f"source 'cdc' at table=public.{name} lsn={streamed['lsn']} txid={xid}")

    async def cleanup() -> None:
        conn = await connect(pg_dsn)
        try:
            await conn.execute(f"SELECT pg_drop_replication_slot('{name}')")
            await conn.execute(f"DROP PUBLICATION {name}")
            await conn.execute(f"DROP TABLE {name}, {name}_nokey")
        finally:
            await conn.close()

    asyncio.run(cleanup())
