"""Benchmark: a Kafka topic drained into Postgres by 1, 2 and 3 workers; and the failover pause.

    python tests/benchmarks/bench_scaleout.py [--quick] [--records N] [--cpu-records N]
        [--flush-records N] [--failovers K] [--no-embedded]

Uses ``MILLPOND_TEST_KAFKA`` (host:port) and ``MILLPOND_TEST_PG_DSN`` if set, else
starts a throw-away broker and a *durable* Postgres (``fsync``,
``synchronous_commit`` and ``full_page_writes`` on, as production runs it; the
test fixtures turn them off). The first lines say what the server runs with and
what one 8 kB write + fdatasync costs on this disk.

Scale-out: for k = 1, 2, 3, that many ``millpond run`` processes of one
pipeline file (the ``postgres`` sink alone; a fresh connector name, topic and
table each time) are started and left to settle in their group (every
partition given out, per the workers' "owns" lines). Then N JSON rows go to
the 6-partition topic in one transaction, so they become visible at once; the
figure is N divided by the time from that commit until the sink's offsets
(committed in the same transaction as its rows) cover every row. Start-up and
joining are reported apart. ``workers_3 / workers_1`` is the scale-out ratio.
It runs twice:

- the I/O-bound phase, the one the issue's 2x target names, and the one the
  keys ``workers_1_records_per_s``, ``workers_3_records_per_s`` and
  ``scaleout_3_over_1`` report: the sink flushes every 100 records
  (``flush: {records: 100}``, ``--flush-records``), as a user who wants rows
  seen within milliseconds sets it. Each flush is one Postgres transaction
  with its offsets (a WAL fsync) and then one offset commit to Kafka: a worker
  spends most of its time waiting on those two round trips, and more workers
  overlap the waits. It runs ``--rounds`` times (3), the order of 1, 2 and 3
  workers rotated each round, and reports per k the median (the machine is
  shared: a neighbour's burst should not always land on the same k), with
  each round's ratio beside it;
- the CPU-bound phase (keys prefixed ``cpu_bound_``; one round): the sink's default
  flushes (polls of 20,000 rows, a flush per 500,000 or 5 s), so the durable
  commits are rare and the cores, shared by broker, Postgres and workers, are
  the limit: there more workers gain little, and the line says how little the
  cores allow.

Each line gives the share of the cores this benchmark's own processes (broker,
Postgres, workers) kept busy, and the machine-wide share (the machine is shared
with other work); 1 / the first share with 1 worker bounds what 3 workers can
gain. An untimed warm-up drain runs first, so the broker's JIT warm-up is not
charged to the first figure.

Failover (with the I/O-bound flushes): two workers drain a topic that a producer
keeps appending to. The worker owning partitions (from its log's "owns" line) is
SIGKILLed once the group has settled; the pause is the time until each of its
partitions moves on again in the sink's offsets table, on the other worker (so
about the session timeout, 6 s here, plus the rebalance). A new worker is started
after each kill. Median over K kills (5; ``--quick`` takes 3: each kill costs a
session timeout).

Embedded (with the same ``flush:``): ``tasks: 1`` and ``tasks: 3`` of the same
``postgres`` sink in one worker on the embedded log (the topic filled
beforehand), timed from the moment every task runs until the group's committed
offsets cover every row: what splitting the partitions among in-process tasks
gives a sink. The embedded log hands a poll whole reads of a partition (up to
1 MB), so its flushes are larger than ``records`` and this phase is less
I/O-bound than the Kafka one.

Every table counts the writes of each row (a trigger), so ``duplicates`` (rows
applied more than once) and ``lost`` (rows never applied) are counted over every
phase, not assumed. The trigger costs the database some time in every phase alike.
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
#: the I/O-bound phase's flush: {records: N}: a latency-conscious setting (a row waits for at most N)
IO_FLUSH_RECORDS = 100
#: rows of the untimed warm-up drain before the phases
WARM_UP_RECORDS = 10_000
#: the broker's and Postgres' PIDs when this benchmark started them: their CPU counts as the benchmark's own
SERVER_PIDS: list[int] = []
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
{flush}"""


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


