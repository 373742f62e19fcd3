"""The audit chain on a real Apache Kafka broker: written by the producer path, checked by ``millpond verify``.

The module starts a broker of its own (not the session's shared one): the tampering
tests stop it, edit its partition folder as an attacker with file access would
(a value changed with the batch CRC recomputed, a tail cut after a signed
checkpoint), and start it again on the same data.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.structs import TopicPartition as KafkaTP

from millpond.audit.chain import CHAIN_HEADER, Link, link_of
from millpond.audit.checkpoints import CHECKPOINT_TOPIC, Checkpoint, Signer
from millpond.audit.kafka import enable_kafka_audit, split_settings
from millpond.audit.verify import BATCH_INSERTED, CHECKPOINT_MISMATCH, EDITED, RECORDS_INSERTED, TAIL_CUT
from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.backends.kafka import KafkaBackend
from millpond.cli import main
from millpond.errors import ConfigError
from millpond.log import batch as batch_format
from millpond.log.store import LogStore
from millpond.records import Record
from tests.servers.common import server_unavailable
from tests.servers.kafka import (
    KAFKA_VERSION,
    KafkaServer,
    _metadata_ok,
    fetch_jars,
    start_kafka,
    stop_kafka,
)

from .conftest import Keys, event, recompute_crc

BLOCKS = [7, 5, 9, 4, 6]  # 31 records


@dataclass
class Broker:
    server: KafkaServer
    data_dir: Path
    libs: Path

    @property
    def bootstrap(self) -> str:
        return self.server.bootstrap

    def partition_dir(self, topic: str, partition: int = 0) -> Path:
        return self.data_dir / "log" / f"{topic}-{partition}"

    def stop(self) -> None:
        stop_kafka(self.server)

    def start(self) -> None:
        """The same node on the same data (no format): what a restart after maintenance does."""
        assert self.server.log is not None
        java = ["java", "-Xms128m", "-Xmx512m", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}", "-cp", f"{self.libs}/*"]
        with self.server.log.open("ab") as out:
            self.server.proc = subprocess.Popen([*java, "kafka.Kafka", str(self.data_dir / "server.properties")],
                                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while not asyncio.run(_metadata_ok(self.bootstrap)):
            assert self.server.proc.poll() is None, f"kafka.Kafka exited with code {self.server.proc.returncode}"
            assert time.monotonic() < deadline, "the broker did not come back within 120 s"
            time.sleep(0.5)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    if shutil.which("java") is None:
        server_unavailable("Apache Kafka", "java is not on the PATH")
    data_dir = tmp_path_factory.mktemp("kafka-audit")
    try:
        libs = fetch_jars()
        server = start_kafka(libs, data_dir)
    except Exception as exc:  # noqa: BLE001 - reported through the CI rule
        server_unavailable("Apache Kafka", f"Kafka {KAFKA_VERSION} for the audit tests: {exc}")
        raise  # unreachable: server_unavailable always raises
    broker = Broker(server, data_dir, libs)
    try:
        yield broker
    finally:
        broker.stop()


def pipeline_file(tmp_path: Path, broker: Broker, keys: Keys, topic: str, topic_config: str = "") -> Path:
    """A pipeline with ``log: kafka`` that tails a JSON-lines file into a chained topic, signing checkpoints."""
    (tmp_path / "in").mkdir(exist_ok=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: audit-{topic}
        log: {{kafka: {{bootstrap_servers: '{broker.bootstrap}'}}}}
        audit: {{signing_key_file: '{keys.private_file}', checkpoint_records: 20}}
        topics:
          - name: {topic}
            partitions: 1
            config: {{audit.chain: sha256, retention.ms: -1{topic_config}}}
        connectors:
          - name: tail-{topic}
            kind: source
            type: file
            topic: {topic}
            config: {{path: "{tmp_path}/in/*.jsonl", format: json}}
            converter: {{value: json}}
            guarantee: exactly_once
    """))
    return path


def verify(capsys: pytest.CaptureFixture[str], pipeline: Path, keys: Keys, topic: str) -> tuple[int, str]:
    code = main(["verify", topic, "-c", str(pipeline), "--public-key", str(keys.public_file)])
    out, err = capsys.readouterr()
    return code, out + err


async def open_backend(broker: Broker, keys: Keys | None, topic: str, *, every_records: int = 1000) -> KafkaBackend:
    backend = KafkaBackend(broker.bootstrap)
    await backend.open()
    await backend.create_topic(TopicSpec(topic, 1, {"audit.chain": "sha256"}), exist_ok=True)
    if keys is not None:
        await enable_kafka_audit(backend, Signer(keys.private), every_records=every_records, every_seconds=3600)
    return backend


