"""Benchmark of the embedded log: append, sequential read, reopen, read memory.

    python tests/benchmarks/bench_log.py [--quick] [--rounds N] [--dir DIR]

Records of 16-byte keys and 100-byte values in batches of 1,000. The
baseline, measured in the same run, writes the same bytes with plain
buffered file writes. With ``--rounds`` the append/read and the baseline
swap places each round and each figure is the median. Last line: JSON with
the figures.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.log import LogStore  # noqa: E402
from millpond.log.batch import Row  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

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

    def append() -> None:
        for rows in batches:
            partition.append(rows)
        partition.flush(fsync=False)

    elapsed, _ = harness.timed(append)
    size = partition.size_bytes
    store.close()
    return elapsed, size


def bench_read(directory: Path) -> tuple[float, int]:
    store = LogStore(directory)
    partition = store.partition("bench", 0)

    def read() -> int:
        count, offset = 0, 0
        while True:
            result = partition.read(offset, 4 << 20)
            for batch in result.batches:
                for _ in batch.records():
                    count += 1
            if result.next_offset == offset:
                return count
            offset = result.next_offset

    elapsed, count = harness.timed(read)
    store.close()
    return elapsed, count


def bench_baseline(directory: Path, total_bytes: int, batches: int) -> float:
    chunk = os.urandom(total_bytes // batches)
    path = directory / "baseline.bin"

    def write() -> None:
        with open(path, "wb") as f:
            for _ in range(batches):
                f.write(chunk)

    elapsed, _ = harness.timed(write)
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


def one_round(root: Path, batches: list[list[Row]], records: int, round_no: int, size: int) -> dict[str, float]:
    """Append + read back, and the baseline writes of ``size`` bytes (what the log wrote in
    round 0, where the log goes first), in the round's order."""
    figures: dict[str, float] = {}
    log_dir = root / f"log{round_no}"

    def log() -> None:
        figures["append_s"], figures["size"] = bench_append(log_dir, batches)
        figures["read_s"], count = bench_read(log_dir)
        assert count == records, f"read back {count} of {records} records"

    def baseline() -> None:
        figures["baseline_s"] = bench_baseline(root, size or int(figures["size"]), len(batches))

    for step in harness.rotate([log, baseline], round_no):
        step()
    shutil.rmtree(log_dir, ignore_errors=True)
    return figures


def main() -> None:
    parser = harness.parser(__doc__ or "", quick="fewer records: a run under a minute")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    records = 200_000 if args.quick else 1_000_000
    big_records = 2_000_000 if args.quick else 10_000_000
    read_bytes = (256 if args.quick else 1024) << 20

    root = Path(args.dir or tempfile.mkdtemp(prefix="millpond-bench-"))
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        batches = make_batches(records)
        rounds = max(1, args.rounds)
        runs = [one_round(root, batches, records, 0, 0)]
        runs += [one_round(root, batches, records, n, int(runs[0]["size"])) for n in range(1, rounds)]
        r = harness.median(runs)
        append_s, read_s, baseline_s, size = r["append_s"], r["read_s"], r["baseline_s"], int(r["size"])
        append_rate, read_rate, base_rate = records / append_s, records / read_s, records / baseline_s
        print(f"{records:,} records, median of {rounds} round(s)")
        print(harness.rate_line("append", records, append_s, unit="records",
                                note=f"({size / append_s / 1e6:,.0f} MB/s)"))
        print(harness.rate_line("read", records, read_s, unit="records", note="(CRC-32C checked, records decoded)"))
        print(harness.rate_line("baseline", records, baseline_s, unit="records",
                                note=f"(plain buffered writes of the same {size / 1e6:,.0f} MB)"))
        print(harness.ratio_line("append/baseline", append_rate, base_rate))

        fill(root / "big", big_records, 32 << 20)
        reopen_s, store = harness.timed(LogStore, root / "big")
        end = store.partition("big", 0).log_end_offset
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

        harness.emit(
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
                    "rounds": rounds,
                }
        )
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    main()
