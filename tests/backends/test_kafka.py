"""The Kafka backend against a real broker: topics, keyed partitioning, transactions,
groups, and the quickstart pipeline running on Kafka with only its ``log:`` block changed.

Every test uses its own topic, group and transactional id names, so tests share one
broker without seeing each other. Waits are on conditions with generous deadlines.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from millpond.backends import open_backend
from millpond.backends.base import IsolationLevel, TopicSpec
from millpond.backends.kafka import AiokafkaLogFilter, KafkaBackend, KafkaConsumer
from millpond.cli import main
from millpond.config import LogConfig, load_pipeline
from millpond.errors import ConfigError, MillpondError, TopicExistsError, TransactionError, UnknownTopicError
from millpond.records import JsonRecords, Record, TopicPartition, partition_for_key
from millpond.runtime import run_pipeline
from millpond.runtime.source_offsets import SOURCE_OFFSETS_TOPIC, read_source_offset

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 60.0
#: A quickstart run takes seconds; past this it is stopped (SIGINT) and the test fails.
PIPELINE_LIMIT_S = 300.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def with_backend(bootstrap: str, body: Callable[[KafkaBackend], Awaitable[None]]) -> None:
    async def go() -> None:
        backend = open_backend(LogConfig.model_validate({"kafka": {"bootstrap_servers": bootstrap}}))
        assert isinstance(backend, KafkaBackend)
        await backend.open()
        try:
            await asyncio.wait_for(body(backend), 180)
        finally:
            await backend.close()

    asyncio.run(go())


async def read_to_end(backend: KafkaBackend, consumer: KafkaConsumer, *, committed: bool) -> list[Record]:
    """Poll until every partition's position reaches its end as the broker reports it
    (the last stable offset for read_committed, the high watermark otherwise)."""
    out: list[Record] = []
    deadline = time.monotonic() + DEADLINE_S
    topics = sorted({tp.topic for tp in consumer.assignment()})
    while True:
        out.extend(await consumer.poll(timeout=0.5))
        ends = {TopicPartition(i.topic, i.partition): i.last_stable_offset if committed else i.log_end_offset
                for t in topics for i in await backend.describe_topic(t)}
        if all([await consumer.position(tp) >= end for tp, end in ends.items()]):
            return out
        assert time.monotonic() < deadline, f"consumer did not reach {ends}"


async def settled(backend: KafkaBackend, topic: str) -> None:
    """Wait until every partition's transaction markers are written (last stable offset == end)."""
    deadline = time.monotonic() + DEADLINE_S
    while any(i.last_stable_offset != i.log_end_offset for i in await backend.describe_topic(topic)):
        assert time.monotonic() < deadline, f"open transactions on {topic} did not settle"
        await asyncio.sleep(0.05)


def test_client_settings_are_checked_and_an_unreachable_cluster_is_named(kafka_bootstrap: str) -> None:
    backend = KafkaBackend(kafka_bootstrap, config={"request_timeout_ms": 20_000, "replication_factor": 1})
    assert backend.client_kwargs(AIOKafkaAdminClient)["request_timeout_ms"] == 20_000
    assert backend.replication_factor == 1
    assert "replication_factor" not in backend.client_kwargs(AIOKafkaAdminClient)
    with pytest.raises(ConfigError, match="no_such_setting"):
        KafkaBackend(kafka_bootstrap, config={"no_such_setting": 1})
    with pytest.raises(ConfigError, match="isolation_level"):
        KafkaBackend(kafka_bootstrap, config={"isolation_level": "read_uncommitted"})

    from tests.servers.common import free_port

    nowhere = f"127.0.0.1:{free_port()}"
    with pytest.raises(MillpondError, match=nowhere):
        asyncio.run(asyncio.wait_for(KafkaBackend(nowhere).open(), 120))


