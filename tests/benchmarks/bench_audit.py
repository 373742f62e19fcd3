"""Benchmark of audit ingestion: five years of JSON audit events, zstd, with and without the hash chain.

    python tests/benchmarks/bench_audit.py [--quick] [--rounds N] [--dir DIR]

Events are JSON objects of about 300 bytes (actor, action, resource, address,
outcome, detail) with timestamps spread evenly, with jitter, over five years,
keyed by actor. They are appended through the embedded backend's producer in
flushes of 10,000 records, as columns (``JsonRecords``: the path of a source
that renders JSON itself), to two topics of the same settings (zstd, 64 MiB
segments, 3 partitions): one with ``audit.chain: sha256`` and signed
checkpoints every 1,000,000 records, one without. The two take turns flush by
flush (which goes first changes every flush and every round), so both run
under the same load from the rest of a shared machine; each is timed over its
appends, its final fsync and its close (the last checkpoints).

Figures:

- ``chain_overhead_ratio``: wall seconds to append with the chain / without
  (a ratio of times: 1.10 means 10% slower; target <= 1.15), the median over
  ``--rounds`` (default 3) of each round's ratio; each round's is in
  ``chain_overhead_ratio_per_round``. Also the same ratio of the process's CPU
  seconds (``chain_overhead_cpu_ratio``: the block's sha256 runs in a second
  thread beside the compression, so wall time hides it only where a second
  core is free; ``machine_busy`` says how busy both cores were meanwhile), and
  the wall ratio for Record objects instead of columns (a fifth as many
  records; ``chain_overhead_ratio_records``);
- ``verify_records_per_s``: ``verify_topic`` over the chained topic (every
  record cut into the canonical form and hashed, every checkpoint signature
  checked) on a read-only store, with ``jobs`` as many as there are CPUs, as
  ``millpond verify`` runs it by default (target >= 1,000,000): partitions in
  processes from ``PROCESSES_FROM_BYTES`` of log (512 MiB), in this one below
  it (both runs here: a pool would cost more to start than it gains); also
  ``verify_one_process_records_per_s`` (``--jobs 1``); each the median of
  three passes, taken in turns. ``verify_path`` says
  whether records were cut in C (``_canon``) or decoded as Record objects;
- ``time_seek_ms``: the median of ``offset_for_time`` for 200 random points in
  the five years (target < 10 ms);
- ``reopen_seconds``: opening the log after a clean shutdown (target < 0.5 s);
- ``bytes_per_record``: the chained topic's segment bytes / its records.

Full run: 5,000,000 records per topic; ``--quick``: 500,000 (under a minute).
Last line: JSON with the figures.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from millpond.audit.chain import canonical_in_c  # noqa: E402
from millpond.audit.checkpoints import Signer  # noqa: E402
from millpond.audit.verify import PROCESSES_FROM_BYTES, verify_topic  # noqa: E402
from millpond.backends.base import TopicSpec  # noqa: E402
from millpond.backends.embedded import EmbeddedBackend  # noqa: E402
from millpond.log.store import LogStore  # noqa: E402
from millpond.records import JsonRecords, Record  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

FLUSH = 10_000
VERIFY_RUNS = 3
PARTITIONS = 3
POOL = 100_000  # distinct events, cycled (each flush gets fresh timestamps)
YEARS_MS = 5 * 365 * 24 * 3600 * 1000
START_MS = 1_640_995_200_000  # 2022-01-01
SETTINGS = {"compression.type": "zstd", "segment.bytes": 64 << 20, "retention.ms": -1}
ACTIONS = ["user.login", "user.logout", "file.read", "file.write", "role.grant", "role.revoke", "key.rotate",
           "policy.change", "record.export", "session.expire"]


def make_pool(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    keys, values = [], []
    for i in range(POOL):
        actor = f"user{rng.randrange(5000):05d}"
        event = {
            "id": f"{rng.getrandbits(128):032x}",
            "actor": actor,
            "action": rng.choice(ACTIONS),
            "resource": f"/tenants/{rng.randrange(300)}/projects/{rng.randrange(2000)}/items/{rng.getrandbits(40):010x}",
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "outcome": "allow" if rng.random() < 0.93 else "deny",
            "user_agent": rng.choice(["cli/2.4.1", "web/2026.1 (Linux x86_64)", "sdk-python/1.9.0", "batch-job"]),
            "detail": f"request {i} via gateway eu-{rng.randrange(6)}; latency {rng.randrange(2000)} ms",
        }
        keys.append(actor.encode())
        values.append(orjson.dumps(event))
    return keys, values


def flushes(records: int) -> list[tuple[int, int]]:
    """(partition, first record number) of each flush; partitions take turns."""
    return [(n // FLUSH % PARTITIONS, n) for n in range(0, records, FLUSH)]


def columns(topic: str, first: int, count: int, total: int, keys: list[bytes], values: list[bytes],
            jitter: list[int]) -> JsonRecords:
    step = YEARS_MS // total
    at = first % POOL
    ks: list[bytes | None] = list(keys[at : at + count])
    vs: list[bytes | None] = list(values[at : at + count])
    if len(ks) < count:
        ks += keys[: count - len(ks)]
        vs += values[: count - len(vs)]
    base = START_MS + first * step
    stamps = [base + j * step + jitter[j % len(jitter)] for j in range(count)]
    return JsonRecords(topic, ks, vs, stamps)


def as_records(batch: JsonRecords) -> list[Record]:
    return [Record(v, k, t) for k, v, t in zip(batch.keys, batch.values, batch.timestamps)]


@dataclass
class Side:
    """One of the two topics appended to side by side, and the seconds its appends took so far."""

    chained: bool
    backend: EmbeddedBackend
    producer: Any
    topic: str
    wall: float = 0.0
    cpu: float = 0.0


async def open_side(directory: Path, chained: bool, key: Ed25519PrivateKey) -> Side:
    shutil.rmtree(directory, ignore_errors=True)
    backend = EmbeddedBackend(directory)
    await backend.open()
    if chained:
        backend.enable_audit(Signer(key), every_records=1_000_000, every_seconds=3600)
    topic = "audit" if chained else "plain"
    settings = {**SETTINGS, **({"audit.chain": "sha256"} if chained else {})}
    await backend.create_topic(TopicSpec(topic, PARTITIONS, settings))
    return Side(chained, backend, backend.producer(), topic)


async def timed_on(side: Side, step: Awaitable[None]) -> None:
    """Await ``step``, adding its wall and process CPU seconds to the side's (the hash thread
    included: an append waits for its block's hash)."""
    began, cpu = time.perf_counter(), time.process_time()
    await step
    side.wall += time.perf_counter() - began
    side.cpu += time.process_time() - cpu


