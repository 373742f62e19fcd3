"""Benchmark: a Kafka topic drained into Postgres by 1, 2 and 3 workers; and the failover pause.

    python tests/benchmarks/bench_scaleout.py [--quick] [--records N] [--failovers K]

Uses ``MILLPOND_TEST_KAFKA`` (host:port) and ``MILLPOND_TEST_PG_DSN`` if set, else
starts a throw-away broker and server like the test fixtures.

Scale-out: for k = 1, 2, 3, that many ``millpond run`` processes of one
pipeline file (the ``postgres`` sink alone; a fresh connector name, topic and
table each time) are started and left to settle in their group (every
partition given out, per the workers' "owns" lines). Then N JSON rows go to
the 6-partition topic in one transaction, so they become visible at once; the
figure is N divided by the time from that commit until every row is in the
table. Start-up and joining are reported apart. ``workers_3 / workers_1`` is the
scale-out ratio; the target for an I/O-bound sink is 2x.

Failover: two workers drain a topic that a producer keeps appending to. The
worker owning partitions (from its log's "owns" line) is SIGKILLed; the pause
is the time until each of its partitions moves on again in the sink's offsets
table, on the other worker (so about the session timeout, 6 s here, plus the
rebalance). A new worker is started after each kill. Median over K kills
(5; ``--quick`` takes 3 to stay near a minute: each kill costs a session timeout).

Embedded: ``tasks: 1`` and ``tasks: 3`` of the same ``postgres`` sink in one
worker on the embedded log (the topic filled beforehand), timed from the
moment every task runs until the group's committed offsets cover every row:
what splitting the partitions among in-process tasks gives an I/O-bound sink.

Every table counts the writes of each row (a trigger), so ``duplicates`` (rows
applied more than once) and ``lost`` (rows never applied) are counted, not
assumed. The trigger costs the database some time in every phase alike.
Last line: JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from millpond.backends.base import LogBackend, TopicSpec  # noqa: E402
from millpond.backends.kafka import KafkaBackend  # noqa: E402
from millpond.records import Record  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

PARTITIONS = 6
SESSION_TIMEOUT_MS = 6000
PAYLOAD = "x" * 100
MILLPOND = str(Path(sys.executable).parent / "millpond")

PIPELINE = """
name: {name}
log:
  kafka:
    bootstrap_servers: '{bootstrap}'
    config: {{session_timeout_ms: {session}, heartbeat_interval_ms: 1000}}
topics:
  - {{name: {topic}, partitions: {partitions}}}
connectors:
  - name: {name}
    kind: sink
    type: postgres
    topics: [{topic}]
    config: {{dsn: '{dsn}', table: '{table}'}}
    converter: {{key: json, value: json}}
    guarantee: exactly_once
"""


class Workers:
    def __init__(self, pipeline: Path, logs: Path) -> None:
        self.pipeline, self.logs = pipeline, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> str:
        wid = f"w{len(self.procs) + 1:02d}"
        out = (self.logs / f"{self.pipeline.stem}-{wid}.log").open("wb")
        self.procs[wid] = subprocess.Popen([MILLPOND, "run", str(self.pipeline), "--worker-id", wid, "--api", "off"],
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return wid

    def log(self, wid: str) -> str:
        return (self.logs / f"{self.pipeline.stem}-{wid}.log").read_text(errors="replace")

    def owned(self, wid: str) -> set[int]:
        """The partitions the worker's sink said it owns last."""
        found = re.findall(r"sink '[^']+' owns (.*)", self.log(wid))
        if not found or found[-1].startswith("no partition"):
            return set()
        return {int(p.split(";")[0].rsplit("-", 1)[1]) for p in found[-1].split(";")[0].split(", ")}

    def check(self) -> None:
        """Raise when a worker exited by itself (a bad pipeline file, a crash), with its last lines."""
        for wid, p in self.procs.items():
            if p.poll() is not None and p.returncode != -signal.SIGKILL:
                tail = "\n".join(self.log(wid).splitlines()[-5:])
                raise RuntimeError(f"worker {wid} exited with {p.returncode}:\n{tail}")

    def kill(self, wid: str) -> None:
        self.procs[wid].send_signal(signal.SIGKILL)
        self.procs[wid].wait()

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


