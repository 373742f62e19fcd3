"""The Postgres CDC source against the real server, driven through start/poll/commit."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import asyncpg
import pytest

from millpond.connectors.postgres.pgoutput import parse_lsn
from millpond.connectors.postgres.source import UNAVAILABLE, PostgresSource
from millpond.errors import ConfigError, ConnectorError
from tests.servers.postgres import _binary

from .conftest import connect, drain, make_source, records_of

pytestmark = pytest.mark.postgres


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _cleanup(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
        f"millpond_{name}",
    )
    await conn.execute(f"DROP PUBLICATION IF EXISTS millpond_{name}")


def test_stream_insert_update_delete_truncate(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        await conn.execute(f"INSERT INTO {name} VALUES (1, 'before-slot')")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0)
        await src.start(None)
        await conn.execute(f"INSERT INTO {name} VALUES (2, 'a'), (3, 'b')")
        await conn.execute(f"UPDATE {name} SET v = 'c' WHERE id = 2")
        await conn.execute(f"DELETE FROM {name} WHERE id = 3")
        await conn.execute(f"UPDATE {name} SET id = 20 WHERE id = 2")
        await conn.execute(f"TRUNCATE {name}")
        records, offset = await drain(src)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()

        topic = f"{name}.public.{name}"
        assert {r.topic for r in records} == {topic}
        ops = [(r.value["op"] if r.value else None, r.key) for r in records]
        assert ops == [
            ("c", {"id": 2}), ("c", {"id": 3}),
            ("u", {"id": 2}),
            ("d", {"id": 3}), (None, {"id": 3}),
            ("d", {"id": 2}), (None, {"id": 2}), ("c", {"id": 20}),
            ("t", None),
        ]
        first = records[0].value
        assert first["before"] is None and first["after"] == {"id": 2, "v": "a"}
        src_block = first["source"]
        assert src_block["schema"] == "public" and src_block["table"] == name
        assert src_block["db"] == "millpond" and src_block["txid"] > 0 and "/" in src_block["lsn"]
        assert records[0].timestamp == src_block["commit_ts_ms"] > 0
        # inserts of one transaction share its txid; the next transaction has another
        assert records[1].value["source"]["txid"] == src_block["txid"]
        assert records[2].value["source"]["txid"] != src_block["txid"]
        assert records[2].value["after"] == {"id": 2, "v": "c"}
        assert records[3].value["before"] == {"id": 3}
        assert offset["snapshot_done"] is True and "/" in offset["lsn"]

    run(go())


def test_each_batch_ends_on_a_transaction_boundary(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0,
                          max_batch_records=7)
        await src.start(None)
        for t in range(5):
            await conn.execute(f"INSERT INTO {name} SELECT g FROM generate_series({t * 10}, {t * 10 + 9}) g")
        batches = []
        while True:
            b = await src.poll()
            if b is None:
                break
            batches.append(b)
            await src.commit(b.offset)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()
        # 10-row transactions are never split, even though batches hold at most 7 records
        assert [len(records_of(b)) for b in batches] == [10] * 5
        for b in batches:
            assert len({r.value["source"]["txid"] for r in records_of(b)}) == 1
        lsns = [b.offset["lsn"] for b in batches]
        assert len(set(lsns)) == 5

    run(go())


def test_restart_resumes_without_duplicates(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0,
                          max_batch_records=1)
        await src.start(None)
        for i in range(6):
            await conn.execute(f"INSERT INTO {name} VALUES ({i})")
        # the log got batches for the first three transactions; commit() ran only for two
        got = []
        offsets = []
        for _ in range(3):
            b = await src.poll()
            assert b is not None
            got.extend(records_of(b))
            offsets.append(b.offset)
        await src.commit(offsets[1])
        await src.stop()  # "crash": the slot still sits before the third transaction

        src2 = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0)
        await src2.start(offsets[2])  # the log's last committed offset
        rest, _ = await drain(src2)
        await src2.stop()
        # and once more from the end: nothing again
        src3 = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0)
        last = (await _slot_offset(conn, name))
        await src3.start(last)
        again, _ = await drain(src3)
        await src3.stop()
        await _cleanup(conn, name)
        await conn.close()
        ids = [r.key["id"] for r in got + rest]
        assert sorted(ids) == list(range(6)) and len(ids) == 6
        assert again == []

    run(go())


async def _slot_offset(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    lsn = await conn.fetchval(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", f"millpond_{name}"
    )
    return {"lsn": lsn, "snapshot_done": True}


def test_slot_is_advanced_only_after_commit(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0)
        await src.start(None)
        start = await _slot_offset(conn, name)
        await conn.execute(f"INSERT INTO {name} VALUES (1)")
        await conn.execute(f"INSERT INTO {name} VALUES (2)")
        b = await src.poll()
        assert b is not None and [r.key for r in records_of(b)] == [{"id": 1}, {"id": 2}]
        assert await src.poll() is None  # read ahead; the slot stays where the log is
        assert await _slot_offset(conn, name) == start
        await src.commit(b.offset)
        # advanced lazily (every heartbeat_interval_s, see test_heartbeat_...), never past the log
        assert parse_lsn((await _slot_offset(conn, name))["lsn"]) <= parse_lsn(b.offset["lsn"])
        await src.stop()  # a clean stop leaves the slot at the log's offset
        assert (await _slot_offset(conn, name))["lsn"] == b.offset["lsn"]
        await _cleanup(conn, name)
        await conn.close()

    run(go())


def test_replica_identity_full_and_toast(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, big text, v int)")
        await conn.execute(f"ALTER TABLE {name} ALTER big SET STORAGE EXTERNAL")
        await conn.execute(f"CREATE TABLE {name}_f (id int PRIMARY KEY, big text, v int)")
        await conn.execute(f"ALTER TABLE {name}_f ALTER big SET STORAGE EXTERNAL")
        await conn.execute(f"ALTER TABLE {name}_f REPLICA IDENTITY FULL")
        src = make_source(pg_dsn, name, [name, f"{name}_f"], snapshot_mode="never", idle_sleep_s=0)
        await src.start(None)
        big = "x" * 5000
        for t in (name, f"{name}_f"):
            await conn.execute(f"INSERT INTO {t} VALUES (1, $1, 1)", big)
            await conn.execute(f"UPDATE {t} SET v = 2")
            await conn.execute(f"DELETE FROM {t}")
        # a key change leaves the TOASTed column unsent and the old row is keyed elsewhere:
        # the value is read back from the table
        await conn.execute(f"INSERT INTO {name} VALUES (5, $1, 5)", big + "5")
        await conn.execute(f"UPDATE {name} SET id = 6 WHERE id = 5")
        records, _ = await drain(src)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()
        default = [r.value for r in records if r.value and r.value["source"]["table"] == name]
        full = [r.value for r in records if r.value and r.value["source"]["table"] == f"{name}_f"]
        # DEFAULT: the unchanged TOAST column is marked, never a silent null
        assert default[1]["op"] == "u" and default[1]["after"]["big"] == UNAVAILABLE
        assert default[1]["source"]["unavailable"] == ["big"]
        assert default[1]["before"] is None
        assert default[2]["before"] == {"id": 1}
        moved = default[-1]
        assert moved["op"] == "c" and moved["after"] == {"id": 6, "big": big + "5", "v": 5}
        assert moved["source"]["read_back"] == ["big"] and "unavailable" not in moved["source"]
        assert default[-2]["op"] == "d" and default[-2]["before"] == {"id": 5}
        # FULL: filled from the old row, and before holds the whole old row
        assert full[1]["after"] == {"id": 1, "big": big, "v": 2}
        assert full[1]["before"] == {"id": 1, "big": big, "v": 1}
        assert full[2]["before"] == {"id": 1, "big": big, "v": 2}

    run(go())


def test_clear_errors(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name}_nokey (v int)")
        with pytest.raises(ConfigError, match=r"no primary key.*REPLICA IDENTITY"):
            await make_source(pg_dsn, name, [f"{name}_nokey"]).start(None)
        with pytest.raises(ConfigError, match="does not exist"):
            await make_source(pg_dsn, name, ["nope_table"]).start(None)
        # a role without REPLICATION
        await conn.execute(f"CREATE ROLE {name}_r LOGIN PASSWORD 'pw'")
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        await conn.execute(f"GRANT SELECT ON {name} TO {name}_r")
        host, port = conn._addr[:2]  # noqa: SLF001 - the fixture's server
        dsn = f"postgresql://{name}_r:pw@{host}:{port}/millpond"
        src = make_source(dsn, name, [name])
        with pytest.raises(ConnectorError, match="lacks the REPLICATION privilege") as err:
            await src.start(None)
        assert "pw@" not in str(err.value)
        await src.stop()
        # slot in use by another reader
        await conn.execute(f"ALTER TABLE {name}_nokey REPLICA IDENTITY FULL")
        src = make_source(pg_dsn, name, [name])
        await src.start(None)
        # another reader streams from the slot (the walsender protocol holds it while it runs)
        reader = subprocess.Popen(
            [_binary("pg_recvlogical"), "-d", pg_dsn, "--slot", f"millpond_{name}", "--start",
             "-o", "proto_version=1", "-o", f"publication_names=millpond_{name}", "-f", "/dev/null"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                if await conn.fetchval(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1", f"millpond_{name}"
                ):
                    break
                await asyncio.sleep(0.1)
            src2 = make_source(pg_dsn, name, [name])
            with pytest.raises(ConnectorError, match="in use by another reader"):
                await src2.start(None)
            await src2.stop()
        finally:
            reader.terminate()
            reader.wait(10)
        await asyncio.sleep(0.5)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()

    run(go())


def test_wal_level_not_logical_is_a_clear_error(name: str) -> None:
    from tests.servers.postgres import start_postgres

    server = start_postgres(wal_level="replica")
    try:
        async def go() -> None:
            conn = await connect(server.dsn)
            await conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await conn.close()
            src = make_source(server.dsn, name, ["t"])
            with pytest.raises(ConnectorError, match="wal_level is 'replica'.*wal_level = logical"):
                await src.start(None)
            await src.stop()

        run(go())
    finally:
        server.stop()


def test_too_few_replication_slots_is_a_clear_error(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        hog = await connect(pg_dsn)  # its temporary slots go with its session
        free = int(await conn.fetchval("SHOW max_replication_slots")) - await conn.fetchval(
            "SELECT count(*) FROM pg_replication_slots")
        for i in range(free - 1):  # leave one: the source's own slot, not its reading copy
            await hog.execute(f"SELECT pg_create_logical_replication_slot('{name}_hog{i}', 'pgoutput', true)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never")
        try:
            await src.start(None)
            with pytest.raises(ConnectorError, match="needs two replication slots.*max_replication_slots"):
                await src.poll()
        finally:
            await src.stop()
            await hog.close()
        await _cleanup(conn, name)
        await conn.close()

    run(go())


def test_dsn_password_is_masked() -> None:
    from millpond.connectors.postgres.sql import mask as _mask

    assert _mask("postgresql://u:s3cret@h:5/db") == "postgresql://u:***@h:5/db"
    assert "s3cret" not in _mask("host=h user=u password=s3cret dbname=d")
    src = make_source("postgresql://u:s3cret@h:5/db", "x", ["t"])
    assert "s3cret" not in repr(src.cfg)
    assert isinstance(src, PostgresSource)


def fold(records: list[Any]) -> dict[Any, dict[str, Any]]:
    """Apply change records to a dict keyed by the record key, as a compacting consumer would."""
    state: dict[Any, dict[str, Any]] = {}
    for r in records:
        k = tuple(sorted(r.key.items())) if r.key else None
        if r.value is None:
            state.pop(k, None)
        elif r.value["op"] == "t":
            state = {kk: v for kk, v in state.items() if v.get("__table") != r.value["source"]["table"]}
        elif r.value["op"] == "d":
            state.pop(k, None)
        else:
            state[k] = dict(r.value["after"], __table=r.value["source"]["table"])
    return state


def test_snapshot_with_concurrent_writers_ends_equal(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v int, note text)")
        await conn.execute(f"INSERT INTO {name} SELECT g, 0, 'seed' FROM generate_series(1, 3000) g")
        stop = asyncio.Event()
        writes = 0

        async def writer(seed: int) -> None:
            nonlocal writes
            w = await connect(pg_dsn)
            i = seed
            while not stop.is_set():
                i += 7
                async with w.transaction():
                    await w.execute(f"UPDATE {name} SET v = v + 1 WHERE id = $1", i % 3000 + 1)
                    await w.execute(f"INSERT INTO {name} VALUES ($1, 0, 'new') ON CONFLICT (id) DO UPDATE SET v = -1",
                                    3000 + i)
                    await w.execute(f"DELETE FROM {name} WHERE id = $1", (i * 13) % 3000 + 1)
                writes += 1
                await asyncio.sleep(0)
            await w.close()

        writers = [asyncio.create_task(writer(s)) for s in (1, 2)]
        await asyncio.sleep(0.2)
        src = make_source(pg_dsn, name, [name], snapshot_chunk_rows=500, idle_sleep_s=0)
        await src.start(None)
        records = []
        snapshot_batches = 0
        while not src._snapshot_done:  # noqa: SLF001 - copy while the writers run
            b = await src.poll()
            assert b is not None
            snapshot_batches += 1
            records.extend(records_of(b))
            await src.commit(b.offset)
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.gather(*writers)
        more, _ = await drain(src)
        records.extend(more)
        await src.stop()
        rows = await conn.fetch(f"SELECT id, v, note FROM {name}")
        await _cleanup(conn, name)
        await conn.close()
        assert writes > 10 and snapshot_batches >= 4
        assert any(r.value and r.value["op"] == "r" for r in records)
        assert any(r.value and r.value["op"] == "c" for r in records)
        expected = {(("id", r["id"]),): {"id": r["id"], "v": r["v"], "note": r["note"], "__table": name} for r in rows}
        assert fold(records) == expected

    run(go())


def test_restart_in_the_middle_of_a_snapshot(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (a int, b text, PRIMARY KEY (a, b))")
        await conn.execute(f"INSERT INTO {name} SELECT g % 50, g::text, FROM generate_series(1, 1000) g".replace(", FROM", " FROM"))
        src = make_source(pg_dsn, name, [name], snapshot_chunk_rows=300, idle_sleep_s=0)
        await src.start(None)
        first = []
        b = await src.poll()
        assert b is not None and b.offset["snapshot_done"] is False
        first.extend(records_of(b))
        await src.stop()  # crash after one chunk was committed to the log
        await conn.execute(f"DELETE FROM {name} WHERE a = 0")
        await conn.execute(f"INSERT INTO {name} VALUES (999, 'late')")
        src2 = make_source(pg_dsn, name, [name], snapshot_chunk_rows=300, idle_sleep_s=0)
        await src2.start(b.offset)
        rest, last = await drain(src2)
        await src2.stop()
        rows = await conn.fetch(f"SELECT a, b FROM {name}")
        await _cleanup(conn, name)
        await conn.close()
        assert last["snapshot_done"] is True
        state = fold(first + rest)
        assert state == {(("a", r["a"]), ("b", r["b"])): {"a": r["a"], "b": r["b"], "__table": name} for r in rows}
        # the second snapshot went on after the first chunk's last key, not from the start
        snap2 = [r for r in rest if r.value and r.value["op"] == "r"]
        assert len(first) == 300 and len(snap2) < 1000 - 300 + 2

    run(go())


def test_initial_only_copies_and_stops(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        await conn.execute(f"INSERT INTO {name} SELECT generate_series(1, 10)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="initial_only", idle_sleep_s=0)
        await src.start(None)
        records, offset = await drain(src)
        await src.stop()
        slots = await conn.fetchval("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                                    f"millpond_{name}")
        await conn.close()
        assert sorted(r.key["id"] for r in records) == list(range(1, 11))
        assert {r.value["op"] for r in records} == {"r"}
        assert offset["snapshot_done"] is True and slots == 0

    run(go())


def test_heartbeat_moves_an_idle_slot_and_lag_is_reported(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        await conn.execute(f"CREATE TABLE {name}_other (id int PRIMARY KEY, pad text)")
        src = make_source(pg_dsn, name, [name], snapshot_mode="never", idle_sleep_s=0,
                          heartbeat_interval_s=0.2)
        await src.start(None)
        start = (await _slot_offset(conn, name))["lsn"]
        # WAL from a table the source does not capture
        await conn.execute(f"INSERT INTO {name}_other SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
        lag = await src.slot_lag()
        assert lag is not None and lag > 1_000_000
        beat = None
        for _ in range(50):
            b = await src.poll()
            if b is not None:
                beat = b
                break
            await asyncio.sleep(0.05)
        assert beat is not None and records_of(beat) == []
        from millpond.connectors.postgres.pgoutput import parse_lsn

        assert parse_lsn(beat.offset["lsn"]) > parse_lsn(start)
        await src.commit(beat.offset)  # starts advancing the slot (in the background) to the heartbeat
        await conn.execute(f"INSERT INTO {name} VALUES (1)")
        b = await src.poll()
        assert b is not None and [r.key for r in records_of(b)] == [{"id": 1}]
        for _ in range(100):
            if parse_lsn((await _slot_offset(conn, name))["lsn"]) >= parse_lsn(beat.offset["lsn"]):
                break
            await asyncio.sleep(0.05)
        assert parse_lsn((await _slot_offset(conn, name))["lsn"]) >= parse_lsn(beat.offset["lsn"])
        # restart_lsn (what lag measures) follows lazily, at the next running-xacts record
        assert isinstance(await src.slot_lag(), int)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()

    run(go())


def test_partitioned_table_is_captured_under_its_own_name(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int, region int, PRIMARY KEY (id, region)) PARTITION BY LIST (region)")
        await conn.execute(f"CREATE TABLE {name}_r1 PARTITION OF {name} FOR VALUES IN (1)")
        await conn.execute(f"CREATE TABLE {name}_r2 PARTITION OF {name} FOR VALUES IN (2)")
        await conn.execute(f"INSERT INTO {name} VALUES (1, 1), (2, 2)")
        src = make_source(pg_dsn, name, [name], idle_sleep_s=0)
        await src.start(None)
        records, _ = await drain(src)
        await conn.execute(f"INSERT INTO {name} VALUES (3, 1), (4, 2)")
        more, _ = await drain(src)
        records += more
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()
        assert [(r.value["op"], r.key) for r in records] == [
            ("r", {"id": 1, "region": 1}), ("r", {"id": 2, "region": 2}),
            ("c", {"id": 3, "region": 1}), ("c", {"id": 4, "region": 2}),
        ]
        assert {r.value["source"]["table"] for r in records} == {name}

    run(go())


def test_table_with_full_identity_and_no_key(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (v int, w text)")
        await conn.execute(f"ALTER TABLE {name} REPLICA IDENTITY FULL")
        await conn.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 25) g")
        src = make_source(pg_dsn, name, [name, name], snapshot_chunk_rows=10, idle_sleep_s=0)
        await src.start(None)
        snap, _ = await drain(src)
        await conn.execute(f"UPDATE {name} SET w = 'y' WHERE v = 1")
        await conn.execute(f"DELETE FROM {name} WHERE v = 2")
        stream, _ = await drain(src)
        await src.stop()
        await _cleanup(conn, name)
        await conn.close()
        assert sorted(r.value["after"]["v"] for r in snap) == list(range(1, 26))  # once, in 3 chunks
        assert all(r.key is None for r in snap + stream)
        assert len(stream) == 2  # no tombstone without a key
        upd, dele = [r.value for r in stream if r.value is not None]
        assert upd["before"] == {"v": 1, "w": "x"} and upd["after"] == {"v": 1, "w": "y"}
        assert dele["op"] == "d" and dele["before"] == {"v": 2, "w": "x"}

    run(go())
