"""Benchmark of costs that should stay flat as history grows (issue 17).

    python tests/benchmarks/bench_scale.py [--quick] [--rounds N] [--dir DIR]

Each figure is measured at two sizes 10x apart (100x for reads), so the curve
shows whether a cost grows with history; the JSON keys name the full sizes and
``--quick`` measures smaller sizes under the same keys (targets from the issue
in brackets):

- ``open_5000_partitions_s`` (< 0.5): a writable open after a clean close;
  partitions are opened at their first use then, so ``first_use_5000_partitions_s``
  (no target; said so the cost moved is in sight) is the first use of every one;
- ``unclean_open_5000_partitions_s`` (< 2): the same without the clean-shutdown
  marker, only a few partitions written since their last flush;
- ``groups_list_1000_groups_s`` (< 1): what ``millpond groups list`` does on a
  read-only backend (list, then describe every group);
- ``source_start_after_1m_txns_s`` (< 0.1): a source's checkpoint read
  (``read_source_offset``) after that many small transactions on
  ``__source_offsets``, with retention and compaction run as a worker would;
- ``compaction_max_loop_stall_ms`` (< 100): the longest a 10 ms asyncio ticker
  waited past its tick while ``run_compaction`` cleaned the updates;
- ``read_10000_segments_mb_per_s`` / ``read_100_segments_mb_per_s`` (within 2x):
  a read-only store reading one partition of that many segments to its end. The
  same bytes in batches of the same size (two to a segment of the larger count),
  so only the number of segments differs: per-batch costs are not what is asked;
- ``time_lookup_10000_segments_ms`` (< 5): ``offset_for_time`` on a read-only
  store for a timestamp in the last segment.

Segments' files are opened on demand through a bounded cache, so no raised
limit is needed; the soft limit is raised to the hard one all the same, as a
store does when it opens. Last line: JSON with the figures.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.backends.base import TopicSpec  # noqa: E402
from millpond.backends.embedded import EmbeddedBackend  # noqa: E402
from millpond.log import LogStore  # noqa: E402
from millpond.log.batch import Row  # noqa: E402
from millpond.log.store import CLEAN_SHUTDOWN  # noqa: E402
from millpond.records import TopicPartition  # noqa: E402
from millpond.runtime.source_offsets import (  # noqa: E402
    SOURCE_OFFSETS_TOPIC,
    encode_offset,
    ensure_source_offsets_topic,
    read_source_offset,
)
from tests.benchmarks import harness  # noqa: E402

#: (key size, full sizes, quick sizes): the key names the full run's largest size
PARTITIONS = ((500, 5_000), (50, 500))
GROUPS = ((100, 1_000), (20, 200))
TXNS = ((100_000, 1_000_000), (500, 5_000))
COMPACTION = ((10_000_000, 1_000_000), (200_000, 20_000))  # (updates, keys)
SEGMENTS = ((100, 10_000), (20, 2_000))
READ_BYTES = (157 << 20, 16 << 20)
TOUCHED = 5
DAY_MS = 24 * 60 * 60 * 1000


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fresh(root: Path, name: str) -> Path:
    path = root / name
    shutil.rmtree(path, ignore_errors=True)
    return path


# -- opening --


def build_partitions(directory: Path, count: int) -> None:
    store = LogStore(directory)
    per_topic = 50
    now = int(time.time() * 1000)
    for t in range(0, count, per_topic):
        topic = store.create_topic(f"t{t // per_topic:04d}", min(per_topic, count - t))
        for partition in topic.partitions:
            partition.append([Row(b"k", b"v" * 100, now, [])])
    store.close()


def bench_open(directory: Path, count: int) -> tuple[float, float, float]:
    """(clean open s, first use of every partition s, unclean open s) of a store of ``count`` partitions."""
    build_partitions(directory, count)
    clean, store = harness.timed(LogStore, directory)
    first_use, ends = harness.timed(lambda: [p.log_end_offset for p in store.partitions()])
    assert ends == [1] * count, "a partition opened at first use does not show its record"
    now = int(time.time() * 1000)
    for partition in store.partitions()[:TOUCHED]:
        partition.append([Row(b"k", b"w" * 100, now, [])])
    store.close()
    (directory / CLEAN_SHUTDOWN).unlink()
    unclean, store = harness.timed(LogStore, directory)
    store.close()
    return clean, first_use, unclean


# -- consumer groups --


async def bench_groups(directory: Path, count: int) -> float:
    backend = EmbeddedBackend(directory, fsync=False)
    await backend.open()
    await backend.create_topic(TopicSpec("data", partitions=4))
    for g in range(count):
        await backend.reset_offsets(f"g{g:05d}", {TopicPartition("data", g % 4): 0})
    await backend.close()

    async def groups_list() -> int:
        reader = EmbeddedBackend(directory, readonly=True)
        await reader.open()
        try:
            groups = await reader.list_groups()
            for group in groups:
                await reader.describe_group(group)
            return len(groups)
        finally:
            await reader.close()

    elapsed, seen = await harness.timed_async(groups_list())
    assert seen == count, (seen, count)
    return elapsed


# -- a source's checkpoint --


async def bench_source_start(directory: Path, txns: int) -> float:
    backend = EmbeddedBackend(directory, fsync=False)
    await backend.open()
    await ensure_source_offsets_topic(backend)
    producer = backend.producer("bench-source")
    await producer.init()
    for n in range(txns):
        await producer.begin()
        await producer.send(SOURCE_OFFSETS_TOPIC, encode_offset("bench", {"position": n}, n))
        await producer.commit()
    await producer.close()
    # what a worker's scheduler would have done by now: those transactions took days at a commit a
    # second, so passes ran after delete.retention.ms (a day) too, removing the markers of
    # transactions whose data compaction removed
    now = int(time.time() * 1000)
    await backend.run_retention()
    await backend.run_compaction(now)
    await backend.run_compaction(now + DAY_MS + 1)
    await backend.close()

    backend = EmbeddedBackend(directory, fsync=False)
    await backend.open()
    try:
        elapsed, found = await harness.timed_async(read_source_offset(backend, "bench"))
    finally:
        await backend.close()
    assert found == {"position": txns - 1}, found
    return elapsed


# -- compaction beside the event loop --


async def bench_compaction(directory: Path, updates: int, keys: int) -> float:
    backend = EmbeddedBackend(directory, fsync=False)
    await backend.open()
    await backend.create_topic(
        TopicSpec("kv", partitions=1, config={"cleanup.policy": "compact", "segment.bytes": 4 << 20,
                                              "min.cleanable.dirty.ratio": 0.01})
    )
    partition = backend.store.partition("kv", 0)
    now = int(time.time() * 1000)
    value = b"v" * 20
    batch = 1_000
    for start in range(0, updates, batch):
        partition.append([Row(b"%08d" % ((start + i) % keys), value, now, []) for i in range(batch)])
    partition.roll()

    worst = 0.0
    stop = False

    async def ticker() -> None:
        nonlocal worst
        while not stop:
            began = time.perf_counter()
            await asyncio.sleep(0.010)
            worst = max(worst, time.perf_counter() - began - 0.010)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    cleaned = await backend.run_compaction(now + 10 ** 9)
    stop = True
    await tick
    await backend.close()
    assert cleaned >= 1, "nothing was compacted"
    return worst * 1000


# -- many segments: reads and lookups by time --


def build_segments(directory: Path, segments: int, total_bytes: int, rows_per_batch: int) -> int:
    """One partition of about ``segments`` segments holding ``total_bytes`` in batches of ``rows_per_batch``
    records; returns the first timestamp of its last segment."""
    store = LogStore(directory)
    segment_bytes = max(total_bytes // segments, 2048)
    partition = store.create_topic("wide", 1, {"segment.bytes": segment_bytes}).partitions[0]
    value = os.urandom(100)
    ts = 1_000_000
    written = 0
    while written < total_bytes:
        partition.append([Row(b"%012d" % (ts + i), value, ts + i, []) for i in range(rows_per_batch)])
        ts += rows_per_batch
        written += rows_per_batch * 140
    partition.flush(fsync=False)
    last_first = partition.active_segment.base_offset
    store.close()
    return 1_000_000 + last_first


def bench_read(directory: Path) -> tuple[float, float]:
    """(MB/s, MB) reading the whole partition through a read-only store."""
    store = LogStore(directory, writable=False)
    partition = store.partition("wide", 0)

    def read() -> int:
        total, offset = 0, 0
        while True:
            result = partition.read(offset, 1 << 20)
            total += sum(len(b.data) for b in result.batches)
            if result.next_offset == offset:
                return total
            offset = result.next_offset

    elapsed, total = harness.timed(read)
    store.close()
    mb = total / (1 << 20)
    return mb / elapsed, mb


def bench_time_lookup(directory: Path, timestamp: int) -> float:
    store = LogStore(directory, writable=False)
    partition = store.partition("wide", 0)
    elapsed, offset = harness.timed(partition.offset_for_time, timestamp)
    assert offset is not None and offset >= partition.active_segment.base_offset, offset
    store.close()
    return elapsed * 1000


# -- the run --


async def one_round(root: Path, quick: bool) -> dict[str, float]:
    pick = 1 if quick else 0
    figures: dict[str, float] = {}

    for size in PARTITIONS[pick]:
        clean, first_use, unclean = bench_open(fresh(root, f"open{size}"), size)
        print(harness.rate_line(f"open {size} partitions", size, clean, "partitions"))
        print(harness.rate_line(f"first use of {size} partitions", size, first_use, "partitions"))
        print(harness.rate_line(f"unclean open {size} partitions", size, unclean, "partitions"))
        shutil.rmtree(root / f"open{size}")
    figures["open_5000_partitions_s"] = clean
    figures["first_use_5000_partitions_s"] = first_use
    figures["unclean_open_5000_partitions_s"] = unclean

    for size in GROUPS[pick]:
        elapsed = await bench_groups(fresh(root, f"groups{size}"), size)
        print(harness.rate_line(f"groups list {size} groups", size, elapsed, "groups"))
        shutil.rmtree(root / f"groups{size}")
    figures["groups_list_1000_groups_s"] = elapsed

    for size in TXNS[pick]:
        elapsed = await bench_source_start(fresh(root, f"txns{size}"), size)
        print(harness.rate_line(f"source start {size} txns", size, elapsed, "txns"))
        shutil.rmtree(root / f"txns{size}")
    figures["source_start_after_1m_txns_s"] = elapsed

    updates, keys = COMPACTION[pick]
    stall = await bench_compaction(fresh(root, "compact"), updates, keys)
    print(f"{'compaction max loop stall:':<30}{stall:8.1f} ms  ({updates:,} updates over {keys:,} keys)")
    shutil.rmtree(root / "compact")
    figures["compaction_max_loop_stall_ms"] = stall

    small, large = SEGMENTS[pick]
    rows_per_batch = max(1, max(READ_BYTES[pick] // large, 2048) // 140 // 2)  # two batches a segment at most
    for size, key in ((small, "read_100_segments_mb_per_s"), (large, "read_10000_segments_mb_per_s")):
        directory = fresh(root, f"segments{size}")
        last_ts = build_segments(directory, size, READ_BYTES[pick], rows_per_batch)
        rate, mb = bench_read(directory)
        print(f"{f'read {size} segments:':<30}{mb / rate:8.3f} s {rate:14,.1f} MB/s  ({mb:,.1f} MB)")
        figures[key] = rate
        lookup = bench_time_lookup(directory, last_ts)
        print(f"{f'time lookup {size} segments:':<30}{lookup:8.2f} ms")
        shutil.rmtree(directory)
    figures["time_lookup_10000_segments_ms"] = lookup
    return figures


def main() -> None:
    args_parser = harness.parser(__doc__ or "", "smaller sizes (about a minute), the same keys")
    args_parser.add_argument("--dir", help="where to build the logs (default: a temporary directory)")
    args = args_parser.parse_args()
    raise_fd_limit()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        runs = []
        for n in range(args.rounds):
            runs.append(asyncio.run(one_round(root, args.quick)))
            print(f"-- round {n + 1} of {args.rounds} done")
        figures = harness.median(runs)
        print(harness.ratio_line("read 10000 / 100 segments", figures["read_10000_segments_mb_per_s"],
                                 figures["read_100_segments_mb_per_s"], 0.5))
        harness.emit({**figures, "quick": args.quick, "rounds": args.rounds})
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
