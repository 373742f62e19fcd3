"""``millpond migrate`` moves an embedded log to a real Kafka broker (issue 16).

A broker of this module's own: migrate writes the fixed-name topics ``__source_offsets``
and ``__millpond_migrate``, which the session's shared broker holds for other tests.
Topics are deleted between tests.

- every kind of topic (several partitions, compacted, LogAppendTime, transactional with
  aborted data, headers, the source checkpoints) and a group half-way: a Kafka
  read_committed consumer reads what millpond's read_committed consumer reads, record
  for record (offsets aside), and the group's translated offsets point at the same record;
- SIGKILLed at random moments and run again, the migration ends as an uninterrupted one;
- a dry run prints the plan and changes nothing; a worker holding the log is refused.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from millpond.backends.base import IsolationLevel, LogBackend, TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.backends.kafka import KafkaBackend
from millpond.config import EmbeddedLog, LogConfig, PipelineConfig
from millpond.errors import LogLockedError, MillpondError
from millpond.log.batch import Row
from millpond.migrate import PROGRESS_TOPIC, Migration
from millpond.records import Record, TopicPartition
from millpond.runtime.source_offsets import ensure_source_offsets_topic, read_source_offset, write_source_offsets

from ..servers.common import server_unavailable, start_with_retry
from ..servers.kafka import KafkaServer, fetch_jars, start_kafka, stop_kafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: an hour ago: within every topic's retention, or the broker deletes the copies (as the embedded log would)
T0 = int(time.time() * 1000) - 3_600_000
Content = tuple[bytes | None, bytes | None, int | None, list[tuple[str, bytes | None]]]


@pytest.fixture(scope="module")
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    if shutil.which("java") is None:
        server_unavailable("Apache Kafka", "java is not on the PATH")
    try:
        libs = fetch_jars()
        server = start_with_retry(lambda: start_kafka(libs, tmp_path_factory.mktemp("kafka-migrate")))
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("Apache Kafka", str(exc))
        raise
    try:
        yield server
    finally:
        stop_kafka(server)


@pytest.fixture
def kafka(own_kafka: KafkaServer) -> Iterator[str]:
    """The module's broker, with no topic of an earlier test left."""
    async def wipe() -> None:
        async with KafkaBackend(own_kafka.bootstrap) as backend:
            for name in await backend.list_topics():
                if name not in ("__consumer_offsets", "__transaction_state"):
                    await backend.delete_topic(name)

    asyncio.run(wipe())
    yield own_kafka.bootstrap


def write_log(directory: Path) -> None:
    """Every kind of topic, a group half-way through ``orders``, source checkpoints."""
    rnd = random.Random(7)

    async def go() -> None:
        async with EmbeddedBackend(directory) as backend:
            await backend.create_topic(TopicSpec("orders", 3, {"compression.type": "lz4", "retention.ms": 86_400_000}))
            await backend.create_topic(TopicSpec("latest", 2, {"cleanup.policy": "compact"}))
            await backend.create_topic(TopicSpec("stamped", 1, {"message.timestamp.type": "LogAppendTime"}))
            await backend.create_topic(TopicSpec("txn", 2, {}))
            producer = backend.producer("loader")
            for round_ in range(30):
                await producer.begin()
                for p in range(3):
                    await producer.send_batch("orders", p, [
                        Record(b"order-%d-%d" % (round_, i), b"o%d" % (i % 7), T0 + round_ * 1000 + rnd.randint(0, 999),
                               [("round", str(round_).encode()), ("empty", None)] if i % 2 else [])
                        for i in range(rnd.randint(1, 40))])
                await producer.send_batch("latest", round_ % 2, [Record(b"v%d" % round_, b"k%d" % (round_ % 5), T0)])
                await producer.send_batch("stamped", 0, [Record(b"s%d" % round_, None, T0)])
                await producer.commit()
            await producer.close()
            # aborted transactions, as a crash leaves them: the embedded producer appends only at commit
            for p in backend.store.topic("txn").partitions:
                for n in range(20):
                    p.append([Row(b"t", b"txn-%d-%d" % (n, i), T0 + n, []) for i in range(5)],
                             producer_id=500, producer_epoch=0, transactional=True)
                    p.append([Row(None, b"plain-%d" % n, T0 + n, [])])
                    p.append_control(500, 0, commit=n % 3 != 0)
            infos = await backend.describe_topic("orders")
            # half-way, on a record or on a transaction marker (where a group stands after a commit)
            await backend.reset_offsets("reader", {TopicPartition("orders", i.partition): i.log_end_offset // 2 + i.partition
                                                   for i in infos})
            await ensure_source_offsets_topic(backend)
            await write_source_offsets(backend, "tail", {"tail": {"file": "/in/a.log", "position": 1234}})
            await write_source_offsets(backend, "tail#1", {"tail#1": {"file": "/in/b.log", "position": 99}})

    asyncio.run(go())


