"""A real Kafka broker adopts a millpond partition directory and serves it as its own (issue 16).

The millpond log holds what a pipeline writes, and what a crash leaves:
a zstd-compressed topic of two partitions over several segments,
committed and aborted transactions (several producers, interleaved with plain records),
headers, and timestamps that go back and forth inside a batch.

How the broker is made to take the files, found by trying it (Kafka 4.1, KRaft):

1. Start the broker and create the topic there, so the controller knows it (a topic id)
   and the partition folder holds ``partition.metadata`` naming that id; stop it cleanly,
   so the log directory keeps ``.kafka_cleanshutdown``.
2. Empty each partition folder except ``partition.metadata`` and copy millpond's segment
   files into it: ``.log``, ``.index``, ``.timeindex``, ``.txnindex``, names unchanged.
   No producer snapshot is needed: after a clean shutdown the broker takes empty
   producer state (nothing is in flight), and read_committed fetches take the aborted
   ranges from the ``.txnindex`` files alone.
3. Fix the checkpoints the broker trusts after a clean shutdown, in the log directory
   (format: version ``0``, a count, then ``topic partition offset`` lines):
   ``recovery-point-offset-checkpoint`` = the log end offset (below it the broker would
   re-read segments and rebuild their indexes, hiding any fault of ours in them);
   ``replication-offset-checkpoint`` = the log end offset (the high watermark: without it
   the adopted records stay invisible until the broker moves it itself);
   ``log-start-offset-checkpoint`` = millpond's log start offset. In the partition folder,
   ``leader-epoch-checkpoint`` (version ``0``, a count, ``epoch start_offset`` lines)
   says epoch 0 starts at the first offset; millpond writes partition leader epoch 0
   into its batches, so the broker's own entry stands.
4. Restart: the broker loads the segments without recovery and serves them.

Then a read_committed consumer of the broker gets exactly what millpond's read_committed
consumer gets (offsets, keys, values, timestamps, headers), and ListOffsets by time on
the broker answers what millpond's ``offset_for_time`` answers.

One difference of rule, not of format: Kafka's lookup by time counts transaction markers
(the first record of any batch, control or not, with a timestamp at or after the target),
millpond's skips them. They answer alike while markers are no newer than the data after
them (one clock, as here); with back-dated data (old event times, markers stamped now)
Kafka answers the first newer marker. Found by this test; reported for the log engine.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition as KafkaTP

from millpond.backends.base import IsolationLevel
from millpond.backends.embedded import EmbeddedBackend
from millpond.log import LogStore
from millpond.log.batch import Row
from millpond.records import TopicPartition

from ..servers.common import server_unavailable, start_with_retry, tail, wait_for_port
from ..servers.kafka import KafkaServer, _metadata_ok, fetch_jars, start_kafka, stop_kafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

TOPIC = "orders"
PARTITIONS = 2
#: record timestamps start this long after the log is written, so every transaction marker (stamped with the
#: time it was written) is older than the data around it, as with producers and a broker on one clock
AHEAD_MS = 60_000
CONFIG = {"compression.type": "zstd", "segment.bytes": 16384}

Seen = tuple[int, bytes | None, bytes | None, int, list[tuple[str, bytes | None]]]


def write_millpond_log(directory: Path) -> int:
    """Transactions of three producers open at once (interleaved), a quarter of them aborted,
    plain records between them. Written with the partition's own append calls: the embedded
    producer appends only at commit, so only a crash leaves aborted data in its log. Returns the
    first record's timestamp (taken now, not at import: the suite may run this test minutes later)."""
    t0 = int(time.time() * 1000) + AHEAD_MS
    rnd = random.Random(16)
    store = LogStore(directory)
    try:
        topic = store.create_topic(TOPIC, PARTITIONS, CONFIG)
        n = 0
        for round_ in range(40):
            for pid in (1000, 1001, 1002):
                for partition in topic.partitions:
                    rows = []
                    for _ in range(rnd.randint(1, 25)):
                        n += 1
                        # timestamps move back and forth inside a batch: the indexes take a batch's max
                        ts = t0 + n * 1000 + rnd.randint(-3000, 3000)
                        headers: list[tuple[str, bytes | None]] = [("n", str(n).encode()), ("pid", str(pid).encode())]
                        rows.append(Row(b"key-%d" % (n % 50), b"value-%d-" % n + b"x" * rnd.randint(0, 300), ts,
                                        headers if n % 3 else []))
                    partition.append(rows, producer_id=pid, producer_epoch=0, transactional=True)
                if round_ % 5 == 0:
                    n += 1
                    topic.partitions[round_ % PARTITIONS].append([Row(None, b"plain-%d" % n, t0 + n * 1000, [])])
            for pid in (1000, 1001, 1002):
                for partition in topic.partitions:
                    partition.append_control(pid, 0, commit=(round_ + pid) % 4 != 0)
        store.flush()
    finally:
        store.close()
    return t0


