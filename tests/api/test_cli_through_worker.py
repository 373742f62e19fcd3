"""The CLI's writing commands go through the worker that holds the log.

The worker runs in-process (file source ``tail`` -> topic ``lines`` -> file sink ``out``) with its API on a
free loopback port; each command runs as ``millpond.cli.main`` in a thread (its own event loop, as on a
shell), finds the worker from ``<log dir>/.worker.json`` and must change what the worker serves: its
backend, its sink's output, its ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
from pathlib import Path

import pytest

from millpond import cli
from millpond.api.admin import RECORD_BATCH, encode_batch
from millpond.backends.base import TopicSpec
from millpond.config import ErrorPolicy, PipelineConfig
from millpond.errors import RecordError
from millpond.log import observe
from millpond.records import Record, TopicPartition
from millpond.runtime.policy import ErrorPolicyHandler

from .test_worker_api import LINES, Running, config_for, drained, go, raw_config, running, until


async def run_cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    """``millpond ARGV`` in a thread, as a shell would run it: (exit code, stdout, stderr)."""

    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(list(argv))
        finally:
            sys.stdin = saved
        return code, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


def log_of(w: Running) -> list[str]:
    return ["--log", str(w.log_dir)]


async def end_of(w: Running, topic: str, partition: int = 0) -> int:
    return next(p.log_end_offset for p in await w.backend.describe_topic(topic) if p.partition == partition)


def test_topics_create_alter_delete_through_the_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            code, _, err = await run_cli("topics", "create", "extra", "-p", "3", "--config", "retention.ms=60000",
                                         *log_of(w))
            assert code == 0, err
            assert await w.backend.partitions_for("extra") == 3
            assert (await w.backend.topic_settings("extra"))["retention.ms"] == 60000
            code, _, err = await run_cli("topics", "create", "extra", *log_of(w))
            assert code == 1 and "already exists" in err and len(err.strip().splitlines()) == 1
            code, _, err = await run_cli("topics", "alter", "extra", "--config", "cleanup.policy=compact",
                                         "--delete-config", "retention.ms", *log_of(w))
            assert code == 0, err
            assert "cleanup.policy delete -> compact" in err
            settings = await w.backend.topic_settings("extra")
            assert settings.get("cleanup.policy") == "compact"
            assert settings.get("retention.ms", 7 * 86_400_000) == 7 * 86_400_000  # back to the default
            code, _, err = await run_cli("topics", "alter", "extra", "--config", "no.such=1", *log_of(w))
            assert code == 1 and "no.such" in err
            # a topic the worker's connectors use is not deleted under them
            code, _, err = await run_cli("topics", "delete", "lines", *log_of(w))
            assert code == 1 and "used by connector(s) tail, out" in err
            code, _, err = await run_cli("topics", "delete", "extra", *log_of(w))
            assert code == 0, err
            assert "extra" not in await w.backend.list_topics()
            code, _, err = await run_cli("topics", "delete", "extra", *log_of(w))
            assert code == 1 and "unknown topic 'extra'" in err

    go(scenario())


def test_produce_through_the_worker_reaches_its_sink(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the file's lines to reach the sink")
            before = await end_of(w, "lines")
            code, _, err = await run_cli("produce", "lines", *log_of(w), stdin="typed 1\ntyped 2\n\ntyped 3\n")
            assert code == 0, err
            assert "3 records" in err
            assert await end_of(w, "lines") >= before + 3  # plus the transaction's marker
            await until(lambda: drained(w), "the typed lines to reach the sink")
            lines = w.output_lines()
            assert [line for line in lines if line.startswith("typed")] == ["typed 1", "typed 2", "typed 3"]
            assert len(lines) == LINES + 3
            # a bad line: nothing of that input is written, one line says why
            end = await end_of(w, "lines")
            code, _, err = await run_cli("produce", "lines", "--parse-key", *log_of(w), stdin="k\tv\nnokey\n")
            assert code == 1 and "line 2: no key separator" in err and "nothing was written" in err
            code, _, err = await run_cli("produce", "lines", "--partition", "4", *log_of(w), stdin="x\n")
            assert code == 1 and "partitions 0-0, not 4" in err
            code, _, err = await run_cli("produce", "nope", *log_of(w), stdin="x\n")
            assert code == 1 and "unknown topic 'nope'" in err
            assert await end_of(w, "lines") == end

    go(scenario())


def test_groups_reset_through_the_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the file's lines to reach the sink")
            assert len(w.output_lines()) == LINES
            reset = ("groups", "reset", "out", "--to-earliest", *log_of(w))
            code, out, err = await run_cli(*reset)
            assert code == 0 and "plan only" in err and len(w.output_lines()) == LINES
            # the file sink owns its offsets: the reset reaches it (through the connector's offsets
            # endpoint, which pauses it), and it writes every line once more
            code, out, err = await run_cli(*reset, "--execute")
            assert code == 0, err
            assert f"through the worker at {w.url}" in err
            await until(lambda: drained(w), "the replayed lines to reach the sink")

            async def copied_twice() -> bool:
                return len(w.output_lines()) >= 2 * LINES

            await until(copied_twice, "a second copy of every line")
            lines = w.output_lines()
            assert sorted(lines) == sorted([f"line {i}" for i in range(LINES)] * 2)
            # a group that is no connector: its offsets are moved by the worker
            await w.backend.reset_offsets("audit", {TopicPartition("lines", 0): 7})
            code, out, err = await run_cli("groups", "reset", "audit", "--shift-by", "-5", "--execute", *log_of(w))
            assert code == 0, err
            assert await w.backend.committed("audit") == {TopicPartition("lines", 0): 2}
            # a source connector: its checkpoint is dropped and it reads its file again from the start
            end = await end_of(w, "lines")
            code, out, err = await run_cli("groups", "reset", "tail", "--to-earliest", "--execute", *log_of(w))
            assert code == 0, err
            assert "dropped the checkpoint of 1 task(s) of source connector 'tail'" in err

            async def reread() -> bool:
                return await end_of(w, "lines") >= end + LINES

            await until(reread, "the source to read its file again")

    go(scenario())


def test_maintenance_through_the_worker(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            for topic, setting in (("old", "retention.bytes=4096"), ("keyed", "cleanup.policy=compact")):
                code, _, err = await run_cli("topics", "create", topic, "--config", "segment.bytes=1024",
                                             "--config", setting, *log_of(w))
                assert code == 0, err
            lines = "".join(f"{i:04d} {'x' * 60}\n" for i in range(200))
            code, _, err = await run_cli("produce", "old", "--transaction-records", "10", *log_of(w), stdin=lines)
            assert code == 0, err
            keyed = "".join(f"k{i % 4}\t{'v' * 60} {i}\n" for i in range(200))
            code, _, err = await run_cli("produce", "keyed", "--parse-key", "--transaction-records", "10",
                                         *log_of(w), stdin=keyed)
            assert code == 0, err
            size = sum(p.size_bytes for p in await w.backend.describe_topic("old"))
            code, out, err = await run_cli("topics", "retain", *log_of(w))
            assert code == 0, err
            assert f"(by the worker at {w.url})" in out
            deleted = int(out.split("retention: ")[1].split()[0])
            reclaimed = int(out.split(", ")[1].split()[0])
            info = (await w.backend.describe_topic("old"))[0]
            assert deleted > 0 and info.log_start_offset > 0
            assert reclaimed == size - info.size_bytes > 0
            code, out, err = await run_cli("topics", "compact", *log_of(w))
            assert code == 0, err
            assert "compaction: 1 partition(s) compacted" in out
            assert int(out.split(", ")[1].split()[0]) > 0
            assert await w.metric("millpond_log_reclaimed_bytes_total", job="retention") == reclaimed
            assert (await w.metric("millpond_log_reclaimed_bytes_total", job="compaction") or 0) > 0
            assert await w.metric("millpond_log_maintenance_runs_total", job="retention") == 1

    go(scenario())


def test_dlq_replay_through_the_worker_goes_to_its_sink(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the file's lines to reach the sink")
            await w.backend.create_topic(TopicSpec("lines-dlq", 1))
            # what the sink's error policy wrote when it rejected two records of lines-0
            policy = ErrorPolicyHandler("out", ErrorPolicy(policy="dead_letter", topic="lines-dlq"))
            letters = [policy.handle(RecordError("disk said no"), Record(f"rejected {i}".encode(), None, 1_000 + i,
                                                                         [], "lines", 0, 10 + i), "write")
                       for i in range(2)]
            producer = w.backend.producer(transactional_id="test-dlq")
            await producer.begin()
            for letter in letters:
                assert letter is not None
                await producer.send("lines-dlq", letter, 0)
            await producer.commit()
            await producer.close()
            code, out, err = await run_cli("dlq", "replay", "lines-dlq", *log_of(w))
            assert code == 0 and "plan only: 2 dead letter(s)" in err
            assert "lines-0@10" in out and "lines-0" in out
            code, out, err = await run_cli("dlq", "replay", "lines-dlq", "--execute", *log_of(w))
            assert code == 0, err
            assert "replayed 2 dead letter(s)" in err and w.url in err
            await until(lambda: drained(w), "the replayed records to reach the sink")
            assert [x for x in w.output_lines() if x.startswith("rejected")] == ["rejected 0", "rejected 1"]
            code, out, err = await run_cli("dlq", "replay", "lines-dlq", "--execute", *log_of(w))
            assert code == 0 and "nothing to replay" in err

    go(scenario())


def test_token_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MILLPOND_API_TOKEN", raising=False)

    async def scenario() -> None:
        config = config_for(tmp_path, token="s3cret-token")
        async with running(tmp_path, config, token="s3cret-token") as w:
            code, _, err = await run_cli("topics", "create", "extra", *log_of(w))
            assert code == 1 and "bearer token" in err and "MILLPOND_API_TOKEN" in err
            monkeypatch.setenv("MILLPOND_API_TOKEN", "s3cret-token")
            code, _, err = await run_cli("topics", "create", "extra", *log_of(w))
            assert code == 0, err
            assert "extra" in await w.backend.list_topics()

    go(scenario())


def test_fsync_latency_is_measured_in_the_logs_flush(tmp_path: Path) -> None:
    async def scenario() -> None:
        raw = raw_config(tmp_path)
        raw["log"]["embedded"]["fsync"] = True
        async with running(tmp_path, PipelineConfig.model_validate(raw)) as w:
            await until(lambda: drained(w), "the file's lines to reach the sink")
            before = await w.metric("millpond_log_fsync_seconds_count") or 0
            code, _, err = await run_cli("produce", "lines", *log_of(w), stdin="one more\n")
            assert code == 0, err
            after = await w.metric("millpond_log_fsync_seconds_count")
            assert after is not None and after > before  # the produce's commit fsynced its partitions
            assert (await w.metric("millpond_log_fsync_seconds_sum") or 0) > 0
        assert observe.fsync_observer is None  # the worker took its hook away when it stopped

    go(scenario())


def test_admin_endpoints_answer_bad_requests_in_connects_shape(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            assert await w.call("POST", "/topics", 400, {"partitions": 1}) == {
                "error_code": 400, "message": 'expected {"name": TOPIC, "partitions": N, "config": {...}}'}
            await w.call("POST", "/topics", 400, {"name": "x", "partitions": 0})
            await w.call("POST", "/topics", 400, {"name": "bad name!"})
            made = await w.call("POST", "/topics", 201, {"name": "x", "partitions": 2,
                                                          "config": {"retention.ms": 5000}})
            assert made["partitions"] == 2 and made["config"]["retention.ms"] == 5000
            await w.call("POST", "/topics", 409, {"name": "x"})
            await w.call("POST", "/topics", 201, {"name": "x", "if_not_exists": True})
            # PUT replaces the settings; PATCH changes some; a declared topic is flagged
            put = await w.call("PUT", "/topics/x/config", 200, {"config": {"cleanup.policy": "compact"}})
            assert put["changes"]["retention.ms"] == [5000, 7 * 86_400_000]
            assert put["declared_in_pipeline"] is False
            patched = await w.call("PATCH", "/topics/lines/config", 200, {"set": {"retention.ms": 60_000}})
            assert patched["changes"] == {"retention.ms": [7 * 86_400_000, 60_000]}
            assert patched["declared_in_pipeline"] is True
            await w.call("PATCH", "/topics/x/config", 400, {"set": [1]})
            await w.call("PUT", "/topics/nope/config", 404, {"config": {}})
            # records: base64 bytes, one transaction, checked before anything is written
            end = await end_of(w, "x", 1)
            await w.call("POST", "/topics/x/records", 400, {"records": [{"value": "not base64!"}]})
            await w.call("POST", "/topics/x/records", 400, {"records": [{"value": None, "partition": "1"}]})
            await w.call("POST", "/topics/x/records", 400, {"records": [{"value": "eA==", "partition": 9}]})
            assert await end_of(w, "x", 1) == end
            sent = await w.call("POST", "/topics/x/records", 200, {"records": [
                {"key": "aw==", "value": "AP8=", "headers": [["h", None]], "timestamp": 42, "partition": 1}]})
            assert sent == {"topic": "x", "records": 1}
            # the CLI's form: the log's own batch format; a torn or corrupt one is refused whole
            batch = bytearray(encode_batch([Record(b"batched", b"k", 43, [])]))
            for body, status in ((bytes(batch[:-3]), 400), (bytes(batch[:30]) + b"x" + bytes(batch[31:]), 400),
                                 (bytes(batch), 200)):
                async with w.http.post(w.url + "/topics/x/records?partition=1", data=body,
                                       headers={"Content-Type": RECORD_BATCH}) as r:
                    assert r.status == status, await r.text()
            consumer = w.backend.consumer(["x"], group=None)
            got = await consumer.poll(timeout=1.0)
            await consumer.close()
            assert [(r.partition, r.key, r.value, r.headers, r.timestamp) for r in got] == [
                (1, b"k", b"\x00\xff", [("h", None)], 42), (1, b"k", b"batched", [], 43)]
            # group offsets: a connector's go through its own endpoint
            await w.call("PATCH", "/groups/out/offsets", 409, {"offsets": []})
            await w.call("PATCH", "/groups/g/offsets", 400, {"offsets": [{"topic": "x"}]})
            await w.call("PATCH", "/groups/g/offsets", 200, {"offsets": [{"topic": "x", "partition": 1, "offset": 1}]})
            assert await w.backend.committed("g") == {TopicPartition("x", 1): 1}
            # maintenance now, and what it did
            retention = await w.call("POST", "/admin/retention", 200)
            assert set(retention) == {"job", "segments_deleted", "bytes_reclaimed", "seconds"}
            compaction = await w.call("POST", "/admin/compaction", 200)
            assert compaction["job"] == "compaction" and compaction["partitions_compacted"] >= 0
            await w.call("DELETE", "/topics/lines", 409)
            await w.call("DELETE", "/topics/x", 204)
            await w.call("DELETE", "/topics/x", 404)
            await w.call("POST", "/admin/dlq/x/replay", 404, {})

    go(scenario())