def test_topics_are_created_with_settings_described_and_deleted(kafka_bootstrap: str) -> None:
    name = unique("topics")

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 3, {"retention.ms": 604800000, "cleanup.policy": "delete"}))
        assert name in await backend.list_topics()
        assert await backend.partitions_for(name) == 3
        infos = await backend.describe_topic(name)
        assert [(i.partition, i.log_start_offset, i.log_end_offset, i.last_stable_offset) for i in infos] == [
            (0, 0, 0, 0), (1, 0, 0, 0), (2, 0, 0, 0)]
        with pytest.raises(TopicExistsError, match=name):
            await backend.create_topic(TopicSpec(name, 3))
        await backend.create_topic(TopicSpec(name, 3), exist_ok=True)

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
            settings = {entry[0]: entry[1] for entry in response.resources[0][4]}
        finally:
            await admin.close()
        assert settings["retention.ms"] == "604800000"

        await backend.delete_topic(name)
        assert name not in await backend.list_topics()
        with pytest.raises(UnknownTopicError, match=name):
            await backend.describe_topic(name)
        with pytest.raises(UnknownTopicError, match=name):
            await backend.delete_topic(name)
        with pytest.raises(UnknownTopicError, match=name):
            backend.consumer([name])
        # Looking a topic up must not create it (brokers default to auto.create.topics.enable=true,
        # with 1 partition): the name is still free for a topic of our own.
        with pytest.raises(UnknownTopicError, match=name):
            await backend.partitions_for(name)
        await backend.create_topic(TopicSpec(name, 5))
        assert await backend.partitions_for(name) == 5
        await backend.delete_topic(name)

    with_backend(kafka_bootstrap, body)


def test_declared_settings_are_applied_to_an_existing_topic(kafka_bootstrap: str) -> None:
    name = unique("alter")

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 2, {"retention.ms": 604800000}))
        assert await backend.topic_settings(name) == {"retention.ms": "604800000"}
        changed = await backend.alter_topic(TopicSpec(name, 2, {"cleanup.policy": "compact", "segment.bytes": 1 << 20}))
        assert changed == {"cleanup.policy": (None, "compact"), "retention.ms": ("604800000", None),
                           "segment.bytes": (None, "1048576")}
        assert await backend.topic_settings(name) == {"cleanup.policy": "compact", "segment.bytes": "1048576"}
        assert await backend.alter_topic(TopicSpec(name, 2, {"cleanup.policy": "compact", "segment.bytes": 1 << 20})) == {}
        with pytest.raises(ConfigError, match="has 2 partitions"):
            await backend.alter_topic(TopicSpec(name, 3))
        with pytest.raises(ConfigError, match="retention.msx"):
            await backend.alter_topic(TopicSpec(name, 2, {"retention.msx": 1}))
        with pytest.raises(UnknownTopicError, match="nothere"):
            await backend.topic_settings(unique("nothere"))

    with_backend(kafka_bootstrap, body)


def test_source_offsets_topic_keeps_its_name_and_is_compacted(kafka_bootstrap: str) -> None:
    """The runtime's double-underscore checkpoint topic is an ordinary compacted topic on Kafka."""
    key = unique("connector")

    async def body(backend: KafkaBackend) -> None:
        from millpond.runtime.source_offsets import encode_offset, ensure_source_offsets_topic

        await ensure_source_offsets_topic(backend)
        await ensure_source_offsets_topic(backend)  # exist_ok
        assert SOURCE_OFFSETS_TOPIC in await backend.list_topics()
        producer = backend.producer(transactional_id=unique("txn"))
        try:
            for n in (1, 2):
                await producer.begin()
                await producer.send(SOURCE_OFFSETS_TOPIC, encode_offset(key, {"line": n}, 0))
                await producer.commit()
        finally:
            await producer.close()
        await settled(backend, SOURCE_OFFSETS_TOPIC)
        assert await read_source_offset(backend, key) == {"line": 2}
        assert await read_source_offset(backend, unique("nobody")) is None

        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, SOURCE_OFFSETS_TOPIC)])
            settings = {entry[0]: entry[1] for entry in response.resources[0][4]}
        finally:
            await admin.close()
        assert settings["cleanup.policy"] == "compact"

    with_backend(kafka_bootstrap, body)