async def millpond_view(directory: Path) -> tuple[dict[int, list[Seen]], dict[int, int], dict[int, int]]:
    """Per partition: the read_committed records, the log start offset and the log end offset."""
    backend = EmbeddedBackend(directory, readonly=True)
    async with backend:
        infos = await backend.describe_topic(TOPIC)
        consumer = backend.consumer([TOPIC], None, IsolationLevel.read_committed)
        seen: dict[int, list[Seen]] = {p: [] for p in range(PARTITIONS)}
        for _ in range(1000):
            records = await consumer.poll(timeout=0.05)
            for r in records:
                assert r.partition is not None and r.offset is not None and r.timestamp is not None
                seen[r.partition].append((r.offset, r.key, r.value, r.timestamp, list(r.headers)))
            positions = [await consumer.position(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)]
            if not records and all(pos >= i.last_stable_offset for pos, i in zip(positions, infos)):
                break
        await consumer.close()
        return seen, {i.partition: i.log_start_offset for i in infos}, {i.partition: i.log_end_offset for i in infos}


async def millpond_times(directory: Path, stamps: list[int]) -> dict[tuple[int, int], int | None]:
    backend = EmbeddedBackend(directory, readonly=True)
    async with backend:
        return {(p, t): await backend.offset_for_time(TopicPartition(TOPIC, p), t)
                for p in range(PARTITIONS) for t in stamps}


async def create_on_broker(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
        for _ in range(200):
            described = (await admin.describe_topics([TOPIC]))[0]
            if described["error_code"] == 0 and all(p["leader"] >= 0 for p in described["partitions"]):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"topic {TOPIC} has no leaders at {bootstrap}")
    finally:
        await admin.close()