async def send(side: Side, partition: int, batch: Any) -> None:
    await side.producer.send_batch(side.topic, partition, batch)
    await side.producer.flush()


async def append_side_by_side(root: Path, suffix: str, records: int, keys: list[bytes], values: list[bytes],
                              jitter: list[int], key: Ed25519PrivateKey, round_no: int, *,
                              as_objects: bool = False) -> dict[bool, Side]:
    """The same ``records`` appended to both topics, flush by flush in turns, then both logs closed.

    Taking turns per flush (which side goes first changes every flush and every round) puts both
    sides under the same load from the rest of the machine: run one after the other, a side could
    get a quiet stretch the other did not (runs of 1.02 and 1.46 on one shared machine). Each flush's
    batch is built for both sides before either is timed, and the garbage collector is off while
    they append (collected between flushes, untimed), so neither pays for the other's garbage.
    """
    sides = {chained: await open_side(root / (("chained" if chained else "plain") + suffix), chained, key)
             for chained in (True, False)}
    gc.collect()
    gc.disable()
    try:
        for i, (partition, first) in enumerate(flushes(records)):
            count = min(FLUSH, records - first)
            batches: dict[bool, Any] = {}
            for chained, side in sides.items():
                batch = columns(side.topic, first, count, records, keys, values, jitter)
                batches[chained] = as_records(batch) if as_objects else batch
            for chained in harness.rotate([True, False], round_no + i):
                await timed_on(sides[chained], send(sides[chained], partition, batches.pop(chained)))
            if i % 50 == 49:
                gc.collect()
        for chained in harness.rotate([True, False], round_no):  # the final fsyncs, the last checkpoints
            backend = sides[chained].backend
            await timed_on(sides[chained], backend.flush())
            await timed_on(sides[chained], backend.close())
    finally:
        gc.enable()
    return sides


def one_round(root: Path, records: int, keys: list[bytes], values: list[bytes], jitter: list[int],
              key: Ed25519PrivateKey, round_no: int) -> dict[str, float]:
    """Columns with and without the chain (``records``), then Record objects (a fifth as many)."""
    figures: dict[str, float] = {}
    for as_objects in (False, True):
        count = records // 5 if as_objects else records
        suffix = "-objects" if as_objects else ""
        sides = asyncio.run(append_side_by_side(root, suffix, count, keys, values, jitter, key, round_no,
                                                as_objects=as_objects))
        for chained, side in sides.items():
            name = ("audit" if chained else "plain") + ("_objects" if as_objects else "")
            figures[f"{name}_s"], figures[f"{name}_cpu_s"] = side.wall, side.cpu
        name = "overhead" + ("_objects" if as_objects else "")
        figures[name] = sides[True].wall / sides[False].wall
        figures[f"{name}_cpu"] = sides[True].cpu / sides[False].cpu
        if as_objects:
            shutil.rmtree(root / "chained-objects", ignore_errors=True)
            shutil.rmtree(root / "plain-objects", ignore_errors=True)
    return figures