def test_keyed_records_round_trip_on_the_partitions_the_embedded_log_picks(kafka_bootstrap: str) -> None:
    name = unique("keys")
    keys = [f"key-{n}".encode() for n in range(40)] + [b"foobar", b"21", b"abc"]

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 4))
        producer = backend.producer()
        try:
            for key in keys:
                await producer.send(name, Record(b"v:" + key, key, 1_600_000_000_000, [("h", b"x"), ("n", None)]))
            # records held as columns (what the CDC source hands over) go out like any others
            await producer.send_batch(name, 2, JsonRecords(name, [None] * 5, [b"batch-%d" % n for n in range(5)],
                                                           [1_650_000_000_000] * 5))
            await producer.flush()
        finally:
            await producer.close()
        consumer = backend.consumer([name], None, IsolationLevel.read_uncommitted)
        try:
            records = await read_to_end(backend, consumer, committed=False)
        finally:
            await consumer.close()
        keyed = {r.key: r for r in records if r.key is not None}
        assert set(keyed) == set(keys)
        for key, r in keyed.items():
            # the embedded log's partitioner, i.e. Kafka's toPositive(murmur2) % n
            assert r.partition == partition_for_key(key, 4), key
            assert (r.topic, r.value, r.timestamp, r.headers) == (name, b"v:" + key, 1_600_000_000_000,
                                                                  [("h", b"x"), ("n", None)])
        assert keyed[b"foobar"].partition == (-790332482 & 0x7FFFFFFF) % 4
        batch = [r for r in records if r.key is None]
        assert [(r.partition, r.value) for r in batch] == [(2, b"batch-%d" % n) for n in range(5)]
        assert [r.offset for r in batch] == sorted(r.offset for r in batch)

        tp2 = TopicPartition(name, 2)
        assert await backend.offset_for_time(tp2, 1_620_000_000_000) == batch[0].offset
        assert await backend.offset_for_time(tp2, 1_700_000_000_000) is None

    with_backend(kafka_bootstrap, body)


def test_transactions_commit_records_with_offsets_and_aborts_stay_hidden(kafka_bootstrap: str) -> None:
    name, group, txn = unique("txn-topic"), unique("txn-group"), unique("txn")
    tp = TopicPartition(name, 0)

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 1))
        producer = backend.producer(transactional_id=txn)
        try:
            await producer.begin()
            await producer.send_batch(name, 0, [Record(b"committed-%d" % n) for n in range(3)])
            await producer.send_offsets(group, {tp: 3})
            await producer.commit()

            await producer.begin()
            await producer.send_batch(name, 0, [Record(b"aborted-%d" % n) for n in range(2)])
            await producer.send_offsets(group, {tp: 99})
            await producer.abort()

            await producer.begin()
            await producer.send(name, Record(b"after"))
            await producer.commit()
        finally:
            await producer.close()
        await settled(backend, name)
        # offsets sent in a transaction become readable once its marker reaches __consumer_offsets
        deadline = time.monotonic() + DEADLINE_S
        while not (committed := await backend.committed(group)):
            assert time.monotonic() < deadline, f"group {group} shows no committed offsets"
            await asyncio.sleep(0.05)
        assert committed == {tp: 3}  # the aborted send_offsets did not count

        values = {}
        for level in IsolationLevel:
            consumer = backend.consumer([name], None, level)
            try:
                values[level] = [r.value for r in await read_to_end(backend, consumer, committed=True)]
            finally:
                await consumer.close()
        assert values[IsolationLevel.read_committed] == [b"committed-0", b"committed-1", b"committed-2", b"after"]
        assert values[IsolationLevel.read_uncommitted] == [
            b"committed-0", b"committed-1", b"committed-2", b"aborted-0", b"aborted-1", b"after"]

        # a second producer with the same transactional id fences the first
        old, new = backend.producer(transactional_id=txn), backend.producer(transactional_id=txn)
        try:
            await old.begin()
            await old.send(name, Record(b"zombie"))
            await new.begin()  # starting registers the id again, bumping the epoch
            with pytest.raises(TransactionError, match="fenced"):
                await old.commit()
        finally:
            await new.abort()
            await new.close()
            await old.close()  # a fenced producer closes without trying to abort
        with pytest.raises(TransactionError, match="fenced"):
            await old.begin()

    with_backend(kafka_bootstrap, body)


