"""Benchmark of the embedded log: append, sequential read, reopen, read memory.

    python tests/benchmarks/bench_log.py [--quick] [--dir DIR]

Records of 16-byte keys and 100-byte values in batches of 1,000. The
baseline, measured in the same run, writes the same bytes with plain
buffered file writes. Last line: JSON with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from millpond.log import LogStore
from millpond.log.batch import Row

BATCH = 1_000
KEY_BYTES = 16
VALUE_BYTES = 100


def make_batches(records: int) -> list[list[Row]]:
    value = os.urandom(VALUE_BYTES)
    keys = [os.urandom(KEY_BYTES) for _ in range(BATCH)]
    now = int(time.time() * 1000)
    return [[Row(k, value, now + i, []) for k in keys] for i in range(records // BATCH)]


def bench_append(directory: Path, batches: list[list[Row]]) -> tuple[float, int]:
    store = LogStore(directory)
    partition = store.create_topic("bench", 1).partitions[0]
    started = time.perf_counter()
    for rows in batches:
        partition.append(rows)
    partition.flush(fsync=False)
    elapsed = time.perf_counter() - started
    size = partition.size_bytes
    store.close()
    return elapsed, size


def bench_read(directory: Path) -> tuple[float, int]:
    store = LogStore(directory)
    partition = store.partition("bench", 0)
    started = time.perf_counter()
    count, offset = 0, 0
    while True:
        result = partition.read(offset, 4 << 20)
        for batch in result.batches:
            for _ in batch.records():
                count += 1
        if result.next_offset == offset:
            break
        offset = result.next_offset
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed, count


def bench_baseline(directory: Path, total_bytes: int, batches: int) -> float:
    chunk = os.urandom(total_bytes // batches)
    path = directory / "baseline.bin"
    started = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(batches):
            f.write(chunk)
    elapsed = time.perf_counter() - started
    path.unlink()
    return elapsed


def fill(directory: Path, records: int, segment_bytes: int) -> None:
    """A partition of ``records`` records in many segments, written as fast as possible."""
    store = LogStore(directory)
    partition = store.create_topic("big", 1, {"segment.bytes": segment_bytes}).partitions[0]
    batch = make_batches(BATCH)[0]
    step = max(1, records // BATCH // 20)
    for i in range(records // BATCH):
        partition.append(batch)
        if i % step == 0:
            print(f"  filling: {i * BATCH:,} / {records:,} records", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    store.close()


READER = """
import sys
from millpond.log import LogStore
store = LogStore(sys.argv[1], writable=False)
partition = store.partition("big", 0)
limit = int(sys.argv[2])
offset, seen, count = 0, 0, 0
while seen < limit:
    result = partition.read(offset, 4 << 20)
    if not result.batches:
        break
    for batch in result.batches:
        seen += batch.header.size
        for _ in batch.records():
            count += 1
    offset = result.next_offset
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(int(hwm) / 1024, seen, count)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer records: a run under a minute")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    records = 200_000 if args.quick else 1_000_000
    big_records = 2_000_000 if args.quick else 10_000_000
    read_bytes = (256 if args.quick else 1024) << 20

    root = Path(args.dir or tempfile.mkdtemp(prefix="millpond-bench-"))
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        batches = make_batches(records)
        append_s, size = bench_append(root / "log", batches)
        read_s, count = bench_read(root / "log")
        assert count == records, f"read back {count} of {records} records"
        baseline_s = bench_baseline(root, size, len(batches))
        append_rate, read_rate, base_rate = records / append_s, records / read_s, records / baseline_s
        print(f"append:   {append_rate:>12,.0f} records/s  ({size / append_s / 1e6:,.0f} MB/s)")
        print(f"read:     {read_rate:>12,.0f} records/s  (CRC-32C checked, records decoded)")
        print(f"baseline: {base_rate:>12,.0f} records/s  (plain buffered writes of the same {size / 1e6:,.0f} MB)")
        print(f"ratio append/baseline: {append_rate / base_rate:.2f}")

        fill(root / "big", big_records, 32 << 20)
        started = time.perf_counter()
        store = LogStore(root / "big")
        end = store.partition("big", 0).log_end_offset
        reopen_s = time.perf_counter() - started
        segments = len(store.partition("big", 0).segments)
        store.close()
        assert end == big_records
        print(f"reopen:   {reopen_s:.3f} s after clean shutdown ({big_records:,} records, {segments} segments)")

        out = subprocess.run(
            [sys.executable, "-c", READER, str(root / "big"), str(read_bytes)],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        rss_mb, seen = float(out[0]), int(out[1])
        print(f"read RSS: {rss_mb:.0f} MB peak while reading {seen / 1e6:,.0f} MB")

        print(
            json.dumps(
                {
                    "append_records_per_s": round(append_rate),
                    "read_records_per_s": round(read_rate),
                    "baseline_write_records_per_s": round(base_rate),
                    "append_vs_baseline_ratio": round(append_rate / base_rate, 3),
                    "reopen_seconds": round(reopen_s, 4),
                    "reopen_records": big_records,
                    "read_peak_rss_mb": round(rss_mb, 1),
                    "read_bytes": seen,
                    "records": records,
                    "quick": args.quick,
                }
            )
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    main()
