"""Several workers of one pipeline on a real Kafka: killed at random, replaced, exactly once.

Three ``millpond run`` processes of the same pipeline file (two file sources -> a
6-partition topic -> a file sink with ``tasks: 3`` and the Postgres sink) form one
cluster. While lines flow, a random worker is SIGKILLed at least ten times and a new
one started each time. At the end:

- every line is in the file sink's output exactly once, and was applied exactly once
  to the Postgres table (a trigger counts every insert or update of a row);
- no source task ever ran on two workers at once, read from the log itself: in
  ``__source_offsets`` (one partition, where every transaction of a source task writes
  its checkpoint) no producer writes with an older epoch after a newer one appeared;
  and every takeover shows as a new epoch;
- an idle extra sink member (there are 9 for 6 partitions) took over a killed
  worker's partitions: a worker that owned no partition later owned some.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.cluster.kafka_log import batches, epochs_interleave

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

WORKERS = 3
KILLS = 10
PARTITIONS = 6
LINES_PER_SOURCE = 6000
#: seconds between kills (random in this range): the session timeout is 6 s
KILL_EVERY = (3.0, 6.0)
DRAIN_S = 90.0

PIPELINE = """
name: {name}
log:
  kafka:
    bootstrap_servers: '{bootstrap}'
    config: {{session_timeout_ms: 6000, heartbeat_interval_ms: 1000}}
topics:
  - {{name: {topic}, partitions: {partitions}}}
connectors:
  - name: tail-a-{name}
    kind: source
    type: file
    topic: {topic}
    config: {{path: '{inputs}/a/*.log', format: json, rescan_ms: 100}}
    converter: {{key: json, value: json}}
    guarantee: exactly_once
  - name: tail-b-{name}
    kind: source
    type: file
    topic: {topic}
    config: {{path: '{inputs}/b/*.log', format: json, rescan_ms: 100}}
    converter: {{key: json, value: json}}
    guarantee: exactly_once
  - name: files-{name}
    kind: sink
    type: file
    topics: [{topic}]
    tasks: 3
    config: {{dir: '{out}'}}
    converter: {{key: json, value: json}}
    guarantee: exactly_once
  - name: pg-{name}
    kind: sink
    type: postgres
    topics: [{topic}]
    config: {{dsn: '{dsn}', table: '{table}'}}
    converter: {{key: json, value: json}}
    guarantee: exactly_once
"""


class Cluster:
    """Worker processes of one pipeline file, each logging to its own file."""

    def __init__(self, pipeline: Path, logs: Path) -> None:
        self.pipeline = pipeline
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started = 0

    def start(self) -> str:
        self.started += 1
        wid = f"w{self.started:02d}"  # in start order: the group's range assignor serves older members first
        out = (self.logs / f"{wid}.log").open("wb")
        self.procs[wid] = subprocess.Popen(
            [str(Path(sys.executable).parent / "millpond"), "run", str(self.pipeline), "--worker-id", wid, "--api", "off"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        return wid

    def alive(self) -> list[str]:
        return [w for w, p in self.procs.items() if p.poll() is None]

    def kill(self, wid: str) -> None:
        self.procs[wid].send_signal(signal.SIGKILL)
        self.procs[wid].wait(timeout=10)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()

    def log(self, wid: str) -> str:
        return (self.logs / f"{wid}.log").read_text(errors="replace")


def write_inputs(inputs: Path, done: threading.Event) -> list[str]:
    """Append lines to two sources' files over ~20 s (the kills happen meanwhile); returns the ids."""
    ids: list[str] = []
    files = {s: (inputs / s / "in.log").open("a") for s in ("a", "b")}
    try:
        for i in range(0, LINES_PER_SOURCE, 150):
            for s, f in files.items():
                chunk = [f"{s}-{n}" for n in range(i, min(i + 150, LINES_PER_SOURCE))]
                f.write("".join(f'{{"id": "{x}", "n": {len(x)}}}\n' for x in chunk))
                f.flush()
                ids.extend(chunk)
            time.sleep(0.5)
    finally:
        for f in files.values():
            f.close()
        done.set()
    return ids


def file_sink_ids(out: Path) -> list[str]:
    found = []
    for f in out.iterdir():
        if f.name.startswith("."):
            continue
        for line in f.read_text().splitlines():
            m = re.search(r'"id":\s*"([^"]+)"', line)
            assert m, f"unexpected line in {f.name}: {line!r}"
            found.append(m.group(1))
    return found