async def view(backend: LogBackend, topic: str) -> dict[int, list[tuple[int, Content]]]:
    """Per partition, (offset, content) of every committed record."""
    infos = await backend.describe_topic(topic)
    out: dict[int, list[tuple[int, Content]]] = {i.partition: [] for i in infos}
    consumer = backend.consumer([topic], None, IsolationLevel.read_committed)
    try:
        deadline = time.monotonic() + 60
        while any([await consumer.position(TopicPartition(topic, i.partition)) < i.last_stable_offset
                   for i in infos]):
            assert time.monotonic() < deadline, f"{topic}: reading stopped short of the last stable offset"
            for r in await consumer.poll(timeout=0.2):
                assert r.partition is not None and r.offset is not None
                out[r.partition].append((r.offset, (r.key, r.value, r.timestamp, list(r.headers))))
    finally:
        await consumer.close()
    return out


async def snapshot(backend: LogBackend, groups: list[str]) -> dict[str, object]:
    """What a pipeline sees: every topic's committed contents, what each group reads next, checkpoints."""
    out: dict[str, object] = {}
    for topic in await backend.list_topics():
        if topic in ("__consumer_offsets", "__transaction_state", PROGRESS_TOPIC):
            continue
        out[topic] = {p: [c for _, c in rows] for p, rows in (await view(backend, topic)).items()}
        for group in groups:
            committed = await backend.committed(group)
            for p, rows in (await view(backend, topic)).items():
                at = committed.get(TopicPartition(topic, p))
                if at is not None:
                    out[f"{group}:{topic}-{p}"] = [c for o, c in rows if o >= at]
    for key in ("tail", "tail#1"):
        out[f"checkpoint:{key}"] = await read_source_offset(backend, key)
    return out


def pipeline(directory: Path) -> PipelineConfig:
    return PipelineConfig(log=LogConfig(embedded=EmbeddedLog(dir=str(directory))))


def test_migrate_every_kind_of_topic_and_a_group(tmp_path: Path, kafka: str) -> None:
    write_log(tmp_path / "log")

    async def go() -> None:
        async with EmbeddedBackend(tmp_path / "log", readonly=True) as embedded:
            before = await snapshot(embedded, ["reader"])
            committed = await embedded.committed("reader")
        assert len(committed) == 3 and any(o > 0 for o in committed.values())
        async with KafkaBackend(kafka) as target:
            await Migration(pipeline(tmp_path / "log"), target, chunk_records=50).run()
            after = await snapshot(target, ["reader"])
            assert (await target.topic_settings("stamped"))["message.timestamp.type"] == "LogAppendTime"
            assert (await target.topic_settings("latest"))["cleanup.policy"] == "compact"
            assert (await target.topic_settings("orders"))["retention.ms"] == "86400000"
            assert await target.partitions_for("orders") == 3
            again = tmp_path / "again.txt"
            with again.open("w") as stream:  # run again once done: nothing to do, nothing doubled
                await Migration(pipeline(tmp_path / "log"), target, stream=stream).run()
            assert "complete already" in again.read_text()
            assert await snapshot(target, ["reader"]) == after
        assert after == before
        assert len(before["txn"][0]) == 20 + 13 * 5  # type: ignore[index]  # aborted data left behind
        assert before["checkpoint:tail"] == {"file": "/in/a.log", "position": 1234}

    asyncio.run(go())


def test_dry_run_changes_nothing_and_a_held_log_is_refused(tmp_path: Path, kafka: str) -> None:
    write_log(tmp_path / "log")

    async def go() -> None:
        out = tmp_path / "plan.txt"
        async with KafkaBackend(kafka) as target:
            with out.open("w") as stream:
                await Migration(pipeline(tmp_path / "log"), target, stream=stream).dry_run()
            assert "orders" not in await target.list_topics()
            text = out.read_text()
            assert "topic orders: 3 partition(s)" in text and "group reader: 3 partition offset(s)" in text
            assert "txn-0: 85 committed records" in text and "source checkpoint tail#1" in text
            async with EmbeddedBackend(tmp_path / "log"):  # a worker holds the log
                with pytest.raises(LogLockedError, match="stop it, then migrate"):
                    await Migration(pipeline(tmp_path / "log"), target).run()
            assert PROGRESS_TOPIC not in await target.list_topics()
            await target.create_topic(TopicSpec("orders", 3))  # a first run copies into new topics only
            with pytest.raises(MillpondError, match=r"orders exist at .* already"):
                await Migration(pipeline(tmp_path / "log"), target).run()

    asyncio.run(go())


