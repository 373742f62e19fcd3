"""kill -9 of a writing process at random moments, then reopen."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from millpond.log import LogStore

from .conftest import read_all

WRITER = textwrap.dedent(
    """
    import os, sys
    from millpond.log import LogStore
    from millpond.log.batch import Row
    store = LogStore(sys.argv[1])
    topic = store.topics.get("t") or store.create_topic("t", 1, {"segment.bytes": 65536})
    partition = topic.partitions[0]
    pad = b"p" * 90
    while True:
        start = partition.log_end_offset
        n = 1 + start % 97
        partition.append([Row(None, b"%012d" % i + pad, None, []) for i in range(start, start + n)])
        if start % 7 == 0:
            partition.flush(fsync=False)
        print(partition.log_end_offset, flush=True)
    """
)


def test_kill_9_mid_append_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    rng = random.Random(7)
    acknowledged = 0
    for round_ in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the topic exists and one batch is in
        assert first, "the writer died before its first append"
        time.sleep(rng.random() * 0.4)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        lines = (first + out).split()
        if lines:
            acknowledged = max(acknowledged, int(lines[-1]))
        store = LogStore(tmp_path)
        partition = store.partition("t", 0)
        records = read_all(partition)
        got = [int(r.value[:12]) for r in records]
        # every record is whole and in order, nothing acknowledged is missing
        assert got == list(range(len(got))), f"round {round_}: gap or duplicate"
        assert [r.offset for r in records] == got
        assert len(got) >= acknowledged, f"round {round_}: lost acknowledged records"
        store.close()
    assert acknowledged > 1000
