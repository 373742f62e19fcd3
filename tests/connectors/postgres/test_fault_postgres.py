"""configs/postgres-cdc.yaml as users run it, and SIGKILLed under write load.

The shipped pipeline (postgres-cdc source -> embedded log -> postgres sink)
runs as a separate ``millpond run`` process against the real Postgres of the
test harness, in a scratch directory. Source tables live in their own schema,
the replica tables in another (created ``LIKE`` the source ones).

``test_pipeline_config_runs`` runs it once to the end. The fault test keeps
two writer connections busy (inserts, updates with and without the TOASTed
``notes`` column, key changes, deletes, the odd truncate of ``orders``) while
the worker is killed with SIGKILL at random moments, at least 20 times, and
started again; a last run drains everything (``--until-idle``). Then the
replica tables must equal the source tables row for row, and the log is checked
against the server's own account of what was committed:

- every writer transaction ends by taking the next number of a one-row counter
  (``commit_order``); its row lock is held to the commit, so the numbers are the
  commit order. Each writer keeps (number, txid, keys it changed).
- the snapshot the source copied (``xmin:xmax:xip``, read from its checkpoint in
  ``__source_offsets``) says which transactions the copy already holds; every
  other transaction that changed a row was committed after the slot was
  created and must be in the log exactly once (as its txid, with each of its
  changes once), and nothing else may be;
- per key, the log's transactions come in commit order.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.faults import kill_repeatedly, millpond_command

pytestmark = [pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[3]
#: at least 20 by default; MILLPOND_FAULT_KILLS changes it (e.g. to debug with fewer)
KILLS = int(os.environ.get("MILLPOND_FAULT_KILLS", "20"))


async def setup_schemas(dsn: str, schema: str, replica: str, customers: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(
        f"CREATE TABLE {schema}.customers (id bigint PRIMARY KEY, name text, email text, "
        "balance numeric(12,2), tags text[], notes text, updated_at timestamptz)"
    )
    await conn.execute(f"ALTER TABLE {schema}.customers ALTER notes SET STORAGE EXTERNAL")
    await conn.execute(
        f"CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, customer_id bigint, total numeric(12,2), "
        "items jsonb, created_at timestamptz)"
    )
    await conn.execute(
        f"INSERT INTO {schema}.customers SELECT g, 'seed-' || g, NULL, g / 100.0, ARRAY['s'], "
        f"repeat('n', 3000), now() FROM generate_series(1, {customers}) g"
    )
    await conn.execute(f"CREATE SCHEMA {replica}")
    for table in ("customers", "orders"):
        await conn.execute(f"CREATE TABLE {replica}.{table} (LIKE {schema}.{table} INCLUDING ALL)")
    # not captured: its row lock orders the writers' commits (see the module's docstring)
    await conn.execute(f"CREATE TABLE {schema}.commit_order (n bigint NOT NULL)")
    await conn.execute(f"INSERT INTO {schema}.commit_order VALUES (0)")
    await conn.close()


def rows(status: str) -> int:
    """Rows an INSERT/UPDATE/DELETE status (``UPDATE 1``) says it changed."""
    return int(status.split()[-1])


@dataclass
class Committed:
    """One writer transaction as the server committed it."""

    order: int  # from commit_order: the commit order across writers
    txid: int  # txid_current(), 64 bits
    keys: list[tuple[str, int]]  # (table, id) of every row changed, in statement order
    truncated: bool


class Writer(threading.Thread):
    """Random transactions on the source tables; remembers each committed txid."""

    def __init__(self, dsn: str, schema: str, seed: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.schema, self.rng, self.rate = dsn, schema, random.Random(seed), rate
        self.stop_flag = threading.Event()
        self.committed: list[Committed] = []
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        rng, s = self.rng, self.schema
        next_id = 1_000_000 + rng.randrange(1000) * 10_000
        while not self.stop_flag.is_set():
            keys: list[tuple[str, int]] = []
            truncated = False
            async with conn.transaction():
                for _ in range(rng.randint(1, 6)):
                    roll = rng.random()
                    cid = rng.randint(1, 3000)
                    if roll < 0.25:
                        next_id += 1
                        notes = "N" * rng.choice([0, 10, 4000])
                        await conn.execute(
                            f"INSERT INTO {s}.customers VALUES ($1, $2, $3, $4, $5, $6, now()) "
                            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
                            next_id, f"c{next_id}", f"c{next_id}@x.test", f"{rng.randint(0, 10**6) / 100:.2f}",
                            rng.sample(["a", "b", "c"], rng.randint(0, 3)), notes,
                        )
                        keys.append(("customers", next_id))
                        self.counts["insert"] += 1
                    elif roll < 0.55:  # leaves the TOASTed notes alone: 'u' in the WAL
                        if rows(await conn.execute(
                            f"UPDATE {s}.customers SET balance = balance + 1, updated_at = now() WHERE id = $1", cid
                        )):
                            keys.append(("customers", cid))
                        self.counts["update"] += 1
                    elif roll < 0.65:
                        if rows(await conn.execute(f"UPDATE {s}.customers SET notes = $2 WHERE id = $1", cid,
                                                   f"rewritten {rng.random()} " + "r" * 3000)):
                            keys.append(("customers", cid))
                        self.counts["update_toast"] += 1
                    elif roll < 0.7:
                        next_id += 1
                        if rows(await conn.execute(f"UPDATE {s}.customers SET id = $2 WHERE id = $1", cid, next_id)):
                            keys += [("customers", cid), ("customers", next_id)]
                        self.counts["key_change"] += 1
                    elif roll < 0.8:
                        if rows(await conn.execute(f"DELETE FROM {s}.customers WHERE id = $1", cid)):
                            keys.append(("customers", cid))
                        self.counts["delete"] += 1
                    elif roll < 0.995:
                        next_id += 1
                        await conn.execute(
                            f"INSERT INTO {s}.orders VALUES ($1, $2, $3, $4, now())",
                            next_id, cid, f"{rng.randint(1, 10**5) / 100:.2f}",
                            json.dumps({"sku": [rng.randint(1, 9) for _ in range(rng.randint(1, 4))]}),
                        )
                        keys.append(("orders", next_id))
                        self.counts["order"] += 1
                    else:
                        await conn.execute(f"TRUNCATE {s}.orders")
                        truncated = True
                        self.counts["truncate"] += 1
                txid = await conn.fetchval("SELECT txid_current()")
                order = await conn.fetchval(f"UPDATE {s}.commit_order SET n = n + 1 RETURNING n")
            self.committed.append(Committed(int(order), int(txid), keys, truncated))
            await asyncio.sleep(rng.uniform(0, 2 / self.rate))
        await conn.close()


async def tables_differ(dsn: str, schema: str, replica: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    out = {}
    for t in ("customers", "orders"):
        out[t] = await conn.fetchval(
            f"SELECT count(*) FROM ((SELECT to_jsonb(a) FROM {schema}.{t} a EXCEPT ALL SELECT to_jsonb(b) FROM {replica}.{t} b) "
            f"UNION ALL (SELECT to_jsonb(b) FROM {replica}.{t} b EXCEPT ALL SELECT to_jsonb(a) FROM {schema}.{t} a)) d"
        )
        out[f"{t}_rows"] = await conn.fetchval(f"SELECT count(*) FROM {schema}.{t}")
        if out[t]:
            sample = await conn.fetch(
                f"SELECT a.id, b.id AS replica_id, (SELECT array_agg(k) FROM jsonb_each(to_jsonb(a)) e(k, v) "
                f"WHERE v IS DISTINCT FROM to_jsonb(b) -> k) AS columns "
                f"FROM {schema}.{t} a FULL JOIN {replica}.{t} b ON a.id = b.id "
                f"WHERE to_jsonb(a) IS DISTINCT FROM to_jsonb(b) LIMIT 5"
            )
            out[f"{t}_sample"] = [dict(r) for r in sample]  # type: ignore[assignment]
    await conn.close()
    return out


async def drop(dsn: str, schema: str, replica: str) -> None:
    if os.environ.get("MILLPOND_FAULT_KEEP"):
        return  # left for a look (MILLPOND_FAULT_KEEP=1)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.execute(f"DROP SCHEMA IF EXISTS {replica} CASCADE")
    await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'millpond_shop_cdc'"
    )
    await conn.execute("DROP PUBLICATION IF EXISTS millpond_shop_cdc")
    await conn.execute("DELETE FROM millpond_sink_offsets WHERE connector = 'shop-replica'")
    await conn.close()


def scratch(tmp_path: Path, dsn: str, schema: str, replica: str, chunk: int) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "postgres-cdc.yaml", tmp_path / "configs" / "postgres-cdc.yaml")
    env = {**os.environ, "PG_DSN": dsn, "PG_SCHEMA": schema, "PG_TARGET_SCHEMA": replica,
           "PG_SNAPSHOT_CHUNK_ROWS": str(chunk)}
    return millpond_command() + ["run", "configs/postgres-cdc.yaml"], env


def log_changes(tmp_path: Path, env: dict[str, str], *topics: str, fmt: str = "json") -> list[dict[str, Any]]:
    out = subprocess.run(
        millpond_command() + ["consume", *(topics or ("shop.customers", "shop.orders")), "--log", "data/postgres-cdc",
                              "--from-beginning", "--format", fmt],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, f"consume {topics} failed: {out.stderr[-2000:]}"
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def snapshot_saw(snapshot: str, txid: int) -> bool:
    """Did the ``pg_current_snapshot()`` text ``xmin:xmax:xip`` see ``txid`` (64 bits) committed?"""
    xmin, xmax, xip = snapshot.split(":")
    return txid < int(xmin) or (txid < int(xmax) and str(txid) not in xip.split(","))


def check_log_against_server(changes: list[dict[str, Any]], committed: list[Committed], snapshot: str) -> int:
    """Every transaction the snapshot did not see is in the log once, nothing else is; per key in commit order.

    Returns how many transactions were checked.
    """
    expected = sorted((c for c in committed if (c.keys or c.truncated) and not snapshot_saw(snapshot, c.txid)),
                      key=lambda c: c.order)
    streamed = [c for c in changes if c["value"] is not None and c["value"]["op"] != "r"]
    # each change once: no (txid, LSN, op, key) twice
    seen = Counter(
        (c["value"]["source"]["txid"], c["value"]["source"]["lsn"], c["value"]["op"], json.dumps(c["key"]))
        for c in streamed
    )
    twice = [k for k, n in seen.items() if n > 1]
    assert not twice, f"changes appended to the log more than once: {twice[:5]}"
    # exactly the transactions committed after the snapshot, each once
    want = Counter(c.txid & 0xFFFFFFFF for c in expected)
    assert len(want) == len(expected), "two writer transactions share a 32-bit xid"
    got = set(seen_txid for seen_txid, _, _, _ in seen)
    missing = sorted(set(want) - got)
    extra = sorted(got - set(want))
    assert not missing, f"{len(missing)} of {len(want)} committed transactions are not in the log: {missing[:10]}"
    assert not extra, f"transactions in the log that no writer committed after the snapshot: {extra[:10]}"
    # per key, the transactions in the log come in commit order, each as one run of records
    want_by_key: dict[tuple[str, int], list[int]] = {}
    for c in expected:
        for key in dict.fromkeys(c.keys):
            want_by_key.setdefault(key, []).append(c.txid & 0xFFFFFFFF)
    got_by_key: dict[tuple[str, int], list[int]] = {}
    for c in streamed:
        if c["key"] is None:  # a truncate
            continue
        runs = got_by_key.setdefault((c["value"]["source"]["table"], c["key"]["id"]), [])
        if not runs or runs[-1] != c["value"]["source"]["txid"]:
            runs.append(c["value"]["source"]["txid"])
    for key, txids in want_by_key.items():
        assert got_by_key.get(key) == txids, f"{key}: log has transactions {got_by_key.get(key)}, committed {txids}"
    assert set(got_by_key) <= set(want_by_key), sorted(set(got_by_key) - set(want_by_key))[:5]
    return len(expected)


def source_snapshot(tmp_path: Path, env: dict[str, str]) -> str:
    """The snapshot the source copied, from its committed checkpoint."""
    checkpoints = [c["value"] for c in log_changes(tmp_path, env, "__source_offsets", fmt="auto") if c["value"]]
    snapshots = {c["snapshot"] for c in checkpoints if c.get("snapshot")}
    assert len(snapshots) == 1, f"the source's checkpoints name {len(snapshots)} snapshots: {snapshots}"
    return snapshots.pop()


def test_pipeline_config_runs(tmp_path: Path, pg_dsn: str) -> None:
    schema, replica = f"src_{os.getpid()}_a", f"dst_{os.getpid()}_a"
    asyncio.run(setup_schemas(pg_dsn, schema, replica, customers=500))
    command, env = scratch(tmp_path, pg_dsn, schema, replica, chunk=200)
    try:
        conn_writes = Writer(pg_dsn, schema, seed=7, rate=200)
        conn_writes.start()
        time.sleep(1.0)
        conn_writes.stop_flag.set()
        conn_writes.join()
        assert conn_writes.error is None, conn_writes.error
        final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-3000:]
        diff = asyncio.run(tables_differ(pg_dsn, schema, replica))
        assert diff["customers"] == 0 and diff["orders"] == 0, diff
        assert diff["customers_rows"] > 400
        assert "millpond-test-pw" not in final.stderr + final.stdout  # the DSN's password is never logged
    finally:
        asyncio.run(drop(pg_dsn, schema, replica))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_postgres_pipeline_survives_sigkill(tmp_path: Path, pg_dsn: str) -> None:
    schema, replica = f"src_{os.getpid()}_f", f"dst_{os.getpid()}_f"
    asyncio.run(setup_schemas(pg_dsn, schema, replica, customers=3000))
    command, env = scratch(tmp_path, pg_dsn, schema, replica, chunk=500)
    seed = int(os.environ.get("MILLPOND_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    writers = [Writer(pg_dsn, schema, seed + i, rate=60) for i in range(2)]
    try:
        with open(tmp_path / "worker.log", "wb") as logfile:
            for w in writers:
                w.start()
            try:
                kills = kill_repeatedly(
                    command, cwd=tmp_path, env=env, logfile=logfile, kills=KILLS, rng=rng,
                    alive_s=(0.5, 7.0),  # the runtime flushes sinks every few seconds
                )
            finally:
                for w in writers:
                    w.stop_flag.set()
                for w in writers:
                    w.join()
            final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, env=env, stdout=logfile,
                                   stderr=subprocess.STDOUT, timeout=300)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert final.returncode == 0, worker_log[-3000:]
        for w in writers:
            assert w.error is None, w.error
        counts = sum((w.counts for w in writers), Counter())
        assert kills >= KILLS and counts["delete"] > 0 and counts["key_change"] > 0, counts

        diff = asyncio.run(tables_differ(pg_dsn, schema, replica))
        assert diff["customers"] == 0 and diff["orders"] == 0, diff

        changes = log_changes(tmp_path, env)
        committed = [c for w in writers for c in w.committed]
        checked = check_log_against_server(changes, committed, source_snapshot(tmp_path, env))
        assert checked > len(committed) // 2, (checked, len(committed))  # most came after the snapshot
        assert "millpond-test-pw" not in worker_log
        print(f"{kills} kills, {len(committed)} writer transactions ({dict(counts)}), "
              f"{checked} committed after the snapshot, each once in the log, {len(changes)} log records, {diff}")
    finally:
        asyncio.run(drop(pg_dsn, schema, replica))


def test_the_log_check_catches_loss_doubling_and_reordering() -> None:
    """``check_log_against_server`` itself, on made-up logs: it must not pass a wrong one."""

    def change(txid: int, key: int, lsn: str, op: str = "u") -> dict[str, Any]:
        return {"key": {"id": key}, "value": {"op": op, "source": {"txid": txid, "lsn": lsn, "table": "customers"}}}

    committed = [Committed(1, 100, [("customers", 1)], False), Committed(2, 101, [("customers", 1), ("customers", 2)], False),
                 Committed(3, 99, [("customers", 3)], False)]  # 99 was seen by the snapshot below
    snapshot = "100:100:"
    good = [change(100, 1, "0/1"), change(101, 1, "0/2"), change(101, 2, "0/3")]
    assert check_log_against_server(good, committed, snapshot) == 2
    bad = {
        "lost": good[:1],
        "doubled": good + [change(100, 1, "0/1")],
        "reordered": [change(101, 1, "0/2"), change(100, 1, "0/1"), change(101, 2, "0/3")],
        "seen by the snapshot": good + [change(99, 3, "0/0")],
    }
    for what, changes in bad.items():
        with pytest.raises(AssertionError):
            check_log_against_server(changes, committed, snapshot)
            pytest.fail(f"a log with a transaction {what} passed")
