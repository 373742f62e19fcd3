"""The workloads of the power-cut tests, each with the invariants checked at every simulated crash.

Each keeps, while it runs, what was acknowledged (the call returned) and what
was attempted; ``check`` reopens a crash state the way a restarted process
would (no manual step) and compares what it reads with that model.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from millpond.backends.embedded.groups import GroupCoordinator
from millpond.backends.embedded.transactions import TransactionCoordinator
from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSink, FileSinkConfig
from millpond.connectors.file.sink import TEMP_PREFIX, parse_committed
from millpond.log import LogStore
from millpond.log.batch import Row
from millpond.log.cleaner import compact
from millpond.log.partition import Partition
from millpond.log.retention import enforce_retention
from millpond.records import Record, TopicPartition
from millpond.runtime.source_offsets import SOURCE_OFFSETS_TOPIC


def read_all(partition: Partition, *, read_committed: bool = False) -> list[Any]:
    offset = partition.log_start_offset
    out: list[Any] = []
    while True:
        result = partition.read(offset, 1 << 20, read_committed=read_committed)
        for batch in result.batches:
            out.extend(batch.records(offset))
        if result.next_offset == offset:
            return out
        offset = result.next_offset


class Violation(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise Violation(message)


# -- transactions over several partitions, with group offsets and a source checkpoint --

IN = "in"
OUT = "out"
GROUP = "g"
SINK_GROUP = "sink"
SOURCE_KEY = b"src"
TOPICS: list[tuple[str, int, dict[str, Any]]] = [
    (IN, 2, {}),
    (OUT, 3, {"segment.bytes": 1024}),
    (SOURCE_OFFSETS_TOPIC, 1, {"cleanup.policy": "compact"}),
]


def open_log(root: Path) -> tuple[LogStore, GroupCoordinator, TransactionCoordinator]:
    store = LogStore(root / "log")
    for name, partitions, config in TOPICS:
        if name not in store.topics:
            store.create_topic(name, partitions, config)
    groups = GroupCoordinator(store)
    return store, groups, TransactionCoordinator(store, groups)


class Transactions:
    """Source-like and consume-transform-produce transactions: rows to several ``out`` partitions,
    the group's offsets on ``in`` and a source checkpoint, committed or aborted; a clean restart midway."""

    def __init__(self, transactions: int = 24) -> None:
        self.transactions = transactions
        self.in_acked = [0, 0]  # log end offsets of ``in`` made durable by a returned flush
        self.attempted: dict[int, dict[str, Any]] = {}
        self.acked: set[int] = set()
        self.aborted: set[int] = set()

    def run(self, root: Path, rng: random.Random) -> None:
        store, groups, txns = open_log(root)
        for p in range(2):
            partition = store.partition(IN, p)
            partition.append([Row(b"i%d" % i, b"in-%d-%d" % (p, i), None, []) for i in range(40)])
            partition.flush()
            self.in_acked[p] = partition.log_end_offset
        producer = txns.init_producer("crash-test")
        position = [0, 0]
        for i in range(self.transactions):
            if i == self.transactions // 2:  # a clean restart: the clean-shutdown marker comes and goes
                store.close()
                store, groups, txns = open_log(root)
                producer = txns.init_producer("crash-test")
            touched = sorted(rng.sample(range(3), rng.randint(1, 3)))
            data: dict[TopicPartition, list[Row]] = {}
            for p in touched:
                rows = rng.randint(1, 4)
                data[TopicPartition(OUT, p)] = [
                    Row(f"t{i}-{p}-{j}".encode(), bytes([65 + i % 26]) * rng.randint(20, 300), None, [])
                    for j in range(rows)
                ]
            data[TopicPartition(SOURCE_OFFSETS_TOPIC, 0)] = [
                Row(SOURCE_KEY, json.dumps({"txn": i}).encode(), None, [])
            ]
            if rng.random() < 0.3:  # more input, not flushed: offsets may claim it all the same
                for p in range(2):
                    partition = store.partition(IN, p)
                    start = partition.log_end_offset
                    partition.append([Row(b"i", b"in-%d-%d" % (p, o), None, []) for o in range(start, start + 3)])
            ends = [store.partition(IN, p).log_end_offset for p in range(2)]
            position = [min(ends[p], position[p] + rng.randint(0, 5)) for p in range(2)]
            offsets = {GROUP: {TopicPartition(IN, p): position[p] for p in range(2)}}
            abort = rng.random() < 0.2
            if abort:  # a row that cannot be encoded: the coordinator aborts what was appended
                data[TopicPartition(OUT, touched[-1])].append(Row(b"bad", 12345, None, []))  # type: ignore[arg-type]
            self.attempted[i] = {
                "rows": {tp: [r.key for r in rows if r.key != b"bad"] for tp, rows in data.items()},
                "offsets": dict(offsets[GROUP]),
            }
            try:
                txns.commit(producer, producer.epoch, data, offsets)
            except TypeError:
                self.aborted.add(i)
                continue
            self.acked.add(i)
            if rng.random() < 0.5:  # a sink's plain commit of what it read (appended, not fsynced)
                ends = {TopicPartition(OUT, p): store.partition(OUT, p).last_stable_offset for p in range(3)}
                groups.commit(SINK_GROUP, ends)
        store.close()

    def check(self, state_root: Path) -> None:
        store, groups, _ = open_log(state_root)
        try:
            for p in range(2):
                records = read_all(store.partition(IN, p))
                expect(len(records) >= self.in_acked[p], f"{IN}-{p}: {len(records)} records, {self.in_acked[p]} flushed")
                for r in records:
                    expect(r.value == b"in-%d-%d" % (p, r.offset), f"{IN}-{p}@{r.offset}: wrong value {r.value!r}")
            seen: dict[int, dict[TopicPartition, list[bytes]]] = {}
            for p in range(3):
                last_offset = -1
                for r in read_all(store.partition(OUT, p), read_committed=True):
                    expect(r.offset > last_offset, f"{OUT}-{p}: offset {r.offset} served after {last_offset}")
                    last_offset = r.offset
                    txn = int(r.key.decode().split("-")[0][1:])
                    seen.setdefault(txn, {}).setdefault(TopicPartition(OUT, p), []).append(r.key)
                    expect(
                        r.value == bytes([65 + txn % 26]) * len(r.value) and len(r.value) >= 20,
                        f"{OUT}-{p}@{r.offset}: wrong value",
                    )
            checkpoints = [
                json.loads(r.value)["txn"]
                for r in read_all(store.partition(SOURCE_OFFSETS_TOPIC, 0), read_committed=True)
                if r.key == SOURCE_KEY
            ]
            for txn in checkpoints:
                seen.setdefault(txn, {})[TopicPartition(SOURCE_OFFSETS_TOPIC, 0)] = [SOURCE_KEY]
            visible = set(seen)
            in_flight = set(self.attempted) - self.acked - self.aborted
            expect(not visible & self.aborted, f"aborted transactions visible to read_committed: {sorted(visible & self.aborted)}")
            expect(self.acked <= visible, f"acknowledged transactions lost: {sorted(self.acked - visible)}")
            expect(visible <= self.acked | in_flight, f"transactions visible that never ran: {sorted(visible)}")
            for txn in visible:
                want = self.attempted[txn]["rows"]
                got = seen[txn]
                expect(got == want, f"transaction {txn} is partly visible or doubled: {got} != {want}")
            expect(checkpoints == sorted(checkpoints), f"source checkpoints out of order: {checkpoints}")
            committed = groups.committed(GROUP)
            if visible:
                last = max(visible)
                expect(
                    committed == self.attempted[last]["offsets"],
                    f"group offsets {committed} are not those of the last visible transaction {last}",
                )
                expect(checkpoints[-1] == last, f"source checkpoint {checkpoints[-1]} != last visible transaction {last}")
            else:
                expect(committed == {}, f"group offsets {committed} with no transaction visible")
            for group in (GROUP, SINK_GROUP):
                for tp, offset in groups.committed(group).items():
                    end = store.partition(tp.topic, tp.partition).last_stable_offset
                    expect(offset <= end, f"{group}'s offset {offset} of {tp} is past the last stable offset {end}")
        finally:
            store.close()