async def fill(backend: LogBackend, topic: str, first: int, n: int, transactional_id: str | None = None,
               before_commit: Any = None) -> None:
    """Rows ``first``..``first + n - 1`` spread over the partitions; with a transactional id in one
    transaction (``before_commit()`` is called just before it commits: readers see the rows from then on)."""
    producer = backend.producer(transactional_id)
    try:
        if transactional_id is not None:
            await producer.begin()
        for p in range(PARTITIONS):
            rows = [Record(json.dumps({"id": i, "v": PAYLOAD}).encode(), None, int(time.time() * 1000))
                    for i in range(first + p, first + n, PARTITIONS)]
            for at in range(0, len(rows), 5000):
                await producer.send_batch(topic, p, rows[at:at + 5000])
        if transactional_id is not None:
            if before_commit is not None:
                before_commit()
            await producer.commit()
        else:
            await producer.flush()
    finally:
        await producer.close()


async def make_table(conn: asyncpg.Connection, table: str) -> None:
    await conn.execute(f"""
        CREATE TABLE {table} (id bigint PRIMARY KEY, v text);
        CREATE TABLE {table}_writes (id bigint);
        CREATE FUNCTION {table}_count() RETURNS trigger LANGUAGE plpgsql AS
          $$ BEGIN INSERT INTO {table}_writes VALUES (NEW.id); RETURN NEW; END $$;
        CREATE TRIGGER counted AFTER INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_count();""")


async def counts(conn: asyncpg.Connection, table: str, n: int) -> tuple[int, int]:
    """(duplicates, lost) among rows 0..n-1."""
    writes = await conn.fetchval(f"SELECT count(*) FROM {table}_writes")
    distinct = await conn.fetchval(f"SELECT count(DISTINCT id) FROM {table}_writes WHERE id < $1", n)
    return int(writes) - int(distinct), n - int(distinct)