async def broker_view(bootstrap: str, stamps: list[int]) -> tuple[dict[int, list[Seen]], dict[tuple[int, int], int | None]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [KafkaTP(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
        seen: dict[int, list[Seen]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline, "the broker stopped serving before its last stable offset"
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                seen[tp.partition] += [(r.offset, r.key, r.value, r.timestamp, list(r.headers)) for r in records]
        times: dict[tuple[int, int], int | None] = {}
        for t in stamps:
            found = await consumer.offsets_for_times({tp: t for tp in tps})
            for tp in tps:
                hit = found[tp]
                times[(tp.partition, t)] = None if hit is None else hit.offset
        return seen, times
    finally:
        await consumer.stop()


def write_checkpoint(path: Path, entries: dict[tuple[str, int], int]) -> None:
    """Kafka's OffsetCheckpointFile: version 0, the number of entries, ``topic partition offset`` lines."""
    lines = ["0", str(len(entries))] + [f"{t} {p} {o}" for (t, p), o in sorted(entries.items())]
    path.write_text("\n".join(lines) + "\n")


def restart(libs: Path, data_dir: Path, bootstrap: str) -> KafkaServer:
    """Start the node again on its formatted storage (start_kafka formats a new one)."""
    port = int(bootstrap.rpartition(":")[2])
    log = data_dir / "server.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(["java", "-Xms128m", "-Xmx512m", "-Djava.awt.headless=true",
                                 f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}", "-cp", f"{libs}/*",
                                 "kafka.Kafka", str(data_dir / "server.properties")],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = KafkaServer(bootstrap, proc=proc, log=log)
    try:
        wait_for_port(port, 120, proc)
        deadline = time.monotonic() + 120
        while not asyncio.run(_metadata_ok(bootstrap)):
            assert proc.poll() is None, f"the broker exited ({proc.returncode}):\n{tail(log, 60)}"
            assert time.monotonic() < deadline, f"the broker did not come back:\n{tail(log, 60)}"
            time.sleep(0.5)
    except BaseException:
        stop_kafka(server)
        raise
    return server


def test_broker_serves_a_millpond_partition_directory(tmp_path: Path) -> None:
    if shutil.which("java") is None:
        server_unavailable("Apache Kafka", "java is not on the PATH")
    try:
        libs = fetch_jars()
    except RuntimeError as exc:
        server_unavailable("Apache Kafka", str(exc))
    log_dir = tmp_path / "millpond"
    t0 = write_millpond_log(log_dir)
    expected, starts, ends = asyncio.run(millpond_view(log_dir))
    committed = sum(map(len, expected.values()))
    assert committed > 300 and all(ends[p] > len(expected[p]) + 50 for p in expected)  # aborted data and markers
    source = log_dir / "topics" / TOPIC
    assert all(len(list((source / str(p)).glob("*.log"))) > 2 for p in range(PARTITIONS))
    assert any((source / str(p)).glob("*.txnindex") for p in range(PARTITIONS))

    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    server = start_with_topic(libs, broker_dir)
    try:
        stop_kafka(server)
        data = broker_dir / "log"
        assert (data / ".kafka_cleanshutdown").exists(), tail(broker_dir / "server.log", 40)
        for p in range(PARTITIONS):
            folder = data / f"{TOPIC}-{p}"
            assert (folder / "partition.metadata").exists()
            for f in folder.iterdir():
                if f.name not in ("partition.metadata", "leader-epoch-checkpoint"):
                    f.unlink()
            for f in sorted((source / str(p)).iterdir()):
                if f.suffix in (".log", ".index", ".timeindex", ".txnindex"):
                    shutil.copy2(f, folder / f.name)
            (folder / "leader-epoch-checkpoint").write_text(f"0\n1\n0 {starts[p]}\n")
        for name, offsets in [("recovery-point-offset-checkpoint", ends), ("replication-offset-checkpoint", ends),
                              ("log-start-offset-checkpoint", starts)]:
            existing = read_checkpoint(data / name)
            write_checkpoint(data / name, {**existing, **{(TOPIC, p): o for p, o in offsets.items()}})

        server = restart(libs, broker_dir, server.bootstrap)
        stamps = sorted({t0 - 10_000, t0, *range(t0 + 500, t0 + 2_000_000, 37_111), t0 + 10**9})
        got, broker_times = asyncio.run(broker_view(server.bootstrap, stamps))
        log_text = (broker_dir / "server.log").read_text(errors="replace")
        assert "Corrupt" not in log_text and "corrupt" not in log_text, tail(broker_dir / "server.log", 60)
    finally:
        stop_kafka(server)

    for p in range(PARTITIONS):
        assert len(got[p]) == len(expected[p]), f"partition {p}: broker {len(got[p])}, millpond {len(expected[p])}"
        for mine, theirs in zip(expected[p], got[p]):
            assert mine == theirs, f"partition {p}: millpond {mine[:4]}, broker {theirs[:4]}"
    ours = asyncio.run(millpond_times(log_dir, stamps))
    assert any(v is None for v in ours.values()) and len({v for v in ours.values()}) > 20
    differ = {k: (ours[k], broker_times[k]) for k in ours if ours[k] != broker_times[k]}
    assert not differ, f"offset for time (millpond, broker) differ at {sorted(differ.items())[:10]}"


def read_checkpoint(path: Path) -> dict[tuple[str, int], int]:
    if not path.exists():
        return {}
    lines = path.read_text().split("\n")
    out = {}
    for line in lines[2:]:
        if line.strip():
            topic, partition, offset = line.split()
            out[(topic, int(partition))] = int(offset)
    return out


def start_with_topic(libs: Path, broker_dir: Path) -> KafkaServer:
    try:
        server = start_with_retry(lambda: start_kafka(libs, broker_dir))
    except RuntimeError as exc:
        server_unavailable("Apache Kafka", str(exc))
        raise
    try:
        asyncio.run(create_on_broker(server.bootstrap))
    except BaseException:
        stop_kafka(server)
        raise
    return server
