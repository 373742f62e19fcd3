"""Runtime task loops against the in-memory fake backend (unit tests of the runtime's own logic)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from millpond.config import PipelineConfig
from millpond.errors import ConfigError, DeliveryGuaranteeError, RecordError
from millpond.records import TopicPartition
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.policy import H_CONNECTOR, H_ERROR, H_OFFSET, H_PARTITION, H_STAGE, H_TOPIC
from millpond.runtime.scheduler import PipelineJobs
from millpond.runtime.source_offsets import SOURCE_OFFSETS_TOPIC, read_source_offset
from millpond.runtime.worker import Worker

from .fakes import FakeBackend
from .memory_connectors import ListSource, MemorySink


def pipeline(values: list[Any], *, source: dict[str, Any] | None = None, sink: dict[str, Any] | None = None,
             partitions: int = 1) -> PipelineConfig:
    src: dict[str, Any] = {"name": "src", "kind": "source", "type": "test-list", "topic": "t",
                           "config": {"values": values}, "converter": {"key": "string", "value": "json"},
                           "guarantee": "exactly_once"}
    dst: dict[str, Any] = {"name": "dst", "kind": "sink", "type": "test-memory", "topics": ["t"],
                           "converter": {"key": "string", "value": "json"}}
    src.update(source or {})
    dst.update(sink or {})
    return PipelineConfig.model_validate({
        "name": "unit",
        "log": {"embedded": {"dir": "/nonexistent"}},
        "topics": [{"name": "t", "partitions": partitions}],
        "connectors": [src, dst],
    })


def fast_options() -> RuntimeOptions:
    o = RuntimeOptions(idle_seconds=0.1, backoff_initial_s=0.01, backoff_max_s=0.05, install_signal_handlers=False)
    o.sink_limits.poll_timeout_s = 0.01
    o.sink_limits.idle_flush_s = 0.02
    o.source_limits.idle_poll_s = 0.01
    return o


def run(config: PipelineConfig, backend: FakeBackend, options: RuntimeOptions | None = None) -> None:
    asyncio.run(asyncio.wait_for(
        run_pipeline_async(config, until_idle=True, options=options or fast_options(), backend=backend), 30))


def test_records_flow_source_to_sink_exactly_once() -> None:
    backend = FakeBackend()
    values = [{"n": i} for i in range(25)]
    run(pipeline(values), backend)
    assert [json.loads(v) for v in backend.values("t")] == values  # type: ignore[arg-type]
    assert [r.value for r in MemorySink.durable["dst"]] == values
    # the group's committed offset reached the log end: lag 0
    (group_offset,) = asyncio.run(backend.describe_group("dst"))
    assert group_offset.lag == 0
    # the checkpoint travelled with the records
    assert asyncio.run(read_source_offset(backend, "src")) == {"next": 25}


def test_source_resumes_after_its_committed_offset() -> None:
    backend = FakeBackend()
    run(pipeline([1, 2, 3, 4, 5]), backend)
    run(pipeline([1, 2, 3, 4, 5, 6, 7, 8]), backend)
    assert ListSource.started_with == [None, {"next": 5}]
    assert [json.loads(v) for v in backend.values("t")] == [1, 2, 3, 4, 5, 6, 7, 8]  # type: ignore[arg-type]
    # the sink group resumed too: each record written once
    assert [r.value for r in MemorySink.durable["dst"]] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_failed_commit_restarts_task_without_loss_or_duplicates(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend(fail_commits=3)
    values = list(range(40))
    with caplog.at_level(logging.WARNING, logger="millpond.runtime"):
        run(pipeline(values, source={"config": {"values": values, "batch": 3}}), backend)
    assert [json.loads(v) for v in backend.values("t")] == values  # type: ignore[arg-type]
    assert [r.value for r in MemorySink.durable["dst"]] == values
    assert sum("restart #" in m for m in caplog.messages) == 3
    assert "injected commit failure" in caplog.text


def test_keyed_records_land_in_the_kafka_partition_of_their_key() -> None:
    from millpond.records import partition_for_key

    backend = FakeBackend()
    values = [f"v{i}" for i in range(30)]
    run(pipeline(values, source={"config": {"values": values, "keyed": True},
                                 "converter": {"key": "string", "value": "string"}},
                 sink={"converter": {"key": "string", "value": "string"}}, partitions=4), backend)
    for tp, entries in backend.logs.items():
        if tp.topic != "t":
            continue
        for r in entries:
            if r is not None:
                assert partition_for_key(r.key, 4) == tp.partition
    assert sorted(r.value for r in MemorySink.durable["dst"]) == sorted(values)


def test_records_a_source_encoded_go_to_the_log_as_they_are() -> None:
    from millpond.records import partition_for_key

    backend = FakeBackend()
    values = [{"n": i, "s": "é"} for i in range(30)]
    json_both = {"converter": {"key": "json", "value": "json"}}
    run(pipeline(values, source={"config": {"values": values, "keyed": True, "encoded": True, "batch": 7},
                                 **json_both}, sink=json_both, partitions=3), backend)
    logged = [r for tp, entries in backend.logs.items() if tp.topic == "t" for r in entries if r is not None]
    assert sorted(r.value for r in logged) == sorted(json.dumps(v).encode() for v in values)  # bytes untouched
    for tp, entries in backend.logs.items():
        for r in entries:
            if tp.topic == "t" and r is not None:
                assert partition_for_key(r.key, 3) == tp.partition
    assert sorted(r.value["n"] for r in MemorySink.durable["dst"]) == list(range(30))
    assert asyncio.run(read_source_offset(backend, "src")) == {"next": 30}


def test_encoded_records_are_decoded_for_transforms() -> None:
    backend = FakeBackend()
    values = [{"n": i, "secret": "x"} for i in range(5)]
    run(pipeline(values, source={"config": {"values": values, "encoded": True},
                                 "transforms": [{"type": "drop", "config": {"fields": ["secret"]}}]}), backend)
    assert [json.loads(v) for v in backend.values("t")] == [{"n": i} for i in range(5)]  # type: ignore[arg-type]


def test_sink_own_offsets_win_over_group_offsets() -> None:
    backend = FakeBackend()
    run(pipeline([1, 2, 3], sink={"config": {"own_offsets": True}}), backend)
    # the store says it holds only up to offset 1 (e.g. a group commit raced ahead elsewhere)
    MemorySink.offsets["dst"] = {TopicPartition("t", 0): 1}
    MemorySink.durable["dst"] = []
    run(pipeline([1, 2, 3], sink={"config": {"own_offsets": True}}), backend)
    assert [r.value for r in MemorySink.durable["dst"]] == [2, 3]


def test_guarantee_stronger_than_offered_is_refused() -> None:
    backend = FakeBackend()
    config = pipeline([1], source={"type": "test-weak", "guarantee": "exactly_once"})
    with pytest.raises(DeliveryGuaranteeError) as info:
        run(config, backend)
    message = str(info.value)
    assert "src" in message and "exactly_once" in message and "at_least_once" in message
    assert backend.topics == {}  # refused before touching the log


def test_terminal_error_stops_pipeline_with_its_message() -> None:
    backend = FakeBackend()
    with pytest.raises(ConfigError, match="told to fail"):
        run(pipeline([1], source={"config": {"values": [1], "fail_on_start": True}}), backend)


# -- error policies on undecodable records ------------------------------------------------


def raw_pipeline(policy: dict[str, Any]) -> PipelineConfig:
    """The source writes plain strings; the sink reads them as JSON, so 'oops' cannot be decoded."""
    values = ["1", "2", "oops", "4"]
    return pipeline(values,
                    source={"config": {"values": values}, "converter": {"key": "string", "value": "string"}},
                    sink={"errors": policy})


def test_policy_fail_stops_and_names_the_record() -> None:
    backend = FakeBackend()
    with pytest.raises(RecordError) as info:
        run(raw_pipeline({"policy": "fail"}), backend)
    message = str(info.value)
    assert "'dst'" in message and "partition 0 offset 2" in message and "not valid JSON" in message


def test_policy_skip_logs_where_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    with caplog.at_level(logging.WARNING, logger="millpond.runtime.errors"):
        run(raw_pipeline({"policy": "skip"}), backend)
    assert [r.value for r in MemorySink.durable["dst"]] == [1, 2, 4]
    assert "skipped record at topic 't' partition 0 offset 2" in caplog.text
    # skipped records still count as consumed: the group is not stuck behind them
    assert asyncio.run(backend.committed("dst"))[TopicPartition("t", 0)] == len(backend.logs[TopicPartition("t", 0)])


def test_policy_dead_letter_keeps_the_record_with_error_headers() -> None:
    backend = FakeBackend()
    run(raw_pipeline({"policy": "dead_letter", "topic": "t-dlq"}), backend)
    assert [r.value for r in MemorySink.durable["dst"]] == [1, 2, 4]
    (dead,) = [r for r in backend.logs[TopicPartition("t-dlq", 0)] if r is not None]
    assert dead.value == b"oops"
    headers = dict(dead.headers)
    assert headers[H_CONNECTOR] == b"dst"
    assert headers[H_TOPIC] == b"t" and headers[H_PARTITION] == b"0" and headers[H_OFFSET] == b"2"
    assert headers[H_STAGE] == b"convert"
    assert b"not valid JSON" in headers[H_ERROR]  # type: ignore[operator]


def test_write_error_isolates_the_one_bad_record() -> None:
    backend = FakeBackend()
    values = ["a", "b", "bad", "c"]
    config = pipeline(values, source={"config": {"values": values, "batch": 4}},
                      sink={"config": {"reject": ["bad"]}, "errors": {"policy": "dead_letter", "topic": "dlq"}})
    run(config, backend)
    assert [r.value for r in MemorySink.durable["dst"]] == ["a", "b", "c"]
    assert backend.values("dlq") == [b'"bad"']


def test_source_side_dead_letter_goes_in_the_same_transaction() -> None:
    backend = FakeBackend()
    values = ["x", b"\xff-not-json-bytes", "y"]
    # bytes converter on the source refuses str values: each str is dead-lettered, the bytes pass
    config = pipeline(values, source={"config": {"values": values, "batch": 3},
                                      "converter": {"key": "string", "value": "bytes"},
                                      "errors": {"policy": "dead_letter", "topic": "src-dlq"}},
                      sink={"converter": {"key": "string", "value": "bytes"}})
    run(config, backend)
    assert backend.values("t") == [b"\xff-not-json-bytes"]
    assert backend.values("src-dlq") == [b"x", b"y"]


def test_scheduler_jobs_call_backend_retention_and_request_flushes() -> None:
    backend = FakeBackend()

    async def go() -> None:
        jobs = PipelineJobs(backend, [])
        await jobs.retention()
        await jobs.compaction()
        await jobs.progress()

    asyncio.run(go())
    assert (backend.retention_runs, backend.compaction_runs) == (1, 1)


def test_the_first_progress_line_has_the_rate_of_its_first_interval(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    config = pipeline([1])
    worker = Worker(config, backend)
    jobs = PipelineJobs(backend, worker.tasks)
    worker.tasks[0].records_out = 500  # the source moved records before the first progress line
    with caplog.at_level(logging.INFO, logger="millpond.runtime.scheduler"):
        asyncio.run(jobs.progress())
    line = next(r.getMessage() for r in caplog.records if "'src'" in r.getMessage())
    assert "500 records" in line and "(0/s)" not in line, line


def test_source_offsets_topic_is_compacted() -> None:
    backend = FakeBackend()
    run(pipeline([1]), backend)
    assert backend.topics[SOURCE_OFFSETS_TOPIC].config["cleanup.policy"] == "compact"


def test_several_sink_tasks_split_the_partitions_and_each_record_is_written_once() -> None:
    backend = FakeBackend()
    values = [{"n": i} for i in range(40)]
    run(pipeline(values, source={"config": {"values": values, "keyed": True}}, sink={"tasks": 3}, partitions=4), backend)
    assert sorted(r.value["n"] for r in MemorySink.durable["dst"]) == list(range(40))
    # every partition that holds records committed to its end, by the one task that owns it
    ends = {TopicPartition("t", p): len(backend.logs[TopicPartition("t", p)]) for p in range(4)}
    assert len([n for n in ends.values() if n]) >= 3
    assert {tp: o for tp, o in backend.groups["dst"].items() if o} == {tp: n for tp, n in ends.items() if n}