async def write_blocks(backend: KafkaBackend, topic: str, start: int, blocks: Sequence[int]) -> int:
    """One send_batch per block (a source task's chunk), flushed; returns the next event number."""
    producer = backend.producer()
    i = start
    try:
        for size in blocks:
            await producer.send_batch(topic, 0, [event(n) for n in range(i, i + size)])
            await producer.flush()
            i += size
    finally:
        await producer.close()
    return i


async def read_all(bootstrap: str, topic: str) -> list[object]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        from aiokafka.structs import TopicPartition

        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[object] = []
        while await consumer.position(tp) < end:
            for rows in (await consumer.getmany(timeout_ms=1000)).values():
                out.extend(rows)
        return out
    finally:
        await consumer.stop()


def _broken(code: int, out: str, topic: str, kind: str) -> str:
    assert code == 3, out
    line = out.strip().splitlines()[-1]
    assert line.startswith(f"{topic}-0: {kind} at offset "), line
    return line


# -- settings (no broker) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("config", "message"), [
    ({"audit.chain": "md5"}, "audit.chain is 'md5'; it takes none or sha256"),
    ({"audit.chain": "sha256", "cleanup.policy": "compact,delete"}, "needs cleanup.policy delete"),
    ({"audit.chain": "sha256", "message.timestamp.type": "LogAppendTime"}, "needs message.timestamp.type CreateTime"),
])
def test_settings_kafka_would_break_the_chain_with_are_refused(config: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        split_settings("t", config)


def test_audit_chain_stays_on_millponds_side() -> None:
    assert split_settings("t", {"audit.chain": "sha256", "retention.ms": -1}) == ({"retention.ms": -1}, "sha256")
    assert split_settings("t", {"retention.ms": 5}) == ({"retention.ms": 5}, "none")


# -- intact ---------------------------------------------------------------------------------------------------


@pytest.mark.kafka
def test_a_pipeline_on_kafka_writes_a_chain_that_verifies(tmp_path: Path, broker: Broker, keys: Keys,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    topic = "audit-pipeline"
    # the broker recompresses what the producer sent: the chain is over records, not their framing
    pipeline = pipeline_file(tmp_path, broker, keys, topic, ", compression.type: zstd")
    (tmp_path / "in" / "a.jsonl").write_text("".join(f'{{"seq":{i},"action":"file.read"}}\n' for i in range(50)))
    # one run each: --until-idle waits for the source-task group's first answer (a fresh group on a fresh
    # broker) before it can call the pipeline idle
    assert main(["run", str(pipeline), "--until-idle"]) == 0
    assert len(asyncio.run(read_all(broker.bootstrap, topic))) == 50
    (tmp_path / "in" / "b.jsonl").write_text("".join(f'{{"seq":{i},"action":"user.login"}}\n' for i in range(30)))
    assert main(["run", str(pipeline), "--until-idle"]) == 0  # a later run continues the chain from the tail
    capsys.readouterr()

    records = asyncio.run(read_all(broker.bootstrap, topic))
    assert len(records) == 80
    links = [Link.decode(v) for r in records for k, v in r.headers if k == CHAIN_HEADER]  # type: ignore[attr-defined]
    assert len(links) >= 2 and links[-1].seq == 80 and records[-1].headers  # type: ignore[attr-defined]
    assert all(a.hash == b.prev for a, b in zip(links, links[1:]))  # one chain across both runs
    [segment] = broker.partition_dir(topic).glob("*.log")
    data = segment.read_bytes()
    assert {h.attributes & 0x07 for _, h in batch_format.walk(data, 0, len(data)) if not h.is_control} == {4}  # zstd
    code, out = verify(capsys, pipeline, keys, topic)
    assert code == 0, out
    assert f"OK {topic}: 80 records in {len(links)} blocks, 80 proven by " in out, out
    assert any(link.seq == 50 for link in links)  # the first run's last block ends where the second begins


@pytest.mark.kafka
def test_transactions_aborts_and_single_sends_stay_one_chain(tmp_path: Path, broker: Broker, keys: Keys,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """An aborted transaction's block stays in the log (read_uncommitted) and in the chain; records given
    to ``send`` become one block per partition at commit/flush; each producer starts from the tail."""
    topic = "audit-txn"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys, topic)
        try:
            txn = backend.producer("audit-txn-writer")
            try:
                await txn.begin()
                await txn.send_batch(topic, 0, [event(i) for i in range(5)])
                await txn.commit()
                await txn.begin()
                await txn.send_batch(topic, 0, [event(i) for i in range(5, 9)])
                await txn.abort()  # the state is read back from the tail at the next send
                await txn.begin()
                for i in range(9, 12):
                    await txn.send(topic, event(i), 0)
                await txn.commit()
            finally:
                await txn.close()
            plain = backend.producer()
            try:
                for i in range(12, 14):
                    await plain.send(topic, event(i))  # the partitioner picks (one partition here)
                await plain.flush()
            finally:
                await plain.close()
        finally:
            await backend.close()

    asyncio.run(write())
    records = asyncio.run(read_all(broker.bootstrap, topic))
    assert [r.offset for r in records if r.headers] == [4, 9, 13, 16]  # type: ignore[attr-defined]  # markers between
    signed = [Checkpoint.from_json(r.value) for r in asyncio.run(read_all(broker.bootstrap, CHECKPOINT_TOPIC))
              if r.key == f"{topic}/0".encode()]  # type: ignore[attr-defined]
    assert [(c.offset, c.seq) for c in signed] == [(13, 12), (16, 14)]  # each producer's close: its last block
    code, out = verify(capsys, pipeline, keys, topic)
    assert code == 0, out
    assert f"OK {topic}: 14 records in 4 blocks, 14 proven by 2 signed checkpoint(s)" in out, out


@pytest.mark.kafka
def test_a_long_chunk_is_cut_into_blocks_of_one_batch_each(tmp_path: Path, broker: Broker, keys: Keys,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A chunk larger than a Kafka batch becomes several blocks, one batch each: a log start moved to
    any batch (retention deletes whole segments, which roll between batches) starts on a whole block."""
    topic = "audit-long"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys, topic)
        try:
            await write_blocks(backend, topic, 0, [600])  # about 60 KB: several 16 KiB batches
        finally:
            await backend.close()

    asyncio.run(write())
    [segment] = broker.partition_dir(topic).glob("*.log")
    data = segment.read_bytes()
    batches = [h for _, h in batch_format.walk(data, 0, len(data))]
    assert len(batches) >= 3
    for at, header in batch_format.walk(data, 0, len(data)):
        marks = [link_of(r.headers) is not None for r in batch_format.iter_records(data[at : at + header.size])]
        assert marks == [False] * (len(marks) - 1) + [True]
    code, out = verify(capsys, pipeline, keys, topic)
    assert code == 0 and f"OK {topic}: 600 records in {len(batches)} blocks, 600 proven by 1 " in out, out

    async def delete_before(offset: int) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({KafkaTP(topic, 0): RecordsToDelete(offset)})
        finally:
            await admin.close()

    asyncio.run(delete_before(batches[2].base_offset))  # as retention would: whole batches gone
    code, out = verify(capsys, pipeline, keys, topic)
    kept = 600 - batches[2].base_offset
    assert code == 0 and f"OK {topic}: {kept} records in {len(batches) - 2} blocks, {kept} proven by 1 " in out, out


@pytest.mark.kafka
def test_with_no_header_left_the_chain_carries_on_from_the_last_checkpoint(tmp_path: Path, broker: Broker,
                                                                          keys: Keys,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Every record deleted (retention of an idle topic, or DeleteRecords): the next producer continues
    from the last signed checkpoint, so the old checkpoints still fit the chain and anchor it."""
    topic = "audit-emptied"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write(start: int, blocks: list[int]) -> None:
        backend = await open_backend(broker, keys, topic)
        try:
            await write_blocks(backend, topic, start, blocks)
        finally:
            await backend.close()

    async def delete_all() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_records({KafkaTP(topic, 0): RecordsToDelete(-1)})  # -1: the high watermark
        finally:
            await admin.close()

    asyncio.run(write(0, BLOCKS))  # a checkpoint at close: seq 31
    asyncio.run(delete_all())
    asyncio.run(write(31, [4, 6]))
    records = asyncio.run(read_all(broker.bootstrap, topic))
    assert [r.offset for r in records] == list(range(31, 41))  # type: ignore[attr-defined]
    assert Link.decode(link_of(records[3].headers)).seq == 35  # type: ignore[attr-defined]
    code, out = verify(capsys, pipeline, keys, topic)
    assert code == 0 and f"OK {topic}: 10 records in 2 blocks, 10 proven by 1 signed checkpoint(s)" in out, out


# -- tampering ------------------------------------------------------------------------------------------------


def _edit_in_segment(folder: Path, old: bytes, new: bytes) -> int:
    """Replace bytes inside one batch of the partition's segment and recompute its CRC; the batch's base offset."""
    [log_file] = sorted(folder.glob("*.log"))
    data = bytearray(log_file.read_bytes())
    for at, header in batch_format.walk(data, 0, len(data)):
        batch = data[at : at + header.size]
        found = batch.find(old)
        if found >= 0:
            batch[found : found + len(old)] = new
            recompute_crc(batch)
            data[at : at + header.size] = batch
            log_file.write_bytes(bytes(data))
            return header.base_offset
    raise AssertionError(f"{old!r} not in {log_file}")


@pytest.mark.kafka
def test_an_edited_value_with_its_crc_recomputed_is_found_on_kafka(tmp_path: Path, broker: Broker, keys: Keys,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    topic = "audit-edit"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys, topic, every_records=10)
        try:
            await write_blocks(backend, topic, 0, BLOCKS)
        finally:
            await backend.close()

    asyncio.run(write())
    assert verify(capsys, pipeline, keys, topic)[0] == 0
    broker.stop()
    try:
        # event 14 is in the third block (offsets 12..20); the value is edited, the CRC made to match
        base = _edit_in_segment(broker.partition_dir(topic), b'"seq":14,', b'"seq":41,')
    finally:
        broker.start()
    assert base == 12
    line = _broken(*verify(capsys, pipeline, keys, topic), topic, EDITED)
    assert line.startswith(f"{topic}-0: {EDITED} at offset 12 (kafka:{topic}-0)"), line
    assert "block offsets 12..20" in line


@pytest.mark.kafka
def test_a_tail_cut_after_a_signed_checkpoint_is_found_on_kafka(tmp_path: Path, broker: Broker, keys: Keys,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    topic = "audit-cut"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys, topic)
        try:
            await write_blocks(backend, topic, 0, BLOCKS)  # one checkpoint at close, over all 31
        finally:
            await backend.close()

    asyncio.run(write())
    assert verify(capsys, pipeline, keys, topic)[0] == 0
    broker.stop()
    try:
        folder = broker.partition_dir(topic)
        [log_file] = sorted(folder.glob("*.log"))
        data = log_file.read_bytes()
        batches = list(batch_format.walk(data, 0, len(data)))
        at, last = batches[-1]
        assert last.base_offset == 25  # the last block, one batch
        os.truncate(log_file, at)
        for index in (*folder.glob("*.index"), *folder.glob("*.timeindex")):
            index.unlink()
    finally:
        broker.start()
    line = _broken(*verify(capsys, pipeline, keys, topic), topic, TAIL_CUT)
    assert line.startswith(f"{topic}-0: {TAIL_CUT} at offset 25 "), line
    assert "a checkpoint signed seq 31" in line and "after seq 25" in line


@pytest.mark.kafka
def test_a_record_inserted_by_a_plain_producer_is_found_on_kafka(tmp_path: Path, broker: Broker, keys: Keys,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    topic = "audit-insert"
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys, topic)
        producer = backend.producer()
        plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await plain.start()
        try:
            await producer.send_batch(topic, 0, [event(i) for i in range(6)])
            await producer.flush()
            # another writer, without the chain, between two blocks of the audit producer
            await plain.send_and_wait(topic, b'{"action":"forged"}', b"intruder", 0, 1_700_000_000_000)
            await producer.send_batch(topic, 0, [event(i) for i in range(6, 10)])
            await producer.flush()
        finally:
            await plain.stop()
            await producer.close()
            await backend.close()

    asyncio.run(write())
    line = _broken(*verify(capsys, pipeline, keys, topic), topic, RECORDS_INSERTED)
    assert line.startswith(f"{topic}-0: {RECORDS_INSERTED} at offset 6 "), line
    assert "the block holds 5 records, its header says 4" in line


@pytest.mark.kafka
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_a_second_chained_writer_forks_the_chain_and_verify_reports_it(
        tmp_path: Path, broker: Broker, keys: Keys, capsys: pytest.CaptureFixture[str], signed: bool) -> None:
    """The single-writer assumption of millpond.audit.kafka: two producers on one partition fork the chain.
    Unsigned, the stale block is an inserted batch; signed, the forking writer's own checkpoint (seq 11)
    lands inside the other branch's block and is reported first."""
    topic = f"audit-fork-{signed}".lower()
    pipeline = pipeline_file(tmp_path, broker, keys, topic)

    async def write() -> None:
        backend = await open_backend(broker, keys if signed else None, topic)
        first, second = backend.producer(), backend.producer()
        try:
            await first.send_batch(topic, 0, [event(i) for i in range(7)])
            await first.flush()
            await second.send_batch(topic, 0, [event(i) for i in range(7, 12)])  # loads the tail: seq 7
            await second.flush()
            await first.send_batch(topic, 0, [event(i) for i in range(12, 16)])  # still at seq 7: a fork
            await first.flush()
        finally:
            await first.close()  # signed: a checkpoint of its branch, seq 11 at offset 15
            await second.close()
            await backend.close()

    asyncio.run(write())
    code, out = verify(capsys, pipeline, keys, topic)
    if signed:
        line = _broken(code, out, topic, CHECKPOINT_MISMATCH)
        assert line.startswith(f"{topic}-0: {CHECKPOINT_MISMATCH} at offset 7 "), line
        assert "a checkpoint signed seq 11 at offset 15, inside this block" in line
    else:
        line = _broken(code, out, topic, BATCH_INSERTED)
        assert line.startswith(f"{topic}-0: {BATCH_INSERTED} at offset 12 "), line
        assert "continues the chain as it was at seq 7, but 5 records came between" in line


# -- a copy from the embedded log ---------------------------------------------------------------------------


def _bytes(view: Any) -> bytes | None:
    return None if view is None else bytes(view)


@pytest.mark.kafka
def test_a_topic_copied_from_the_embedded_log_verifies_on_kafka(tmp_path: Path, broker: Broker, keys: Keys,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Records (key, value, timestamp, headers) and checkpoints copied one by one, re-batched by a plain
    producer: the chain is over records, so the copy verifies against the embedded log's signatures."""
    topic = "audit-copied"

    async def write_embedded() -> None:
        backend = EmbeddedBackend(tmp_path / "log")
        await backend.open()
        backend.enable_audit(Signer(keys.private), every_records=10, every_seconds=3600)
        await backend.create_topic(TopicSpec(topic, 1, {"audit.chain": "sha256"}))
        producer = backend.producer()
        for n, size in enumerate(BLOCKS):
            for i in range(size):
                headers: list[tuple[str, bytes | None]] = [("trace", b"t%d" % i), ("empty", None)] if n == 2 else []
                await producer.send(topic, Record(b'{"n":%d}' % i, b"k%d" % i if i % 3 else None,
                                                  1_600_000_000_000 + n * 10_000 + i, headers), 0)
            await producer.flush()
        await backend.close()

    asyncio.run(write_embedded())
    code = main(["verify", topic, "--log", str(tmp_path / "log"), "--public-key", str(keys.public_file)])
    assert code == 0, capsys.readouterr()

    store = LogStore(tmp_path / "log", writable=False)
    try:
        def rows(name: str) -> list[Any]:
            partition = store.partition(name, 0)
            data = partition.read(partition.log_start_offset, 1 << 20)
            return [r for b in data.batches for r in batch_format.iter_records(b.data)]

        data_rows, checkpoint_rows = rows(topic), rows(CHECKPOINT_TOPIC)
    finally:
        store.close()
    assert len(data_rows) == sum(BLOCKS)
    copied = [r for r in checkpoint_rows if bytes(r.key).startswith(f"{topic}/".encode())]
    assert len(copied) >= 3 and all(Checkpoint.from_json(r.value).signed_by(keys.private.public_key())
                                    for r in copied)

    async def copy() -> None:
        backend = KafkaBackend(broker.bootstrap)
        await backend.open()
        try:  # a topic made on Kafka by hand: the copier needs no millpond setting
            await backend.create_topic(TopicSpec(topic, 1, {}))
            await backend.create_topic(TopicSpec(CHECKPOINT_TOPIC, 1, {"retention.ms": -1}), exist_ok=True)
        finally:
            await backend.close()
        plain = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=5)
        await plain.start()
        try:
            for r in data_rows:
                await plain.send(topic, _bytes(r.value), _bytes(r.key), 0, r.timestamp,
                                 [(k, _bytes(v)) for k, v in r.headers] or None)
            for r in copied:
                await plain.send(CHECKPOINT_TOPIC, _bytes(r.value), _bytes(r.key), 0, r.timestamp)
            await plain.flush()
        finally:
            await plain.stop()

    asyncio.run(copy())
    pipeline = tmp_path / "kafka.yaml"
    pipeline.write_text(f"log: {{kafka: {{bootstrap_servers: '{broker.bootstrap}'}}}}\n")
    code, out = verify(capsys, pipeline, keys, topic)
    assert code == 0, out
    assert f"OK {topic}: 31 records in 5 blocks, 31 proven by {len(copied)} signed checkpoint(s)" in out, out