# -- segment rolls and retention --


class Retention:
    """Plain appends to a topic with tiny segments, flushes, and retention deleting old segments."""

    def __init__(self, steps: int = 60) -> None:
        self.steps = steps
        self.flushed = 0  # log end offset of the last flush that returned
        self.config = {"segment.bytes": 1024, "retention.bytes": 3000}

    def run(self, root: Path, rng: random.Random) -> None:
        store = LogStore(root / "log")
        topic = store.create_topic("r", 1, self.config)
        partition = topic.partitions[0]
        for step in range(self.steps):
            start = partition.log_end_offset
            n = rng.randint(1, 6)
            partition.append([Row(None, b"r%08d" % o + b"." * rng.randint(10, 120), None, []) for o in range(start, start + n)])
            if rng.random() < 0.4:
                partition.flush()
                self.flushed = partition.log_end_offset
            if rng.random() < 0.2:
                enforce_retention(partition, 0)
        store.close()

    def check(self, state_root: Path) -> None:
        store = LogStore(state_root / "log")
        try:
            if "r" not in store.topics:
                expect(self.flushed == 0, "topic lost after a flush")
                return
            partition = store.partition("r", 0)
            expect(partition.log_end_offset >= self.flushed, f"log end {partition.log_end_offset} < flushed {self.flushed}")
            records = read_all(partition)
            expected = partition.log_start_offset
            for r in records:
                expect(r.offset == expected, f"r-0: offset {r.offset} where {expected} was due (a gap or a double)")
                expect(r.value.startswith(b"r%08d" % r.offset), f"r-0@{r.offset}: wrong value {r.value[:12]!r}")
                expected += 1
            expect(expected == partition.log_end_offset, f"read up to {expected}, log end {partition.log_end_offset}")
        finally:
            store.close()


# -- compaction and its segment swap --