def pipeline_file(tmp: Path, name: str, bootstrap: str, topic: str, dsn: str, table: str,
                  flush_records: int | None) -> Path:
    """The pipeline file; ``flush_records`` sets the sink's ``flush: {records: N}`` (None: the defaults)."""
    path = tmp / f"{name}.yaml"
    flush = f"    flush: {{records: {flush_records}}}\n" if flush_records else ""
    path.write_text(PIPELINE.format(name=name, bootstrap=bootstrap, topic=topic, dsn=dsn, table=table,
                                    session=SESSION_TIMEOUT_MS, partitions=PARTITIONS, flush=flush))
    return path


async def drain(k: int, n: int, bootstrap: str, dsn: str, tmp: Path, flush_records: int | None) -> dict[str, float]:
    """k workers, joined and idle, drain N rows that become visible at once (one transaction's commit)
    into a fresh table: seconds from that commit until the last row is in the table."""
    name = f"so{k}x{uuid.uuid4().hex[:6]}"
    topic, table = f"scaleout-{name}", f"public.{name}"
    backend = KafkaBackend(bootstrap)
    await backend.open()
    conn = await asyncpg.connect(dsn)
    workers = Workers(pipeline_file(tmp, name, bootstrap, topic, dsn, table, flush_records), tmp)
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
        own = harness.TreeCpu(lambda: [*SERVER_PIDS, *(p.pid for p in workers.procs.values())])
        await fill(backend, topic, 0, n, f"fill-{name}", lambda: committed.append(time.perf_counter()))
        # the sink's offsets row of a partition commits with its rows, so offsets covering every row
        # mean every row is in; six rows to read, where count(*) would scan the growing table 50 times
        # a second on the cores being measured (the table is counted once, afterwards)
        expected = {p: len(range(p, n, PARTITIONS)) for p in range(PARTITIONS)}
        while True:
            offsets = await _offsets(conn, name)
            now = time.perf_counter()
            if all(offsets.get(p, 0) >= rows for p, rows in expected.items()):
                break
            workers.check()
            if now - committed[0] > 600:
                raise TimeoutError(f"{k} worker(s): offsets {offsets} of {expected} after 600 s")
            await asyncio.sleep(0.02)
        cpu_busy = busy.fraction()
        own_busy = own.seconds() / ((now - committed[0]) * (os.cpu_count() or 1))
        duplicates, lost = await counts(conn, table, n)
        return {"start_s": joined, "drain_s": now - committed[0], "duplicates": duplicates, "lost": lost,
                "cpu_busy": cpu_busy, "own_busy": own_busy}
    finally:
        workers.stop()
        await conn.close()
        await backend.close()


async def failovers(kills: int, bootstrap: str, dsn: str, tmp: Path, flush_records: int | None) -> dict[str, Any]:
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
        workers = Workers(pipeline_file(tmp, name, bootstrap, topic, dsn, table, flush_records), tmp)
        feeder = asyncio.create_task(feed())
        live = [workers.start(), workers.start()]
        for _ in range(kills):
            deadline = time.monotonic() + 60
            # settled: both members hold partitions and their last "owns" lines split all of them (a
            # line from before the newcomer's rebalance would overlap the other's, and killing then
            # would time a hand-over already under way, not a failover)
            while not settled(workers, live) and time.monotonic() < deadline:
                workers.check()
                await asyncio.sleep(0.2)
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


async def embedded(tasks: int, n: int, dsn: str, tmp: Path, flush_records: int | None) -> dict[str, float]:
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
                        "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once",
                        "flush": {"records": flush_records} if flush_records else None}],
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