def pipeline_file(tmp: Path, name: str, bootstrap: str, topic: str, dsn: str, table: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(PIPELINE.format(name=name, bootstrap=bootstrap, topic=topic, dsn=dsn, table=table,
                                    session=SESSION_TIMEOUT_MS, partitions=PARTITIONS))
    return path


async def drain(k: int, n: int, bootstrap: str, dsn: str, tmp: Path) -> dict[str, float]:
    """k workers, joined and idle, drain N rows that become visible at once (one transaction's commit)
    into a fresh table: seconds from that commit until the last row is in the table."""
    name = f"so{k}x{uuid.uuid4().hex[:6]}"
    topic, table = f"scaleout-{name}", f"public.{name}"
    backend = KafkaBackend(bootstrap)
    await backend.open()
    conn = await asyncpg.connect(dsn)
    workers = Workers(pipeline_file(tmp, name, bootstrap, topic, dsn, table), tmp)
    try:
        await backend.create_topic(TopicSpec(topic, PARTITIONS))
        await make_table(conn, table)
        launched = time.perf_counter()
        for _ in range(k):
            workers.start()
        # every worker in the group and the partitions all given out: the group has settled
        while not (all("owns" in workers.log(w) for w in workers.procs)
                   and sum(len(workers.owned(w)) for w in workers.procs) == PARTITIONS):
            workers.check()
            if time.perf_counter() - launched > 120:
                raise TimeoutError(f"{k} worker(s) did not settle in their group within 120 s")
            await asyncio.sleep(0.1)
        joined = time.perf_counter() - launched
        await asyncio.sleep(2.0)
        committed: list[float] = []
        busy = harness.MachineBusy()
        await fill(backend, topic, 0, n, f"fill-{name}", lambda: committed.append(time.perf_counter()))
        while True:
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
            now = time.perf_counter()
            if rows >= n:
                break
            workers.check()
            if now - committed[0] > 600:
                raise TimeoutError(f"{k} worker(s): {rows} of {n} rows after 600 s")
            await asyncio.sleep(0.02)
        cpu_busy = busy.fraction()
        duplicates, lost = await counts(conn, table, n)
        return {"start_s": joined, "drain_s": now - committed[0], "duplicates": duplicates, "lost": lost,
                "cpu_busy": cpu_busy}
    finally:
        workers.stop()
        await conn.close()
        await backend.close()


async def failovers(kills: int, bootstrap: str, dsn: str, tmp: Path) -> dict[str, Any]:
    """Two workers on a topic a producer keeps feeding; SIGKILL the one owning partitions ``kills`` times."""
    name = f"fo{uuid.uuid4().hex[:6]}"
    topic, table = f"scaleout-fo-{name}", f"public.{name}"
    backend = KafkaBackend(bootstrap)
    await backend.open()
    conn = await asyncpg.connect(dsn)
    produced = 0
    stop = asyncio.Event()

    async def feed() -> None:
        nonlocal produced
        while not stop.is_set():
            await fill(backend, topic, produced, 300)
            produced += 300
            await asyncio.sleep(0.1)

    pauses: list[float] = []
    workers: Workers | None = None
    try:
        await backend.create_topic(TopicSpec(topic, PARTITIONS))
        await make_table(conn, table)
        workers = Workers(pipeline_file(tmp, name, bootstrap, topic, dsn, table), tmp)
        feeder = asyncio.create_task(feed())
        live = [workers.start(), workers.start()]
        for _ in range(kills):
            deadline = time.monotonic() + 60
            while not (all(workers.owned(w) for w in live)) and time.monotonic() < deadline:
                workers.check()
                await asyncio.sleep(0.2)  # both members hold partitions: the group is settled
            await asyncio.sleep(1.0)
            victim = live[0]
            lost_parts = workers.owned(victim)
            before = await _offsets(conn, name)
            killed = time.perf_counter()
            workers.kill(victim)
            live.remove(victim)
            while True:
                now = await _offsets(conn, name)
                if all(now.get(p, 0) > before.get(p, 0) for p in lost_parts):
                    break
                workers.check()
                if time.perf_counter() - killed > 120:
                    raise TimeoutError(f"partitions {sorted(lost_parts)} did not move on within 120 s")
                await asyncio.sleep(0.05)
            pauses.append(time.perf_counter() - killed)
            print(f"  kill #{len(pauses)}: partitions {sorted(lost_parts)} flowed again after {pauses[-1]:.2f} s",
                  flush=True)
            live.append(workers.start())
        stop.set()
        await feeder
        deadline = time.monotonic() + 120
        while await conn.fetchval(f"SELECT count(*) FROM {table}") < produced and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        duplicates, lost = await counts(conn, table, produced)
        return {"pauses": pauses, "duplicates": duplicates, "lost": lost, "records": produced}
    finally:
        stop.set()
        if workers is not None:
            workers.stop()
        await conn.close()
        await backend.close()


async def embedded(tasks: int, n: int, dsn: str, tmp: Path) -> dict[str, float]:
    """``tasks`` sink tasks of one worker on the embedded log drain N rows into a fresh table."""
    from millpond.backends import open_backend
    from millpond.config import PipelineConfig

    name = f"emb{tasks}x{uuid.uuid4().hex[:6]}"
    table = f"public.{name}"
    config = PipelineConfig.model_validate({
        "name": name,
        "log": {"embedded": {"dir": str(tmp / name)}},
        "topics": [{"name": "rows", "partitions": PARTITIONS}],
        "connectors": [{"name": name, "kind": "sink", "type": "postgres", "topics": ["rows"], "tasks": tasks,
                        "config": {"dsn": dsn, "table": table},
                        "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once"}],
    })
    backend = open_backend(config.log)
    await backend.open()
    try:
        await backend.create_topic(TopicSpec("rows", PARTITIONS))
        await fill(backend, "rows", 0, n, "fill")
    finally:
        await backend.close()
    conn = await asyncpg.connect(dsn)
    try:
        await make_table(conn, table)

        async def done(worker: Any, log: Any) -> bool:
            return sum((await log.committed(name)).values()) >= n

        times = await harness.run_pipeline(config, done, poll_s=0.02)
        duplicates, lost = await counts(conn, table, n)
        return {"drain_s": times.done_s - times.startup_s, "duplicates": duplicates, "lost": lost}
    finally:
        await conn.close()


async def _offsets(conn: asyncpg.Connection, connector: str) -> dict[int, int]:
    rows = await conn.fetch("SELECT partition, next_offset FROM millpond_sink_offsets WHERE connector = $1", connector)
    return {r["partition"]: r["next_offset"] for r in rows}


def main() -> None:
    parser = harness.parser(__doc__ or "", quick="fewer records (about a minute in all)")
    parser.add_argument("--records", type=int)
    parser.add_argument("--failovers", type=int, help="kills for the failover median (default 5; 3 with --quick)")
    args = parser.parse_args()
    n = args.records or (60_000 if args.quick else 300_000)
    kills = args.failovers or (3 if args.quick else 5)
    started: list[Any] = []
    bootstrap = os.environ.get("MILLPOND_TEST_KAFKA")
    dsn = os.environ.get("MILLPOND_TEST_PG_DSN")
    try:
        if not bootstrap:
            from tests.servers.kafka import fetch_jars, start_kafka, stop_kafka

            kafka = start_kafka(fetch_jars(), Path(tempfile.mkdtemp(prefix="millpond-bench-kafka-")))
            started.append(lambda: stop_kafka(kafka))
            bootstrap = kafka.bootstrap
        if not dsn:
            from tests.servers.postgres import start_postgres

            pg = start_postgres()
            started.append(pg.stop)
            dsn = pg.dsn
        figures = asyncio.run(bench(n, kills, bootstrap, dsn))
    finally:
        for stop in reversed(started):
            stop()
    harness.emit(figures)


async def bench(n: int, kills: int, bootstrap: str, dsn: str) -> dict[str, Any]:
    print(f"{n:,} rows on {PARTITIONS} partitions, visible at once (one transaction); postgres sink, "
          f"one per worker process")
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="millpond-bench-scaleout-") as tmp:
        for k in (1, 2, 3):
            r = results[k] = await drain(k, n, bootstrap, dsn, Path(tmp))
            print(harness.rate_line(f"{k} worker(s)", n, r["drain_s"],
                                    note=f"(settled in the group {r['start_s']:.2f} s after launch; machine CPUs "
                                         f"{r['cpu_busy']:.0%} busy; duplicates {r['duplicates']:.0f}, "
                                         f"lost {r['lost']:.0f})"))
        fo = await failovers(kills, bootstrap, dsn, Path(tmp))
        emb = {t: await embedded(t, n, dsn, Path(tmp)) for t in (1, 3)}
        for t, r in emb.items():
            print(harness.rate_line(f"embedded log, tasks: {t}", n, r["drain_s"],
                                    note=f"(duplicates {r['duplicates']:.0f}, lost {r['lost']:.0f})"))
    rate = {k: n / r["drain_s"] for k, r in results.items()}
    print(harness.ratio_line("3 workers / 1 worker", rate[3], rate[1], target=2.0))
    # Broker, Postgres and every worker share this machine's cores: the most more workers can give
    # is what the cores left idle by one worker allow.
    ceiling = min(3.0, 1.0 / results[1]["cpu_busy"]) if results[1]["cpu_busy"] > 0 else 3.0
    print(f"machine CPUs busy: {results[1]['cpu_busy']:.0%} with 1 worker, {results[3]['cpu_busy']:.0%} with 3; "
          f"ceiling for 3 workers on these cores about {ceiling:.2f}x")
    pause = statistics.median(fo["pauses"])
    print(f"failover (SIGKILL until the partitions flow on another worker): median {pause:.2f} s of "
          f"{len(fo['pauses'])} (session timeout {SESSION_TIMEOUT_MS / 1000:.0f} s; target < "
          f"{2 * SESSION_TIMEOUT_MS / 1000:.0f} s); {fo['records']:,} rows, duplicates {fo['duplicates']}, "
          f"lost {fo['lost']}")
    emb_rate = {t: n / r["drain_s"] for t, r in emb.items()}
    print(harness.ratio_line("embedded tasks: 3 / tasks: 1", emb_rate[3], emb_rate[1]))
    duplicates = sum(int(r["duplicates"]) for r in [*results.values(), *emb.values()]) + fo["duplicates"]
    lost = sum(int(r["lost"]) for r in [*results.values(), *emb.values()]) + fo["lost"]
    return {
        "records": n,
        "workers_1_records_per_s": round(rate[1]),
        "workers_2_records_per_s": round(rate[2]),
        "workers_3_records_per_s": round(rate[3]),
        "scaleout_3_over_1": round(rate[3] / rate[1], 3),
        "cpu_busy_fraction_1": round(results[1]["cpu_busy"], 3),
        "cpu_busy_fraction_3": round(results[3]["cpu_busy"], 3),
        "scaleout_cpu_ceiling": round(ceiling, 3),
        "failover_seconds_median": round(pause, 3),
        "failover_seconds": [round(p, 3) for p in fo["pauses"]],
        "session_timeout_seconds": SESSION_TIMEOUT_MS / 1000,
        "embedded_tasks_1_records_per_s": round(emb_rate[1]),
        "embedded_tasks_3_records_per_s": round(emb_rate[3]),
        "duplicates": duplicates,
        "lost": lost,
    }


if __name__ == "__main__":
    main()