def test_sigkill_at_random_moments_then_resume(tmp_path: Path, kafka: str) -> None:
    """Killed a few times mid-copy, then run to the end: as if it had never been interrupted."""
    write_log(tmp_path / "log")
    (tmp_path / "p.yaml").write_text(f"name: m\nlog:\n  embedded: {{dir: '{tmp_path / 'log'}'}}\n")
    command = [sys.executable, "-m", "millpond.cli", "migrate", str(tmp_path / "p.yaml"), "--to-bootstrap", kafka,
               "--transaction-records", "7"]
    rnd = random.Random(int(os.environ.get("MILLPOND_TEST_SEED", "16")))
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(rnd.uniform(2.0, 6.0))  # the interpreter and aiokafka take ~1.5 s to start
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kills >= 2, "the migration ended before it could be killed: give it more to copy"

    async def go() -> None:
        async with EmbeddedBackend(tmp_path / "log", readonly=True) as embedded:
            before = await snapshot(embedded, ["reader"])
        async with KafkaBackend(kafka) as target:
            after = await snapshot(target, ["reader"])
        assert after == before

    asyncio.run(go())


QUICKSTART = """
name: quick
log:
{log}
topics:
  - {{name: lines, partitions: 3}}
connectors:
  - name: tail
    kind: source
    type: file
    topic: lines
    config: {{path: '{inputs}/*.log', key: path}}
    converter: {{key: string, value: string}}
    guarantee: exactly_once
  - name: out
    kind: sink
    type: file
    topics: [lines]
    config: {{dir: '{out}', suffix: .txt, format: text}}
    converter: {{key: string, value: string}}
    guarantee: exactly_once
"""


def test_quickstart_moves_to_kafka_and_continues(tmp_path: Path, kafka: str) -> None:
    """file -> log -> file on the embedded log; stopped; more lines upstream; migrated; the same
    pipeline on Kafka: the sink's output holds every line exactly once."""
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(QUICKSTART.format(log=f"  embedded: {{dir: '{tmp_path / 'log'}'}}", inputs=inputs, out=out))
    on_kafka = tmp_path / "kafka.yaml"
    on_kafka.write_text(QUICKSTART.format(log=f"  kafka: {{bootstrap_servers: '{kafka}'}}", inputs=inputs, out=out))
    lines = {name: [f"{name}-{i}" for i in range(3000)] for name in ("a", "b", "c")}

    def feed(start: int, stop: int) -> None:
        for name, all_lines in lines.items():
            with (inputs / f"{name}.log").open("a") as f:
                f.writelines(line + "\n" for line in all_lines[start:stop])

    def run(pipeline: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "millpond.cli", "run", str(pipeline), "--until-idle",
                               "--api", "off"], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]

    feed(0, 1000)
    run(embedded)
    feed(1000, 2000)  # the worker is stopped: these wait upstream
    migrated = subprocess.run([sys.executable, "-m", "millpond.cli", "migrate", str(embedded), "--to", str(on_kafka)],
                              capture_output=True, text=True, timeout=240)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "group out:" in migrated.stderr
    run(on_kafka)
    feed(2000, 3000)
    run(on_kafka)
    written = [line for f in sorted(out.glob("lines-*.txt*")) for line in f.read_text().splitlines()]
    expected = sorted(line for all_lines in lines.values() for line in all_lines)
    assert len(written) == len(expected), f"{len(written)} lines written, {len(expected)} fed"
    assert sorted(written) == expected