def test_three_workers_killed_and_replaced_keep_every_record_exactly_once(
        kafka_bootstrap: str, pg_dsn: str, tmp_path: Path) -> None:
    name = f"cl{uuid.uuid4().hex[:8]}"
    topic, table = f"lines-{name}", f"public.lines_{name}"
    inputs, out, logs = tmp_path / "in", tmp_path / "out", tmp_path / "logs"
    for d in (inputs / "a", inputs / "b", out, logs):
        d.mkdir(parents=True)
    (inputs / "a" / "in.log").touch()
    (inputs / "b" / "in.log").touch()

    async def prepare() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f"""
                CREATE TABLE {table} (id text PRIMARY KEY, n int);
                CREATE TABLE {table}_writes (id text);
                CREATE FUNCTION {table}_count() RETURNS trigger LANGUAGE plpgsql AS
                  $$ BEGIN INSERT INTO {table}_writes VALUES (NEW.id); RETURN NEW; END $$;
                CREATE TRIGGER counted AFTER INSERT OR UPDATE ON {table}
                  FOR EACH ROW EXECUTE FUNCTION {table}_count();""")
        finally:
            await conn.close()

    asyncio.run(prepare())
    pipeline = tmp_path / "cluster.yaml"
    pipeline.write_text(PIPELINE.format(name=name, bootstrap=kafka_bootstrap, topic=topic, partitions=PARTITIONS,
                                        inputs=inputs, out=out, dsn=pg_dsn, table=table))

    async def applied() -> tuple[int, int, int]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
            writes = await conn.fetchval(f"SELECT count(*) FROM {table}_writes")
            distinct = await conn.fetchval(f"SELECT count(DISTINCT id) FROM {table}_writes")
            if writes != distinct:
                doubled = await conn.fetch(f"SELECT id, count(*) FROM {table}_writes GROUP BY id HAVING count(*) > 1 "
                                           "ORDER BY id LIMIT 5")
                print("doubled in postgres:", [tuple(r) for r in doubled])
            return rows, writes, distinct
        finally:
            await conn.close()

    cluster = Cluster(pipeline, logs)
    rng = random.Random(os.environ.get("MILLPOND_TEST_SEED", name))
    try:
        for _ in range(WORKERS):
            cluster.start()
        time.sleep(8)  # the first workers join; the lines start flowing
        written = threading.Event()
        ids: list[str] = []
        writer = threading.Thread(target=lambda: ids.extend(write_inputs(inputs, written)))
        writer.start()
        kills = 0
        while kills < KILLS:
            time.sleep(rng.uniform(*KILL_EVERY))
            victim = rng.choice(cluster.alive())
            cluster.kill(victim)
            kills += 1
            cluster.start()
        writer.join()
        expected = sorted(ids)
        deadline = time.monotonic() + DRAIN_S
        # both sinks drain before the workers stop: a rebalance just before the file sink finished
        # can leave the Postgres sink seconds behind
        while ((sorted(file_sink_ids(out)) != expected or asyncio.run(applied())[0] < len(expected))
               and time.monotonic() < deadline):
            time.sleep(1)
        got = file_sink_ids(out)
    finally:
        cluster.stop_all()

    # files: every line once
    missing = set(expected) - set(got)
    doubled = len(got) - len(set(got))
    assert not missing and not doubled, f"file sink: {len(missing)} missing, {doubled} doubled"
    assert sorted(got) == expected

    rows, writes, distinct = asyncio.run(applied())
    assert (rows, distinct) == (len(expected), len(expected)), f"postgres: {rows} rows for {len(expected)} lines"
    assert writes == len(expected), f"postgres: {writes - len(expected)} rows applied more than once"

    # no source task ran on two workers at once: no epoch of a producer after a newer one
    log = asyncio.run(batches(kafka_bootstrap, "__source_offsets", 0))
    ours = [b for b in log if b.transactional]
    assert ours and epochs_interleave(ours) == []
    for p in range(PARTITIONS):
        assert epochs_interleave(asyncio.run(batches(kafka_bootstrap, topic, p))) == []

    # the sink's idle extra members took over killed workers' partitions
    takeovers = 0
    for wid in cluster.procs:
        owned: dict[str, list[str]] = {}
        for m in re.finditer(rf"sink '(files-{name}#\d)' owns (.*)", cluster.log(wid)):
            owned.setdefault(m.group(1), []).append(m.group(2))
        for history in owned.values():
            takeovers += sum(1 for a, b in zip(history, history[1:]) if "no partition" in a and "no partition" not in b)
    assert takeovers >= 1, "no idle member ever took over partitions"