def fsync_ms(directory: Path, rounds: int = 200) -> float:
    """Median milliseconds of one 8 kB write + fdatasync (what a WAL commit waits for, wal_sync_method's
    Linux default) in ``directory``: the floor under every durable flush on this disk."""
    path = directory / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(8192)
        times = []
        for i in range(rounds):
            began = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 8192)
            os.fdatasync(fd)
            times.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times) * 1000


def settled(workers: Workers, live: list[str]) -> bool:
    owned = [workers.owned(w) for w in live]
    return all(owned) and sum(len(o) for o in owned) == PARTITIONS and len(set().union(*owned)) == PARTITIONS


async def _offsets(conn: asyncpg.Connection, connector: str) -> dict[int, int]:
    rows = await conn.fetch("SELECT partition, next_offset FROM millpond_sink_offsets WHERE connector = $1", connector)
    return {r["partition"]: r["next_offset"] for r in rows}


def main() -> None:
    parser = harness.parser(__doc__ or "", quick="fewer records (a few minutes in all)", rounds=3)
    parser.add_argument("--records", type=int, help="rows of the I/O-bound phase (default 60,000; 30,000 with --quick)")
    parser.add_argument("--cpu-records", type=int,
                        help="rows of the CPU-bound phase (default 300,000; 60,000 with --quick; 0 leaves it out)")
    parser.add_argument("--flush-records", type=int, default=IO_FLUSH_RECORDS,
                        help=f"the I/O-bound phase's flush: {{records: N}} (default {IO_FLUSH_RECORDS})")
    parser.add_argument("--failovers", type=int, help="kills for the failover median (default 5; 3 with --quick)")
    parser.add_argument("--no-embedded", action="store_true", help="leave out the embedded-log phase")
    args = parser.parse_args()
    n = args.records or (30_000 if args.quick else 60_000)
    cpu_n = args.cpu_records if args.cpu_records is not None else (60_000 if args.quick else 300_000)
    kills = args.failovers if args.failovers is not None else (3 if args.quick else 5)
    started: list[Any] = []
    bootstrap = os.environ.get("MILLPOND_TEST_KAFKA")
    dsn = os.environ.get("MILLPOND_TEST_PG_DSN")
    try:
        if not bootstrap:
            from tests.servers.kafka import fetch_jars, start_kafka, stop_kafka

            kafka = start_kafka(fetch_jars(), Path(tempfile.mkdtemp(prefix="millpond-bench-kafka-")))
            started.append(lambda: stop_kafka(kafka))
            bootstrap = kafka.bootstrap
            if kafka.proc is not None:
                SERVER_PIDS.append(kafka.proc.pid)
        if not dsn:
            from tests.servers.postgres import start_postgres

            pg = start_postgres(durable=True)
            started.append(pg.stop)
            dsn = pg.dsn
            SERVER_PIDS.append(pg.pid() or 0)
            probe_dir = pg.base
        else:
            probe_dir = Path(tempfile.gettempdir())
        figures = asyncio.run(bench(n, cpu_n, args.flush_records, args.rounds, kills, not args.no_embedded,
                                    bootstrap, dsn, probe_dir))
    finally:
        for stop in reversed(started):
            stop()
    harness.emit(figures)


