"""Kafka's own DumpLogSegments reads a millpond log and finds nothing wrong (issue 16).

Only the jars and Java are needed, not a broker: ``fetch_jars`` gives the classpath the
broker tests use. Every kind of topic is written: uncompressed, gzip, lz4 and zstd,
transactional with aborted and committed transactions, compacted, LogAppendTime; each
with batches of several records over several segments, so the indexes' offsets (a
batch's last offset, Kafka's semantics) are checked where they differ from its first.
Kafka also reads the ``.txnindex`` files: one entry per ABORT marker, in its segment.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from millpond.log import LogStore
from millpond.log.batch import Row
from millpond.log.cleaner import compact

from ..servers.common import server_unavailable
from ..servers.kafka import fetch_jars

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

SMALL = {"segment.bytes": 16384}
DAY = 86_400_000

# What DumpLogSegments prints about anything it finds wrong in a segment or an index.
TROUBLE = re.compile(r"mismatch|not found|out of order|invalid|isvalid: false|exception|error|corrupt|"
                     r"doesn't match|does not match", re.IGNORECASE)


def batch_rows(start: int, count: int, *, key_space: int | None = None) -> list[Row]:
    ts = 1_700_000_000_000
    return [Row(b"key-%d" % (i % key_space if key_space else i), b"value-%08d-" % i + b"x" * 80, ts + i, [])
            for i in range(start, start + count)]


def write_log(root: Path) -> LogStore:
    store = LogStore(root)
    for name, config in [
        ("plain", {}),
        ("gzipped", {"compression.type": "gzip"}),
        ("lz4", {"compression.type": "lz4"}),
        ("zstd", {"compression.type": "zstd"}),
        ("appended", {"message.timestamp.type": "LogAppendTime"}),
    ]:
        partition = store.create_topic(name, 1, {**SMALL, **config}).partitions[0]
        for i in range(0, 2000, 10):
            partition.append(batch_rows(i, 10))
    txn = store.create_topic("txn", 1, SMALL).partitions[0]
    for n in range(40):
        pid = 1000 + n % 3
        for part in range(3):
            txn.append(batch_rows(n * 30 + part * 10, 10), producer_id=pid, producer_epoch=0, transactional=True)
            txn.append(batch_rows(90_000 + n * 3 + part, 1))  # plain records between
        txn.append_control(pid, 0, commit=n % 4 != 0)
    compacted = store.create_topic("compacted", 1, {**SMALL, "cleanup.policy": "compact",
                                                    "delete.retention.ms": DAY}).partitions[0]
    for i in range(0, 3000, 10):
        compacted.append(batch_rows(i, 10, key_space=97))
    compacted.roll()
    assert compact(compacted, 1_700_000_010_000, force=True).first_dirty_offset > 0
    for partition in store.partitions():
        partition.flush()
    return store


def dump(libs: Path, files: list[Path], *flags: str) -> str:
    java = shutil.which("java")
    assert java is not None
    done = subprocess.run(
        [java, "-cp", f"{libs}/*", "kafka.tools.DumpLogSegments", *flags, "--files", ",".join(map(str, files))],
        capture_output=True, text=True, timeout=300,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-2000:]
    return out


def test_dump_log_segments_finds_nothing_wrong(tmp_path: Path) -> None:
    if shutil.which("java") is None:
        server_unavailable("DumpLogSegments", "java is not on the PATH")
    try:
        libs = fetch_jars()
    except RuntimeError as exc:
        server_unavailable("DumpLogSegments", str(exc))
    store = write_log(tmp_path / "log")
    store.close()
    root = tmp_path / "log" / "topics"
    logs = sorted(root.glob("*/*/*.log"))
    indexes = sorted(root.glob("*/*/*.index")) + sorted(root.glob("*/*/*.timeindex"))
    folders = {f"{p.parent.parent.name}-{p.parent.name}" for p in logs}
    assert folders == {f"{t}-0" for t in ("plain", "gzipped", "lz4", "zstd", "appended", "txn", "compacted")}
    assert len(logs) > 2 * len(folders)  # several segments each

    out = dump(libs, logs, "--deep-iteration")
    trouble = [line for line in out.splitlines() if TROUBLE.search(line)]
    assert not trouble, "\n".join(trouble[:20])
    assert out.count("Dumping ") == len(logs)
    assert "isTransactional: true" in out and "endTxnMarker: ABORT" in out and "endTxnMarker: COMMIT" in out
    assert "compresscodec: zstd" in out.lower() or "compresscodec: ZSTD" in out

    aborts = {int(m.group(1)) for m in re.finditer(r"\| offset: (\d+) .*endTxnMarker: ABORT", out)}
    assert len(aborts) == 10  # transactions 0, 4, ..., 36

    # every ABORT marker has its entry in the .txnindex of its own segment, which Kafka reads
    txn_indexes = sorted(root.glob("*/*/*.txnindex"))
    assert {p.parent.parent.name for p in txn_indexes} == {"txn"}
    out = dump(libs, txn_indexes)
    trouble = [line for line in out.splitlines() if TROUBLE.search(line)]
    assert not trouble, "\n".join(trouble[:20])
    bases = sorted(int(p.name[:-4]) for p in root.glob("txn/0/*.log"))
    entries = re.findall(r"Dumping .*/(\d+)\.txnindex|version: 0 producerId: (\d+) firstOffset: (\d+) "
                         r"lastOffset: (\d+) lastStableOffset: (\d+)", out)
    seen = set()
    base = -1
    for name, pid, first, last, lso in entries:
        if name:
            base = int(name)
            continue
        following = [b for b in bases if b > base]
        assert base <= int(last) < (following[0] if following else 1 << 62), (name, last)
        assert int(pid) in (1000, 1001, 1002) and int(first) < int(last) < int(lso)
        seen.add(int(last))
    assert seen == aborts

    out = dump(libs, indexes + txn_indexes, "--verify-index-only")
    trouble = [line for line in out.splitlines() if TROUBLE.search(line)]
    assert not trouble, "\n".join(trouble[:20])
    assert out.count("Dumping ") == len(indexes) + len(txn_indexes)
