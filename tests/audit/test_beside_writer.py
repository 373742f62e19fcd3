"""verify beside a process that keeps appending (and signing): every run is OK, and counts only grow;
after that process is killed -9, recovery and a new writer carry the chain on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from millpond.audit.checkpoints import Signer
from millpond.audit.verify import verify_topic
from millpond.backends.embedded import EmbeddedBackend
from millpond.log.store import LogStore
from millpond.records import Record

from .conftest import TOPIC, Keys

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from millpond.audit.checkpoints import Signer, load_private_key
    from millpond.backends.base import TopicSpec
    from millpond.backends.embedded import EmbeddedBackend
    from millpond.records import JsonRecords, Record

    async def main():
        backend = EmbeddedBackend(sys.argv[1])
        await backend.open()
        backend.enable_audit(Signer(load_private_key(sys.argv[2])), every_records=500, every_seconds=0.3)
        await backend.create_topic(TopicSpec("audit", 2, {"audit.chain": "sha256", "segment.bytes": 65536,
                                                          "compression.type": "zstd"}), exist_ok=True)
        producer = backend.producer()
        n = 0
        print("ready", flush=True)
        while True:
            size = 1 + n % 1500
            values = [b'{"n":%d,"pad":"%s"}' % (n + i, b"x" * (n % 50)) for i in range(size)]
            if n % 2:
                await producer.send_batch("audit", n % 2, JsonRecords("audit", [None] * size, values,
                                                                      [1000 + n] * size))
            else:
                await producer.send_batch("audit", 0, [Record(v, b"k", 1000 + n) for v in values])
            await producer.flush()
            n += size
            await asyncio.sleep(0)

    asyncio.run(main())
    """
)


def test_verify_beside_a_writer(tmp_path: Path, keys: Keys) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "log"), str(keys.private_file)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        seen = 0
        for _ in range(4):
            store = LogStore(tmp_path / "log", writable=False)
            try:
                report = verify_topic(store, TOPIC, public_key=keys.private.public_key())
            finally:
                store.close()
            assert report.ok, report.summary()
            assert report.counts()["records"] >= seen
            seen = report.counts()["records"]
            time.sleep(0.3)
        assert seen > 0 and report.counts()["checkpoints"] > 0
    finally:
        writer.kill()  # SIGKILL, most likely mid-append: recovery cuts the torn tail
        writer.wait()

    async def after_crash() -> None:
        backend = EmbeddedBackend(tmp_path / "log")
        await backend.open()
        backend.enable_audit(Signer(keys.private), every_records=500, every_seconds=60)
        producer = backend.producer()
        for partition in (0, 1):
            await producer.send_batch(TOPIC, partition, [Record(b"after", None, 5)] * 3)
            await producer.flush()
        await backend.close()

    asyncio.run(after_crash())
    store = LogStore(tmp_path / "log", writable=False)
    try:
        report = verify_topic(store, TOPIC, public_key=keys.private.public_key())
    finally:
        store.close()
    assert report.ok, report.summary()
    assert report.counts()["records"] >= seen + 6 and report.counts()["chained_not_signed"] == 0
