"""The worker's HTTP API with a real HTTP client (aiohttp's) against a running worker.

The worker runs in-process on an embedded log with the file source and file sink; the API
binds a free loopback port and the test finds it where the CLI would, in ``<log dir>/.worker.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from millpond.api.server import ApiServer
from millpond.backends import open_backend
from millpond.backends.base import LogBackend
from millpond.config import PipelineConfig
from millpond.errors import ConfigError
from millpond.runtime import RuntimeOptions, Worker, run_pipeline_async
from millpond.runtime.launch import create_topics

LINES = 500


@dataclass
class Running:
    url: str
    backend: LogBackend
    http: aiohttp.ClientSession
    input: Path
    out: Path
    log_dir: Path
    worker: Worker

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.http.get(self.url + path) as r:
            assert r.status == status, await r.text()
            return await r.json() if r.content_type == "application/json" else await r.text()

    async def call(self, method: str, path: str, status: int, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as r:
            assert r.status == status, await r.text()
            return await r.json() if r.content_type == "application/json" else None

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = await self.get("/metrics")
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def metric(self, name: str, **labels: str) -> float | None:
        return (await self.metrics()).get((name, tuple(sorted(labels.items()))))

    def output_lines(self, generation: int | None = None) -> list[str]:
        """Lines of the committed files, in name order; only those of one generation if given."""
        lines: list[str] = []
        for f in sorted(self.out.iterdir()):
            if f.name.startswith("."):
                continue
            m = re.search(r"\.r(\d+)\.txt$", f.name)
            if generation is None or generation == (int(m[1]) if m else 0):
                lines += f.read_text().splitlines()
        return lines


def config_for(tmp_path: Path, **api: Any) -> PipelineConfig:
    return PipelineConfig.model_validate(raw_config(tmp_path, **api))


def raw_config(tmp_path: Path, **api: Any) -> dict[str, Any]:
    return {
        "name": "api-test",
        "log": {"embedded": {"dir": str(tmp_path / "log"), "fsync": False}},
        "topics": [{"name": "lines"}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(tmp_path / "in" / "*.log")},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp_path / "out"), "format": "text", "suffix": ".txt", "fsync": False},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
        "api": api,
    }


@contextlib.asynccontextmanager
async def running(tmp_path: Path, config: PipelineConfig | None = None, *, listen: str = "127.0.0.1:0",
                  token: str | None = None) -> AsyncIterator[Running]:
    (tmp_path / "in").mkdir(exist_ok=True)
    source = tmp_path / "in" / "app.log"
    if not source.exists():
        source.write_text("".join(f"line {i}\n" for i in range(LINES)))
    config = config or config_for(tmp_path)
    options = RuntimeOptions(install_signal_handlers=False)
    options.sink_limits.idle_flush_s = 0.05
    options.sink_limits.poll_timeout_s = 0.02
    options.source_limits.idle_poll_s = 0.02
    backend = open_backend(config.log)
    await backend.open()
    await create_topics(config, backend)
    worker = Worker(config, backend, options)
    api = ApiServer(worker, listen, token=config.api.token)
    try:
        await api.start()
        run = asyncio.create_task(worker.run())
        worker_file = tmp_path / "log" / ".worker.json"
        url = json.loads(worker_file.read_text())["url"]
        assert url == api.url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with aiohttp.ClientSession(headers=headers) as http:
                yield Running(url, backend, http, source, tmp_path / "out", tmp_path / "log", worker)
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
            await api.close()
            assert not worker_file.exists()  # the worker says it is gone
    finally:
        await backend.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def drained(w: Running) -> bool:
    status = await w.get("/connectors/out/status")
    if status["tasks"][0]["state"] != "RUNNING":
        return False
    lag = await w.metric("millpond_group_lag", group="out", topic="lines", partition="0")
    return lag == 0 and bool(await w.metric("millpond_task_records_out_total", connector="tail", task="0"))


def go(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 120))  # type: ignore[arg-type]


def test_connect_shapes_status_health_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the first lines to arrive")
            root = await w.get("/")
            assert root["version"] and "worker_id" in root and "commit" in root
            assert await w.get("/connectors") == ["tail", "out"]
            expanded = await w.get("/connectors?expand=status")
            assert {n: v["status"]["connector"]["state"] for n, v in expanded.items()} == {
                "tail": "RUNNING", "out": "RUNNING"}
            info = await w.get("/connectors/out")
            assert info["type"] == "sink" and info["tasks"] == [{"connector": "out", "task": 0}]
            assert info["config"]["config"]["dir"] == str(tmp_path / "out")
            assert info["config"]["guarantee"] == "exactly_once"
            status = await w.get("/connectors/tail/status")
            assert status["connector"]["worker_id"] == root["worker_id"]
            assert [(t["id"], t["state"]) for t in status["tasks"]] == [(0, "RUNNING")]
            tasks = await w.get("/connectors/tail/tasks")
            assert tasks[0]["id"] == {"connector": "tail", "task": 0}
            assert tasks[0]["config"] == await w.get("/connectors/tail/config") == info_tail_config(info, tasks)
            assert (await w.get("/connectors/tail/tasks/0/status"))["state"] == "RUNNING"
            await w.get("/connectors/tail/tasks/3/status", status=404)
            await w.call("POST", "/connectors/tail/tasks/0/restart", 204)
            assert (await w.get("/connectors/tail/tasks/0/status"))["state"] == "RUNNING"
            assert (await w.get("/health"))["status"] == "healthy"
            assert (await w.get("/ready"))["status"] == "ready"
            missing = await w.get("/connectors/nope/status", status=404)
            assert missing == {"error_code": 404, "message": "Connector nope not found"}
            # stop, then ready says why not; restart with includeTasks answers the status
            await w.call("PUT", "/connectors/out/stop", 204)
            assert (await w.get("/connectors/out/status"))["tasks"][0]["state"] == "STOPPED"
            assert "out (STOPPED)" in (await w.get("/ready", status=503))["message"]
            answer = await w.call("POST", "/connectors/out/restart?includeTasks=true", 202)
            assert answer["connector"]["state"] == "RUNNING"
            await w.call("POST", "/connectors/out/restart?includeTasks=maybe", 400)
            await until(lambda: drained(w), "the sink to run again")

    go(scenario())


def info_tail_config(info: dict[str, Any], tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The tail connector's config as the file gives it (from its /tasks answer, checked against the file)."""
    config: dict[str, Any] = tasks[0]["config"]
    assert config["name"] == "tail" and config["type"] == "file" and config["guarantee"] == "exactly_once"
    return config