async def scale(n: int, flush_records: int | None, bootstrap: str, dsn: str, tmp: Path,
                rounds: int = 1) -> tuple[dict[int, dict[str, float]], list[dict[str, float]], list[float]]:
    """1, 2 and 3 workers drain N rows each into a fresh table, ``rounds`` times with the order rotated
    (the machine is shared: a neighbour's burst should not always land on the same k); a figure line each.
    Returns per k the median of each figure, every single result, and each round's 3/1 ratio."""
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: [], 3: []}
    ratios: list[float] = []
    for round_no in range(rounds):
        this: dict[int, dict[str, float]] = {}
        for k in harness.rotate([1, 2, 3], round_no):
            r = this[k] = await drain(k, n, bootstrap, dsn, tmp, flush_records)
            runs[k].append(r)
            print(harness.rate_line(f"  {k} worker(s)", n, r["drain_s"],
                                    note=f"(settled in the group {r['start_s']:.2f} s after launch; cores busy: "
                                         f"{r['own_busy']:.0%} with this benchmark's processes, {r['cpu_busy']:.0%} "
                                         f"machine-wide; duplicates {r['duplicates']:.0f}, lost {r['lost']:.0f})"),
                  flush=True)
        ratios.append(this[1]["drain_s"] / this[3]["drain_s"])
        if rounds > 1:
            print(f"  round {round_no + 1} of {rounds}: 3 workers / 1 worker {ratios[-1]:.3f}", flush=True)
    results = {k: harness.median(r) for k, r in runs.items()}
    rate = {k: n / r["drain_s"] for k, r in results.items()}
    label = "3 workers / 1 worker" + (f" (medians of {rounds} rounds)" if rounds > 1 else "")
    # the 2x target names an I/O-bound sink: the CPU-bound phase (default flushes) is shown beside it
    target = 2.0 if flush_records is not None else None
    print(f"  {harness.ratio_line(label, rate[3], rate[1], target=target)}; this benchmark's "
          f"processes kept {results[1]['own_busy']:.0%} of the cores busy with 1 worker, "
          f"{results[3]['own_busy']:.0%} with 3 (CPU ceiling for 3 workers about {ceiling(results):.2f}x)", flush=True)
    return results, [r for rs in runs.values() for r in rs], ratios


def ceiling(results: dict[int, dict[str, float]]) -> float:
    """Broker, Postgres and every worker share this machine's cores: the most 3 workers can give is
    what the cores one worker's run left idle allow (its own processes' share, not the neighbours')."""
    busy = results[1]["own_busy"]
    return min(3.0, 1.0 / busy) if busy > 0 else 3.0


def figures_of(prefix: str, n: int, results: dict[int, dict[str, float]], ratios: list[float]) -> dict[str, Any]:
    rate = {k: n / r["drain_s"] for k, r in results.items()}
    return {
        f"{prefix}records": n,
        **{f"{prefix}workers_{k}_records_per_s": round(rate[k]) for k in (1, 2, 3)},
        f"{prefix}scaleout_3_over_1": round(rate[3] / rate[1], 3),
        f"{prefix}scaleout_3_over_1_per_round": [round(r, 3) for r in ratios],
        #: the share of all cores this benchmark's own processes (broker, Postgres, workers) kept busy
        f"{prefix}own_cpu_busy_fraction_1": round(results[1]["own_busy"], 3),
        f"{prefix}own_cpu_busy_fraction_3": round(results[3]["own_busy"], 3),
        #: ... and the whole machine's, neighbours included (this machine is shared)
        f"{prefix}cpu_busy_fraction_1": round(results[1]["cpu_busy"], 3),
        f"{prefix}cpu_busy_fraction_3": round(results[3]["cpu_busy"], 3),
        f"{prefix}scaleout_cpu_ceiling": round(ceiling(results), 3),
    }