class Compaction:
    """Keyed appends to a compacted topic with tiny segments; forced cleaning passes swap segments."""

    def __init__(self, steps: int = 40, keys: int = 8) -> None:
        self.steps = steps
        self.keys = keys
        self.written: dict[int, tuple[bytes, bytes]] = {}  # offset -> (key, value), for flushed and not
        self.flushed = 0
        self.config = {"cleanup.policy": "compact", "segment.bytes": 1024, "min.cleanable.dirty.ratio": 0.01}

    def run(self, root: Path, rng: random.Random) -> None:
        store = LogStore(root / "log")
        partition = store.create_topic("c", 1, self.config).partitions[0]
        for step in range(self.steps):
            rows = []
            for _ in range(rng.randint(1, 5)):
                key = b"k%d" % rng.randrange(self.keys)
                rows.append(Row(key, key + b"=%d;" % step + b"v" * rng.randint(10, 100), None, []))
            first = partition.append(rows)
            for i, row in enumerate(rows):
                self.written[first + i] = (row.key, row.value)  # type: ignore[assignment]
            if rng.random() < 0.5:
                partition.flush()
                self.flushed = partition.log_end_offset
            if rng.random() < 0.25:
                compact(partition, 1 << 62, force=True)
        store.close()

    def check(self, state_root: Path) -> None:
        store = LogStore(state_root / "log")
        try:
            if "c" not in store.topics:
                expect(self.flushed == 0, "topic lost after a flush")
                return
            partition = store.partition("c", 0)
            records = read_all(partition)
            present: dict[int, bytes] = {}
            last = -1
            for r in records:
                expect(r.offset > last, f"c-0: offset {r.offset} served after {last} (a double after a swap?)")
                last = r.offset
                expect(self.written.get(r.offset) == (r.key, r.value), f"c-0@{r.offset}: wrong record")
                present[r.offset] = r.key
            end = partition.log_end_offset
            expect(end >= self.flushed, f"log end {end} < flushed {self.flushed}")
            latest: dict[bytes, int] = {}
            for offset, key in present.items():
                latest[key] = max(latest.get(key, -1), offset)
            for offset in range(min(end, self.flushed)):
                key = self.written[offset][0]
                expect(
                    offset in present or latest.get(key, -1) > offset,
                    f"c-0@{offset} (key {key!r}) is gone but no later record of its key is there",
                )
        finally:
            store.close()


# -- the file sink's commit --


def _sink(directory: Path) -> FileSink:
    config = FileSinkConfig(dir=str(directory), format="text", roll_records=7)
    return FileSink(config, ConnectorContext(name="files", extra={"topics": ["lines"]}))


class FileSinkCommits:
    """The file sink writing two partitions, rolling every 7 records and flushing now and then."""

    def __init__(self, steps: int = 40) -> None:
        self.steps = steps
        self.flushed: dict[TopicPartition, int] = {}  # the next offset, by a flush that returned

    @staticmethod
    def line(tp: TopicPartition, offset: int) -> str:
        return f"{tp.topic}-{tp.partition}@{offset}"

    def run(self, root: Path, rng: random.Random) -> None:
        directory = root / "out"

        async def go() -> None:
            sink = _sink(directory)
            await sink.start()
            next_offset = {TopicPartition("lines", p): 0 for p in range(2)}
            for _ in range(self.steps):
                tp = TopicPartition("lines", rng.randrange(2))
                n = rng.randint(1, 5)
                start = next_offset[tp]
                await sink.write(
                    [Record(value=self.line(tp, o), topic=tp.topic, partition=tp.partition, offset=o) for o in range(start, start + n)]
                )
                next_offset[tp] = start + n
                if rng.random() < 0.3:
                    ends = dict(next_offset)
                    await sink.flush(ends)
                    self.flushed = ends

        asyncio.run(go())

    def check(self, state_root: Path) -> None:
        directory = state_root / "out"
        if not directory.exists():
            expect(not self.flushed, "output folder lost after a flush")
            return
        sink = _sink(directory)
        # the crash point may be inside the workload's event loop: start the new sink in a thread of its own
        with ThreadPoolExecutor(1) as pool:
            resume: Mapping[TopicPartition, int] = pool.submit(asyncio.run, sink.start()).result() or {}
        names = sorted(p.name for p in directory.iterdir())
        expect(not [n for n in names if n.startswith(TEMP_PREFIX)], "temp files left after start")
        covered: dict[TopicPartition, int] = {}
        for name in names:
            parsed = parse_committed(name)
            expect(parsed is not None, f"unexpected file {name}")
            assert parsed is not None
            tp, first, last = parsed
            expect(first == covered.get(tp, 0), f"{name}: starts at {first}, {covered.get(tp, 0)} was due")
            text = (directory / name).read_text()
            want = "".join(self.line(tp, o) + "\n" for o in range(first, last + 1))
            expect(text == want, f"committed file {name} is not whole ({len(text)} of {len(want)} bytes)")
            covered[tp] = last + 1
        for tp, end in self.flushed.items():
            expect(resume.get(tp, 0) >= end, f"{tp}: resumes at {resume.get(tp, 0)}, but {end} was flushed")
