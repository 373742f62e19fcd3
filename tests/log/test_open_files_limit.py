"""Open files stay bounded however many segments and partitions a log holds (issue 17): segments'
files are opened on demand through a bounded cache, and opening a log raises the process's soft
limit on open files to the hard one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_opening_a_store_raises_the_soft_limit(tmp_path: Path) -> None:
    # In a child process: the limit is the process's own, and this one's must stay as it is.
    soft, hard, low = (int(x) for x in run(f"""
        import resource
        from millpond.log import LogStore
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        store = LogStore({str(tmp_path / "log")!r})
        store.create_topic("t", 400)
        print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard, low)
        store.close()
    """).split())
    if hard > low:
        assert soft > low and soft >= min(hard, 1 << 20)


@pytest.mark.slow
def test_20000_segments_and_2000_partitions_under_a_limit_of_1024(tmp_path: Path) -> None:
    """The hard limit is 1,024 too, so nothing can be raised: only the cache keeps the count down."""
    out = run(f"""
        import os, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
        from millpond.log import LogStore, fsio
        from millpond.log.batch import Row
        from millpond.log.descriptors import descriptors
        # durability is not what is tested here: 20,000 rolls without their fsyncs take seconds, not minutes
        fsio.skip_fsyncs = frozenset({{"segment", "roll.dir", "checkpoint", "checkpoint.dir"}})
        directory = {str(tmp_path / "log")!r}
        peak = 0

        def note_peak():
            global peak
            peak = max(peak, len(os.listdir("/proc/self/fd")))

        def read_all(partition):
            offset, count = partition.log_start_offset, 0
            while True:
                result = partition.read(offset, 1 << 16)
                count += sum(b.header.last_offset_delta + 1 for b in result.batches)
                if result.next_offset == offset:
                    return count
                offset = result.next_offset

        store = LogStore(directory)
        wide = store.create_topic("wide", 1, {{"segment.bytes": 1024}}).partitions[0]
        n = 0
        while len(wide.segments) < 20_000:
            wide.append([Row(b"k%d" % n, b"v" * 300, 1_000_000 + n, [])])
            n += 1
            if n % 5000 == 0:
                note_peak()
        many = store.create_topic("many", 2_000)
        for partition in many.partitions:
            partition.append([Row(b"k", b"v", 1, [])])
        note_peak()
        store.close()

        for writable in (True, False):
            store = LogStore(directory, writable=writable)
            wide = store.partition("wide", 0)
            assert len(wide.segments) >= 20_000, len(wide.segments)
            assert read_all(wide) == n, (read_all(wide), n)
            assert wide.offset_for_time(1_000_000 + n - 5) == n - 5
            assert sum(read_all(p) for p in store.topic("many").partitions) == (2_000 if writable else 4_000)
            note_peak()
            if writable:
                wide.append([Row(b"k", b"v", 2_000_000, [])])
                for partition in store.topic("many").partitions:
                    partition.append([Row(b"k", b"v", 1, [])])
                n += 1
            store.close()
        print(peak, descriptors.limit)
    """)
    peak, limit = (int(x) for x in out.split())
    assert limit <= 256 and peak <= limit + 64, (peak, limit)


def test_a_reader_whose_closed_segments_were_replaced_reads_the_new_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only view's descriptor cache closed its segments; the writer's compaction then swapped
    files in under the same names (and deleted others): the reader notices (inode check), lists the
    folder afresh and reads the new files, never the old positions in new bytes."""
    from millpond.log import LogStore
    from millpond.log.batch import Row
    from millpond.log.cleaner import compact
    from millpond.log.descriptors import descriptors
    from millpond.log.partition import Partition

    from .conftest import read_all

    calls: list[bool] = []
    real = Partition._relist

    def relist(self: Partition, afresh: bool = False) -> None:
        calls.append(afresh)
        real(self, afresh)

    monkeypatch.setattr(Partition, "_relist", relist)

    writer = LogStore(tmp_path)
    partition = writer.create_topic("kv", 1, {"cleanup.policy": "compact", "segment.bytes": 2048}).partitions[0]
    latest: dict[bytes, bytes] = {}
    for n in range(400):
        key, value = b"k%d" % (n % 7), b"v%d" % n
        partition.append([Row(key, value, 1_000 + n, [])])
        latest[key] = value
    partition.roll()
    reader = LogStore(tmp_path, writable=False).partition("kv", 0)
    assert {r.key: r.value for r in read_all(reader)} == latest
    descriptors._close(descriptors._evict(0))  # the cache let go of every descriptor
    assert compact(partition, 10**13, force=True).records_removed > 300
    records = read_all(reader)
    assert {r.key: r.value for r in records} == latest
    assert len(records) < 50  # the cleaned segments, not the old ones
    assert True in calls  # it went through the descriptor cache's "replaced" path
    writer.close()