def main() -> None:
    parser = harness.parser(__doc__ or "", quick="500,000 records instead of 5,000,000: a run under a minute",
                            rounds=3)
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    args = parser.parse_args()
    records = 500_000 if args.quick else 5_000_000
    rng = random.Random(14)
    root = Path(args.dir or tempfile.mkdtemp(prefix="millpond-bench-audit-"))
    try:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"load {os.getloadavg()[0]:.1f}")
        keys, values = make_pool(rng)
        jitter = [rng.randrange(-(YEARS_MS // records) // 2 + 1, (YEARS_MS // records) // 2) for _ in range(9973)]
        mean_value = statistics.fmean(map(len, values))
        key = Ed25519PrivateKey.generate()
        rounds = max(1, args.rounds)
        # warm up (imports, allocator, the hash thread): not measured
        asyncio.run(append_side_by_side(root, "-warm", 50_000, keys, values, jitter, key, 0))
        shutil.rmtree(root / "chained-warm")
        shutil.rmtree(root / "plain-warm")
        busy = harness.MachineBusy()
        runs = [one_round(root, records, keys, values, jitter, key, n) for n in range(rounds)]
        machine_busy = busy.fraction()
        r = harness.median(runs)
        chained_s, plain_s = r["audit_s"], r["plain_s"]
        print(f"{records:,} events of {mean_value:.0f} B mean over five years, zstd, {PARTITIONS} partitions, "
              f"median of {rounds} round(s)")
        print(harness.rate_line("append with chain", records, chained_s, unit="records"))
        print(harness.rate_line("append without", records, plain_s, unit="records"))
        # each round's ratio is of two sides timed under the same load; the median of those ratios
        overhead, cpu_overhead, objects_overhead = r["overhead"], r["overhead_cpu"], r["overhead_objects"]
        print(f"chain overhead (wall time with / wall time without): {overhead:.3f} (target <= 1.15: "
              f"{'met' if overhead <= 1.15 else 'NOT met'}); CPU time with / without: {cpu_overhead:.3f}")
        per_round = ", ".join(f"{run['overhead']:.3f}" for run in runs)
        print(f"  wall ratio per round (with and without taking turns flush by flush): {per_round}; both cores "
              f"{machine_busy:.0%} busy meanwhile (this process and the others)")
        print(f"chain overhead with Record objects ({records // 5:,} records, the path of a pipeline with "
              f"transforms): {objects_overhead:.3f}")

        reopen_s, store = harness.timed(LogStore, root / "chained")
        try:
            print(f"reopen:   {reopen_s:.3f} s after clean shutdown")
            topic = store.topic("audit")
            size = sum(p.size_bytes for p in topic.partitions)
            jobs = os.cpu_count() or 1
            times: dict[int, list[float]] = {jobs: [], 1: []}


            def check(n: int) -> Any:
                return verify_topic(store, "audit", public_key=key.public_key(), jobs=n)

            for _ in range(VERIFY_RUNS):  # alternating, the median of each: one pass is under a second here
                for n in times:
                    seconds, report = harness.timed(check, n)
                    assert report.ok, report.summary()
                    assert report.counts()["records"] == records and report.counts()["proven"] == records, \
                        report.counts()
                    times[n].append(seconds)
            verify_s, verify1_s = statistics.median(times[jobs]), statistics.median(times[1])
            how = (f"{jobs} processes" if jobs > 1 and size >= PROCESSES_FROM_BYTES else "one process")
            print(harness.rate_line("verify", records, verify_s, unit="records",
                                    note=f"({report.counts()['checkpoints']} checkpoints, all records proven, "
                                    f"--jobs {jobs}: {how}, records cut {'in C' if canonical_in_c() else 'in Python'}, "
                                    f"median of {VERIFY_RUNS})"))
            print(harness.rate_line("verify, one process", records, verify1_s, unit="records"))
            seeks = []
            for _ in range(200):
                moment = START_MS + rng.randrange(YEARS_MS)
                partition = topic.partitions[rng.randrange(PARTITIONS)]
                seconds, offset = harness.timed(partition.offset_for_time, moment)
                assert offset is None or offset >= 0
                seeks.append(seconds * 1000)
            seek_ms = statistics.median(seeks)
            print(f"seek:     {seek_ms:.2f} ms median, {max(seeks):.2f} ms max (offset_for_time, 200 points)")
        finally:
            store.close()
        per_record = size / records
        print(f"on disk:  {size / 1e6:,.1f} MB, {per_record:.1f} B per record ({mean_value:.0f} B JSON each)")
        print(f"load after: {os.getloadavg()[0]:.1f} (2 cores shared: figures move with it)")
        harness.emit({
            "chain_overhead_ratio": round(overhead, 3),
            "chain_overhead_cpu_ratio": round(cpu_overhead, 3),
            "chain_overhead_ratio_records": round(objects_overhead, 3),
            "chain_overhead_ratio_per_round": [round(run["overhead"], 3) for run in runs],
            "machine_busy": round(machine_busy, 2),
            "verify_records_per_s": round(records / verify_s),
            "verify_one_process_records_per_s": round(records / verify1_s),
            "verify_path": "C" if canonical_in_c() else "python",
            "time_seek_ms": round(seek_ms, 3),
            "reopen_seconds": round(reopen_s, 4),
            "bytes_per_record": round(per_record, 1),
            "append_chained_records_per_s": round(records / chained_s),
            "append_plain_records_per_s": round(records / plain_s),
            "records": records,
            "value_bytes_mean": round(mean_value, 1),
            "quick": args.quick,
            "rounds": rounds,
        })
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