def test_group_offsets_lag_and_reset(kafka_bootstrap: str) -> None:
    name, group = unique("group-topic"), unique("group")

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 2))
        producer = backend.producer()
        try:
            await producer.send_batch(name, 0, [Record(b"a%d" % n) for n in range(5)])
            await producer.send_batch(name, 1, [Record(b"b%d" % n) for n in range(3)])
            await producer.flush()
        finally:
            await producer.close()
        tp0, tp1 = TopicPartition(name, 0), TopicPartition(name, 1)

        consumer = backend.consumer([name], group)
        try:
            assert consumer.assignment() == {tp0, tp1}
            assert await consumer.position(tp0) == 0  # no committed offset: reset to earliest
            await consumer.commit({tp0: 2, tp1: 3})
        finally:
            await consumer.close()
        assert group in await backend.list_groups()
        assert await backend.committed(group) == {tp0: 2, tp1: 3}
        lag = {g.topic_partition: (g.committed, g.log_end_offset, g.lag) for g in await backend.describe_group(group)}
        assert lag == {tp0: (2, 5, 3), tp1: (3, 3, 0)}

        await backend.reset_offsets(group, {tp0: 0, tp1: 1})
        assert await backend.committed(group) == {tp0: 0, tp1: 1}
        assert sum(g.lag for g in await backend.describe_group(group)) == 7

        resumed = backend.consumer([name], group)
        try:
            assert await resumed.position(tp1) == 1  # a new member starts from the committed offsets
            values = sorted(r.value for r in await read_to_end(backend, resumed, committed=False))
        finally:
            await resumed.close()
        assert values == sorted([b"a%d" % n for n in range(5)] + [b"b1", b"b2"])

        with pytest.raises(TransactionError):
            await backend.consumer([name]).commit({tp0: 1})

        # a deleted topic drops out of the description, and describing does not re-create it
        await backend.delete_topic(name)
        assert await backend.describe_group(group) == []
        await backend.create_topic(TopicSpec(name, 3))
        assert await backend.partitions_for(name) == 3

    with_backend(kafka_bootstrap, body)