CDC = """
name: cdc-{name}
log:
{log}
topics:
  - {{name: {name}.items, partitions: 2}}
connectors:
  - name: {name}-cdc
    kind: source
    type: postgres-cdc
    topic: {name}.items
    config:
      dsn: '{dsn}'
      tables: ["{name}_src.items"]
      topics: {{items: {name}.items}}
      heartbeat_interval_s: 1
      idle_sleep_s: 0.05
    converter: {{key: json, value: json}}
    guarantee: exactly_once
  - name: {name}-replica
    kind: sink
    type: postgres
    topics: [{name}.items]
    config:
      dsn: '{dsn}'
      tables: {{{name}.items: "{name}_dst.items"}}
      auto_create: true
      offsets_table: {name}_dst.offsets
    converter: {{key: json, value: json}}
    guarantee: exactly_once
"""


@pytest.mark.postgres
def test_postgres_cdc_moves_to_kafka_and_continues(tmp_path: Path, kafka: str, pg_dsn: str) -> None:
    """postgres-cdc -> log -> postgres sink on the embedded log; stopped; more changes upstream;
    migrated; the same pipeline on Kafka: the replica equals the source, and a trigger on it
    shows no change applied twice and nothing applied again from before the migration."""
    import asyncpg

    name = f"mig{os.getpid()}"
    src, dst = f"{name}_src", f"{name}_dst"
    embedded, on_kafka = tmp_path / "embedded.yaml", tmp_path / "kafka.yaml"
    embedded.write_text(CDC.format(name=name, dsn=pg_dsn, log=f"  embedded: {{dir: '{tmp_path / 'log'}'}}"))
    on_kafka.write_text(CDC.format(name=name, dsn=pg_dsn, log=f"  kafka: {{bootstrap_servers: '{kafka}'}}"))

    async def sql(*statements: str) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    changes: dict[int, int] = {}

    async def change(first: int, last: int, updates: range) -> None:
        await sql(f"INSERT INTO {src}.items SELECT g, 'v' || g FROM generate_series({first}, {last}) g",
                  *(f"UPDATE {src}.items SET v = v || '+' WHERE id % 7 = {u}" for u in updates))
        for i in range(first, last + 1):
            changes[i] = 1
        for u in updates:
            for i in changes:
                if i % 7 == u:
                    changes[i] += 1

    def run(pipeline: Path) -> None:
        done = subprocess.run([sys.executable, "-m", "millpond.cli", "run", str(pipeline), "--until-idle",
                               "--api", "off"], capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]

    asyncio.run(sql(f"CREATE SCHEMA {src}", f"CREATE SCHEMA {dst}",
                    f"CREATE TABLE {src}.items (id bigint PRIMARY KEY, v text)",
                    f"CREATE TABLE {dst}.applied (id bigint PRIMARY KEY, n int NOT NULL)"))
    asyncio.run(change(1, 400, range(0, 2)))
    run(embedded)
    asyncio.run(sql(  # the replica exists now (auto_create): count every row it applies from here on
        f"CREATE FUNCTION {dst}.count_applied() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {dst}.applied VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET n = {dst}.applied.n + 1; "
        "RETURN NEW; END $$",
        f"CREATE TRIGGER counted AFTER INSERT OR UPDATE ON {dst}.items FOR EACH ROW EXECUTE FUNCTION "
        f"{dst}.count_applied()"))
    before = dict(changes)
    asyncio.run(change(401, 800, range(2, 4)))  # the worker is stopped: these wait in the slot
    migrated = subprocess.run([sys.executable, "-m", "millpond.cli", "migrate", str(embedded), "--to", str(on_kafka)],
                              capture_output=True, text=True, timeout=240)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    run(on_kafka)
    asyncio.run(change(801, 1000, range(4, 5)))
    run(on_kafka)

    async def check() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            source = {r["id"]: r["v"] for r in await conn.fetch(f"SELECT id, v FROM {src}.items")}
            replica = {r["id"]: r["v"] for r in await conn.fetch(f"SELECT id, v FROM {dst}.items")}
            applied = {r["id"]: r["n"] for r in await conn.fetch(f"SELECT id, n FROM {dst}.applied")}
        finally:
            await conn.close()
        assert replica == source and len(source) == 1000
        # Rows changed after the first run are applied again, the others never: a replay of what the
        # first run applied (offsets translated too low) would touch rows with no new change. The sink
        # may fold several changes of a row in one flush, so a row is applied at most once per change.
        wanted = {i: n - before.get(i, 0) for i, n in changes.items() if n - before.get(i, 0) > 0}
        assert set(applied) == set(wanted)
        assert all(applied[i] <= wanted[i] for i in wanted), {i: (applied[i], wanted[i]) for i in wanted
                                                               if applied[i] > wanted[i]}

    asyncio.run(check())