def test_secrets_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from millpond.config import load_pipeline

    monkeypatch.setenv("API_TEST_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("API_TEST_TOKEN", "s3cret-token")
    data = raw_config(tmp_path)
    data["connectors"][1]["config"]["dir"] = "${API_TEST_OUT}"
    data["api"] = {"listen": "127.0.0.1:0", "token": "${API_TEST_TOKEN}"}
    (tmp_path / "p.yaml").write_text(json.dumps(data))
    config = load_pipeline(str(tmp_path / "p.yaml"))

    async def scenario() -> None:
        async with running(tmp_path, config, token="s3cret-token") as w:
            info = await w.get("/connectors/out")
            assert info["config"]["config"]["dir"] == "***"
            everything = json.dumps([await w.get("/connectors/out/tasks"), await w.get("/connectors?expand=info")])
            assert str(tmp_path / "out") not in everything and "s3cret" not in everything
            async with aiohttp.ClientSession() as anonymous:  # no token: refused
                async with anonymous.get(w.url + "/connectors") as r:
                    assert r.status == 401

    go(scenario())


def test_non_loopback_bind_needs_a_token(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    options = RuntimeOptions(install_signal_handlers=False, api_listen="0.0.0.0:0", until_idle=True)
    # refused before the log is opened
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0:0 without a token"):
        go(run_pipeline_async(config_for(tmp_path), options=options))  # type: ignore[arg-type]
    assert not (tmp_path / "log").exists()

    async def scenario() -> None:  # with a token it serves, and only to requests that carry it
        async with running(tmp_path, config_for(tmp_path, token="t0ken"), listen="0.0.0.0:0", token="t0ken") as w:
            assert w.url.startswith("http://0.0.0.0:")
            assert (await w.get("/health"))["status"] == "healthy"
            async with aiohttp.ClientSession(headers={"Authorization": "Bearer wrong"}) as other:
                async with other.get(w.url + "/health") as r:
                    assert r.status == 401

    go(scenario())


def test_pause_stops_records_and_lag_grows_resume_drains_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the first lines to arrive")
            assert len(w.output_lines()) == LINES
            await w.call("PUT", "/connectors/out/pause", 202)
            assert (await w.get("/connectors/out/status"))["tasks"][0]["state"] == "PAUSED"
            with w.input.open("a") as f:
                f.write("".join(f"more {i}\n" for i in range(100)))
            # the source goes on; the paused sink takes nothing, so its lag grows
            await until(lambda: _lag_at_least(w, 100), "lag to grow to 100")
            await asyncio.sleep(0.3)
            assert len(w.output_lines()) == LINES
            # a paused source takes nothing either
            await w.call("PUT", "/connectors/tail/pause", 202)
            before = await w.metric("millpond_task_records_out_total", connector="tail", task="0")
            with w.input.open("a") as f:
                f.write("".join(f"late {i}\n" for i in range(10)))
            await asyncio.sleep(0.5)
            assert await w.metric("millpond_task_records_out_total", connector="tail", task="0") == before
            await w.call("PUT", "/connectors/tail/resume", 202)
            await w.call("PUT", "/connectors/out/resume", 202)
            await until(lambda: _all_out(w, LINES + 110), "resume to drain the lag")
            assert await w.metric("millpond_group_lag", group="out", topic="lines", partition="0") == 0
            lines = w.output_lines()
            assert Counter(lines) == Counter(w.input.read_text().splitlines())  # each once

    go(scenario())


async def _lag_at_least(w: Running, n: int) -> bool:
    return (await w.metric("millpond_group_lag", group="out", topic="lines", partition="0") or 0) >= n


async def _all_out(w: Running, n: int) -> bool:
    return len(w.output_lines()) >= n and await drained(w)


def test_metrics_offsets_equal_the_logs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the lines to arrive")
            metrics = await w.metrics()
            (info,) = await w.backend.describe_topic("lines")
            for name in ("log_start_offset", "log_end_offset", "high_watermark", "last_stable_offset",
                         "size_bytes", "segments"):
                key = (f"millpond_partition_{name}", (("partition", "0"), ("topic", "lines")))
                assert metrics[key] == getattr(info, name), name
            (group,) = await w.backend.describe_group("out")
            glabels = (("group", "out"), ("partition", "0"), ("topic", "lines"))
            assert metrics[("millpond_group_committed_offset", glabels)] == group.committed
            task = (("connector", "tail"), ("task", "0"))
            assert metrics[("millpond_task_records_out_total", task)] == LINES
            assert metrics[("millpond_task_bytes_out_total", task)] == sum(len(f"line {i}") for i in range(LINES))
            assert metrics[("millpond_task_operation_seconds_count", (*task[:1], ("operation", "commit"), task[1]))] >= 1
            assert metrics[("millpond_task_state", (*task[:1], ("state", "RUNNING"), task[1]))] == 1
            assert metrics[("millpond_task_restarts_total", task)] == 0
            # the maintenance jobs count their runs
            assert w.worker.jobs is not None
            await w.worker.jobs.retention()
            metrics = await w.metrics()
            assert metrics[("millpond_log_maintenance_runs_total", (("job", "retention"),))] == 1
            assert metrics[("millpond_log_retention_segments_deleted_total", ())] == 0

    go(scenario())


def _sink_offsets(body: dict[str, Any]) -> dict[tuple[str, int], int]:
    return {(e["partition"]["kafka_topic"], e["partition"]["kafka_partition"]): e["offset"]["kafka_offset"]
            for e in body["offsets"]}


def test_sink_reset_while_running_replays_each_record_once_per_reset(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the lines to arrive")
            original = w.input.read_text().splitlines()
            (info,) = await w.backend.describe_topic("lines")
            assert _sink_offsets(await w.get("/connectors/out/offsets")) == {("lines", 0): info.log_end_offset}
            # a dry run says what would change, and changes nothing
            plan = await w.call("DELETE", "/connectors/out/offsets?dry_run=true", 200)
            assert plan == {"dry_run": True, "changes": [{
                "partition": {"kafka_topic": "lines", "kafka_partition": 0},
                "from": {"kafka_offset": info.log_end_offset}, "to": {"kafka_offset": 0}}]}
            await asyncio.sleep(0.3)
            assert w.output_lines() == original
            # reset 1: everything again, written beside what was written (generation r1)
            done = await w.call("DELETE", "/connectors/out/offsets", 200)
            assert done["message"] == "The offsets for this connector have been reset successfully"
            await until(lambda: _all_out(w, 2 * LINES), "the replay")
            assert w.output_lines(0) == original  # the first generation is untouched
            assert w.output_lines(1) == original  # the replay: each record once, in order
            # more lines, then reset 2 to where they start: exactly those again
            with w.input.open("a") as f:
                f.write("".join(f"more {i}\n" for i in range(50)))
            mark = info.log_end_offset
            await until(lambda: _all_out(w, 2 * LINES + 50), "the new lines")
            await w.call("PATCH", "/connectors/out/offsets", 400,
                         {"offsets": [{"partition": {"kafka_topic": "lines", "kafka_partition": 0},
                                       "offset": {"kafka_offset": 10**9}}]})
            await w.call("PATCH", "/connectors/out/offsets", 400,
                         {"offsets": [{"partition": {"kafka_topic": "nope", "kafka_partition": 0},
                                       "offset": {"kafka_offset": 0}}]})
            # on a paused connector: the change is made, and it stays paused until resumed
            await w.call("PUT", "/connectors/out/pause", 202)
            await w.call("PATCH", "/connectors/out/offsets", 200,
                         {"offsets": [{"partition": {"kafka_topic": "lines", "kafka_partition": 0},
                                       "offset": {"kafka_offset": mark}}]})
            assert _sink_offsets(await w.get("/connectors/out/offsets")) == {("lines", 0): mark}
            await asyncio.sleep(0.3)
            assert (await w.get("/connectors/out/status"))["tasks"][0]["state"] == "PAUSED"
            assert len(w.output_lines()) == 2 * LINES + 50
            await w.call("PUT", "/connectors/out/resume", 202)
            await until(lambda: _all_out(w, 2 * LINES + 100), "the second replay")
            await asyncio.sleep(0.3)
            assert w.output_lines(2) == [f"more {i}" for i in range(50)]
            assert Counter(w.output_lines()) == Counter(original * 2 + [f"more {i}" for i in range(50)] * 2)
            assert (await w.get("/connectors/out/status"))["tasks"][0]["state"] == "RUNNING"

    go(scenario())


def test_file_source_rewound_re_emits_those_lines_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: drained(w), "the lines to arrive")
            original = w.input.read_text().splitlines()
            (entry,) = (await w.get("/connectors/tail/offsets"))["offsets"]
            assert entry["partition"] == {"task": 0}
            (tracked,) = entry["offset"]["files"]
            assert tracked["position"] == w.input.stat().st_size
            # rewind to the start of line 400: by path and position, as a user writes it by hand
            rewind = len("".join(f"line {i}\n" for i in range(400)))
            body = {"offsets": [{"partition": {"task": 0},
                                 "offset": {"files": [{"path": str(w.input), "position": rewind}]}}]}
            plan = await w.call("PATCH", "/connectors/tail/offsets?dry_run=true", 200, body)
            assert plan["changes"][0]["to"]["files"][0]["position"] == rewind
            await w.call("PATCH", "/connectors/tail/offsets", 400,
                         {"offsets": [{"partition": {"task": 0}, "offset": {"files": [{"path": "x"}]}}]})
            await w.call("PATCH", "/connectors/tail/offsets", 400,
                         {"offsets": [{"partition": {"task": 7}, "offset": {"files": []}}]})
            await w.call("PATCH", "/connectors/tail/offsets", 200, body)
            await until(lambda: _all_out(w, LINES + 100), "the rewound lines")
            await asyncio.sleep(0.3)
            assert Counter(w.output_lines()) == Counter(original + original[400:])
            (entry,) = (await w.get("/connectors/tail/offsets"))["offsets"]
            assert entry["offset"]["files"][0]["position"] == w.input.stat().st_size

    go(scenario())


def test_cli_run_with_api_and_sigterm(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "app.log").write_text("a\nb\n")
    data = raw_config(tmp_path)
    del data["api"]
    (tmp_path / "p.yaml").write_text(json.dumps(data))
    proc = subprocess.Popen([sys.executable, "-m", "millpond.cli", "run", str(tmp_path / "p.yaml"),
                             "--api", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    worker_file = tmp_path / "log" / ".worker.json"
    try:
        deadline = time.monotonic() + 30
        while not worker_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        found = json.loads(worker_file.read_text())
        assert found["pid"] == proc.pid

        async def probe() -> None:
            async with aiohttp.ClientSession() as http, http.get(found["url"] + "/health") as r:
                assert r.status == 200

        go(probe())
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"worker API listening on {found['url']}" in err
    assert not worker_file.exists()
    bad = subprocess.run([sys.executable, "-m", "millpond.cli", "run", str(tmp_path / "p.yaml"), "--api", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "--api" in bad.stderr and "Traceback" not in bad.stderr


def test_a_busy_port_is_an_error_unless_it_was_only_the_default(tmp_path: Path) -> None:
    import socket

    from ..runtime.fakes import FakeBackend

    (tmp_path / "log").mkdir()
    worker = Worker(config_for(tmp_path), FakeBackend(), RuntimeOptions(install_signal_handlers=False))

    async def scenario() -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
                await ApiServer(worker, f"127.0.0.1:{port}").start()
            fallback = ApiServer(worker, f"127.0.0.1:{port}", fallback_to_free_port=True)
            await fallback.start()
            try:
                assert fallback.url.startswith("http://127.0.0.1:") and not fallback.url.endswith(f":{port}")
                assert json.loads((tmp_path / "log" / ".worker.json").read_text())["url"] == fallback.url
            finally:
                await fallback.close()

    go(scenario())