def test_quickstart_pipeline_runs_on_kafka_exactly_once(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """configs/quickstart.yaml with only its ``log:`` block switched to Kafka (plus names made
    unique, since the broker is shared): every input line reaches the output exactly once,
    a second run moves nothing, and an appended line moves alone."""
    import shutil

    shutil.copytree(REPO / "configs" / "quickstart-input", tmp_path / "configs" / "quickstart-input")
    suffix = uuid.uuid4().hex[:8]
    text = (REPO / "configs" / "quickstart.yaml").read_text()
    edits = {
        "  embedded: {dir: ./data/quickstart}": f"  kafka: {{bootstrap_servers: '{kafka_bootstrap}'}}",
        "name: lines": f"name: lines-{suffix}",
        "topic: lines": f"topic: lines-{suffix}",
        "topics: [lines]": f"topics: [lines-{suffix}]",
        "name: tail": f"name: tail-{suffix}",
        "name: out": f"name: out-{suffix}",
    }
    for old, new in edits.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp_path / "quickstart.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    config = load_pipeline(tmp_path / "quickstart.yaml")
    assert config.log.kafka is not None and config.log.embedded is None

    def outputs() -> list[str]:
        return [line for f in sorted((tmp_path / "out").iterdir()) for line in f.read_text().splitlines()]

    inputs = [line for f in sorted((tmp_path / "configs" / "quickstart-input").iterdir())
              for line in f.read_text().splitlines()]
    assert len(inputs) > 100

    def run_bounded() -> None:
        # A stuck run is stopped like Ctrl-C would (the worker finishes what it holds): the test
        # then fails on its assertions instead of hanging the suite.
        timer = threading.Timer(PIPELINE_LIMIT_S, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            run_pipeline(config, until_idle=True)
        finally:
            timer.cancel()

    run_bounded()
    assert sorted(outputs()) == sorted(inputs)
    assert len(set(outputs())) == len(set(inputs))

    run_bounded()  # the checkpoint in __source_offsets holds: nothing is doubled
    assert sorted(outputs()) == sorted(inputs)

    new_line = f"appended {suffix}"
    with open(tmp_path / "configs" / "quickstart-input" / "app.log", "a") as f:
        f.write(new_line + "\n")
    run_bounded()
    assert sorted(outputs()) == sorted([*inputs, new_line])

    async def lag(backend: KafkaBackend) -> None:
        rows = await backend.describe_group(f"out-{suffix}")
        assert {g.topic_partition.partition for g in rows} == {0, 1, 2}
        assert sum(g.lag for g in rows) == 0
        assert sum(g.log_end_offset for g in rows) >= len(inputs) + 1

    with_backend(kafka_bootstrap, lag)


def test_topics_describe_shows_the_brokers_sizes(kafka_bootstrap: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Sizes come from the broker's DescribeLogDirs: 0 for an empty partition, the batches' bytes after writes."""
    name = unique("sizes")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"log: {{kafka: {{bootstrap_servers: '{kafka_bootstrap}'}}}}\n")

    async def body(backend: KafkaBackend) -> None:
        await backend.create_topic(TopicSpec(name, 2))
        assert [i.size_bytes for i in await backend.describe_topic(name)] == [0, 0]
        producer = backend.producer()
        for i in range(200):
            await producer.send(name, Record(value=b"x" * 1000, key=None, timestamp=1), 0)
        await producer.flush()
        await producer.close()
        deadline = time.monotonic() + DEADLINE_S
        while (sizes := [i.size_bytes for i in await backend.describe_topic(name)])[0] == 0:
            assert time.monotonic() < deadline, "the broker never reported the partition's size"
            await asyncio.sleep(0.2)
        # 200 values of 1000 bytes, plus batch and record headers; partition 1 is empty
        assert 200_000 < sizes[0] < 230_000 and sizes[1] == 0

    with_backend(kafka_bootstrap, body)
    code = main(["topics", "describe", name, "-c", str(pipeline)])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows[1][0] == "0" and rows[1][-2:] == ["KiB", "-"]  # about 200 KiB, no segment count
    assert rows[2][0] == "1" and rows[2][-3:] == ["0", "B", "-"]
    assert rows[-1][0] == "total" and rows[-1][-2] == "KiB" and rows[-1][-1] == "-"


def test_unreachable_broker_is_one_warning_and_back_is_another(kafka_bootstrap: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """aiokafka's own error about an unreachable broker puts the backend in the 'unreachable' state with
    one WARNING; it asks the (live) broker until it answers and says once that it is back."""
    caplog.set_level(logging.WARNING)

    async def body(backend: KafkaBackend) -> None:
        aiokafka_log = logging.getLogger("aiokafka")
        for _ in range(50):  # what aiokafka logs while the broker is gone, many times a second
            aiokafka_log.error("Unable connect to node with id %s: %s", 1, "Connection refused")
        assert backend.unreachable_since is not None
        deadline = time.monotonic() + DEADLINE_S
        while backend.unreachable_since is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)

    with_backend(kafka_bootstrap, body)
    ours = [r.getMessage() for r in caplog.records if r.name == "millpond.backends.kafka"]
    assert len(ours) == 2
    assert ours[0].startswith(f"the Kafka log at {kafka_bootstrap} is unreachable (Unable connect to node with id 1")
    assert ours[1].startswith(f"the Kafka log at {kafka_bootstrap} is reachable again")
    theirs = [r for r in caplog.records if r.name == "aiokafka"]
    assert len(theirs) == 1  # the other 49 held back


def test_aiokafka_log_filter_passes_each_message_once_per_interval() -> None:
    now = [0.0]
    flt = AiokafkaLogFilter(interval=30.0, clock=lambda: now[0])

    def record(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, ("n",), None)

    assert flt.filter(record("Unable connect to node %s"))
    assert not any(flt.filter(record("Unable connect to node %s")) for _ in range(84))
    assert flt.filter(record("Failed fetch messages from %s"))  # another message has its own budget
    assert flt.filter(record("debug detail %s", logging.DEBUG))  # below WARNING: untouched
    now[0] = 31.0
    again = record("Unable connect to node %s")
    assert flt.filter(again) and again.getMessage() == "Unable connect to node n (84 more like this in the last 30 s not shown)"


def test_cli_produce_is_one_transaction_and_consume_prints_text(kafka_bootstrap: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    name = unique("cli")
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"log: {{kafka: {{bootstrap_servers: '{kafka_bootstrap}'}}}}\n")
    assert main(["topics", "create", name, "-p", "2", "-c", str(pipeline)]) == 0

    def produce(data: bytes, *argv: str) -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        code = main(["produce", name, "-c", str(pipeline), *argv])
        return code, capsys.readouterr().err

    code, err = produce(b"a:1\nb:NULL\nbroken\n", "--key-separator", ":", "--null-marker", "NULL")
    assert code == 1 and "line 3: no key separator ':'; nothing was written" in err
    code, err = produce(b"a:1\nb:NULL\n", "--key-separator", ":", "--null-marker", "NULL")
    assert code == 0 and "2 records" in err
    assert main(["consume", name, "--from-beginning", "--print-key", "-c", str(pipeline)]) == 0
    out, err = capsys.readouterr()
    assert sorted(out.splitlines()) == ["a\t1", "b\tnull"] and "2 records, stopped at the end of the log" in err
