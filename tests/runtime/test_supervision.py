"""Supervision: bounded restarts ending in FAILED, disk full as a state, and the stop signals."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from millpond.errors import ConnectorError, DiskFullError
from millpond.runtime import RuntimeOptions, Worker, run_pipeline_async
from millpond.runtime.settings import WorkerSettings
from millpond.runtime.task import TaskState

from .fakes import FakeBackend
from .memory_connectors import ListSource, MemorySink
from .test_worker import fast_options, pipeline


def _run(config: Any, backend: FakeBackend, options: RuntimeOptions) -> Worker | None:
    return asyncio.run(asyncio.wait_for(run_pipeline_async(config, until_idle=True, options=options,
                                                           backend=backend), 30))


def test_foreign_errors_restart_a_bounded_number_of_times_then_fail(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    options = fast_options()
    options.worker = WorkerSettings(max_restarts=3, restart_window_s=60)
    config = pipeline([1, 2], source={"config": {"values": [1, 2], "fail_always": True}})
    with caplog.at_level(logging.INFO, logger="millpond.runtime"), pytest.raises(ConnectorError) as info:
        _run(config, backend, options)
    # the run ends naming the failed task and its reason
    assert "source 'src'" in str(info.value) and "driver exploded" in str(info.value)
    retries = [r for r in caplog.records if "restart #" in r.getMessage()]
    assert len(retries) == 3  # one line per retry, no more
    assert all(r.exc_info is None for r in retries)  # the traceback only with -v
    (failed,) = [r for r in caplog.records if "marked FAILED" in r.getMessage()]
    assert failed.levelno == logging.ERROR and "POST /connectors/src/restart" in failed.getMessage()


def test_the_traceback_comes_with_verbose_logging(caplog: pytest.LogCaptureFixture) -> None:
    options = fast_options()
    options.worker = WorkerSettings(max_restarts=1)
    config = pipeline([1], source={"config": {"values": [1], "fail_always": True}})
    with caplog.at_level(logging.DEBUG, logger="millpond.runtime"), pytest.raises(ConnectorError):
        _run(config, FakeBackend(), options)
    (retry,) = [r for r in caplog.records if "restart #" in r.getMessage()]
    assert retry.exc_info is not None and "driver exploded" in str(retry.exc_info[1])


def test_a_failed_task_leaves_the_rest_of_the_pipeline_running() -> None:
    async def scenario() -> tuple[Worker, list[Any]]:
        backend = FakeBackend()
        options = fast_options()
        options.worker = WorkerSettings(max_restarts=1, restart_window_s=60)
        config = pipeline([1, 2, 3], sink={"config": {"reject": []}})
        # a second, broken source beside the healthy one
        broken = config.connectors[0].model_copy(update={"name": "broken", "config": {"values": [9], "fail_always": True}})
        config.connectors.append(broken)
        worker = Worker(config, backend, options)
        from millpond.runtime.launch import create_topics

        await create_topics(config, backend)
        run = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        while worker.tasks_of("broken")[0].task.state is not TaskState.FAILED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        while len(MemorySink.durable.get("dst", [])) < 3:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        states = [worker.tasks_of(n)[0].task.state for n in ("src", "dst", "broken")]
        assert worker.connector_state("broken") is TaskState.FAILED
        assert "driver exploded" in (worker.tasks_of("broken")[0].task.trace or "")
        broken_sup = worker.tasks_of("broken")[0]
        assert broken_sup.task.restarts == 1  # max_restarts: 1 -> one restart, then FAILED
        # a restart through the control surface forgets the failures and runs it again: it fails
        # again, is restarted once more, and is FAILED again
        assert await worker.restart("broken") == ["broken"]
        while broken_sup.task.restarts < 2 or broken_sup.task.state is not TaskState.FAILED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert broken_sup.task.restarts == 2
        worker.stop()
        with pytest.raises(ConnectorError):
            await run
        return worker, states

    _worker, states = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert states == [TaskState.RUNNING, TaskState.RUNNING, TaskState.FAILED]
    assert [r.value for r in MemorySink.durable["dst"]] == [1, 2, 3]


def test_disk_full_pauses_sources_once_and_resumes_when_space_returns(caplog: pytest.LogCaptureFixture) -> None:
    backend = FakeBackend()
    options = fast_options()
    options.worker = WorkerSettings(disk_poll_s=0.05, disk_resume_bytes=1000)
    probes: list[float] = []

    def disk_free(path: str) -> int:
        probes.append(time.monotonic())
        return 10 if len(probes) < 6 else 10_000  # full for five checks, then space is back

    options.disk_free = disk_free
    values = list(range(30))
    config = pipeline(values, source={"config": {"values": values, "disk_full_polls": 1}})
    with caplog.at_level(logging.INFO, logger="millpond.runtime"):
        _run(config, backend, options)
    # everything arrived, once
    assert [r.value for r in MemorySink.durable["dst"]] == values
    # one clear line naming the path and the free bytes; one when it is over; no restarts, no traceback
    full = [m for m in caplog.messages if m.startswith("disk full")]
    assert full == ["disk full: /fake/log has 1234 bytes free; sources paused until 1000 bytes are free "
                    "(checked every 0.05s)"]
    assert sum(m.startswith("disk space is back") for m in caplog.messages) == 1
    assert not any("restart #" in m for m in caplog.messages)
    # nothing retried hot: the source was not polled again until space was back
    assert len(ListSource.disk_full_raised) == 1
    assert ListSource.started_with == [None, None]  # paused before it committed anything, then resumed
    assert len(probes) == 6 and probes[-1] - probes[0] >= 0.2


def test_disk_full_can_stop_the_worker_cleanly() -> None:
    backend = FakeBackend()
    options = fast_options()
    options.worker = WorkerSettings(on_disk_full="stop")
    config = pipeline([1, 2], source={"config": {"values": [1, 2], "disk_full_polls": 1}})
    with pytest.raises(DiskFullError):
        _run(config, backend, options)
    assert ListSource.committed == []  # stopped before anything more was taken


def _catches_sigterm(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to see when the handler is in place")
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.1, 0.3])
def test_sigterm_right_after_start_stops_cleanly(tmp_path: Path, delay: float) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.log").write_text("".join(f"{i}\n" for i in range(1000)))
    pipeline_file = tmp_path / "p.yaml"
    pipeline_file.write_text(json.dumps({
        "name": "sigterm",
        "log": {"embedded": {"dir": str(tmp_path / "log")}},
        "topics": [{"name": "lines"}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(tmp_path / "in" / "*.log")}, "converter": {"key": "string", "value": "string"}},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp_path / "out"), "format": "text"},
             "converter": {"key": "string", "value": "string"}},
        ],
    }))
    proc = subprocess.Popen([sys.executable, "-m", "millpond.cli", "run", str(pipeline_file), "--api", "off"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 20
    while not _catches_sigterm(proc.pid):
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    # the handler is there before the log is opened (which creates its directory)
    log_opened_first = (tmp_path / "log").exists()
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert not log_opened_first