async def bench(n: int, cpu_n: int, flush_records: int, rounds: int, kills: int, with_embedded: bool, bootstrap: str,
                dsn: str, probe_dir: Path) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        durability = {k: await conn.fetchval(f"SHOW {k}") for k in ("fsync", "synchronous_commit", "full_page_writes")}
    finally:
        await conn.close()
    fsync = fsync_ms(probe_dir)
    durable = durability["fsync"] == "on" and durability["synchronous_commit"] == "on"
    print(f"Postgres: {', '.join(f'{k}={v}' for k, v in durability.items())}; this disk: 8 kB write + fdatasync "
          f"{fsync:.2f} ms (median of 200)" + ("" if durable else " -- NOT durable: the I/O-bound phase is not I/O-bound"))
    figures: dict[str, Any] = {"postgres_durable": durable, "fdatasync_ms_median": round(fsync, 3)}
    with tempfile.TemporaryDirectory(prefix="millpond-bench-scaleout-") as tmp:
        # a broker just started spends its first seconds compiling (JIT): warm it up untimed, or the
        # first phase measured (1 worker) would pay for it and flatter the ratio
        warm = await drain(1, WARM_UP_RECORDS, bootstrap, dsn, Path(tmp), flush_records)
        print(f"warm-up (not a figure): 1 worker, {WARM_UP_RECORDS:,} rows in {warm['drain_s']:.2f} s", flush=True)
        print(f"I/O-bound phase (the target's; {rounds} round(s), medians): {n:,} rows on {PARTITIONS} partitions, visible at once (one "
              f"transaction); postgres sink with flush: {{records: {flush_records}}} (each flush one transaction "
              f"with its offsets: one WAL fsync), one sink per worker process", flush=True)
        io, io_all, io_ratios = await scale(n, flush_records, bootstrap, dsn, Path(tmp), rounds)
        cpu_all: list[dict[str, float]] = []
        figures |= {"io_bound_flush_records": flush_records, "rounds": rounds, **figures_of("", n, io, io_ratios)}
        if cpu_n:
            print(f"CPU-bound phase (one round): {cpu_n:,} rows, the sink's default flushes (up to 500,000 records or 5 s: "
                  f"a WAL fsync per poll of 20,000 rows at most costs little; the cores are the limit)", flush=True)
            cpu, cpu_all, cpu_ratios = await scale(cpu_n, None, bootstrap, dsn, Path(tmp))
            figures |= figures_of("cpu_bound_", cpu_n, cpu, cpu_ratios)
        fo: dict[str, Any] = {"pauses": [], "duplicates": 0, "lost": 0, "records": 0}
        if kills:
            print(f"Failover (I/O-bound settings): two workers, a producer appending; SIGKILL the owner {kills} "
                  f"times", flush=True)
            fo = await failovers(kills, bootstrap, dsn, Path(tmp), flush_records)
            print(f"  failover (SIGKILL until the partitions flow on another worker): median "
                  f"{statistics.median(fo['pauses']):.2f} s of {len(fo['pauses'])} (session timeout "
                  f"{SESSION_TIMEOUT_MS / 1000:.0f} s; target < {2 * SESSION_TIMEOUT_MS / 1000:.0f} s); "
                  f"{fo['records']:,} rows, duplicates {fo['duplicates']}, lost {fo['lost']}", flush=True)
        emb: dict[int, dict[str, float]] = {}
        if with_embedded:
            print(f"Embedded log (flush: {{records: {flush_records}}}): tasks: 1 and tasks: 3 of one sink in one "
                  f"worker, {n:,} rows; its polls are whole reads of a partition (up to 1 MB), so a flush holds "
                  f"one read, more than {flush_records} rows: less I/O-bound than the Kafka phase", flush=True)
            for t in (1, 3):
                r = emb[t] = await embedded(t, n, dsn, Path(tmp), flush_records)
                print(harness.rate_line(f"  tasks: {t}", n, r["drain_s"],
                                        note=f"(duplicates {r['duplicates']:.0f}, lost {r['lost']:.0f})"), flush=True)
            print(f"  {harness.ratio_line('embedded tasks: 3 / tasks: 1', n / emb[3]['drain_s'], n / emb[1]['drain_s'])}")
    # every phase counts: each record exactly once in each table
    checked = [warm, *io_all, *cpu_all, *emb.values()]
    duplicates = sum(int(r["duplicates"]) for r in checked) + fo["duplicates"]
    lost = sum(int(r["lost"]) for r in checked) + fo["lost"]
    figures |= {
        "failover_seconds_median": round(statistics.median(fo["pauses"]), 3) if fo["pauses"] else None,
        "failover_seconds": [round(p, 3) for p in fo["pauses"]],
        "session_timeout_seconds": SESSION_TIMEOUT_MS / 1000,
        **({f"embedded_tasks_{t}_records_per_s": round(n / r["drain_s"]) for t, r in emb.items()}),
        "duplicates": duplicates,
        "lost": lost,
    }
    return figures


if __name__ == "__main__":
    main()
