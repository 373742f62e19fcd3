"""The example pipelines in configs/ run as they are (from a copy of the repository layout)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from millpond.backends import open_backend
from millpond.config import load_pipeline
from millpond.runtime import RuntimeOptions, run_pipeline_async

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_copy(tmp_path: Path) -> Iterator[Path]:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def run(path: str) -> None:
    options = RuntimeOptions(idle_seconds=0.5, install_signal_handlers=False)
    asyncio.run(asyncio.wait_for(run_pipeline_async(load_pipeline(path), until_idle=True, options=options), 60))


def test_quickstart_copies_every_line_once(repo_copy: Path) -> None:
    run("configs/quickstart.yaml")
    run("configs/quickstart.yaml")  # a second run moves nothing again
    out = [line for f in sorted((repo_copy / "out").iterdir()) for line in f.read_text().splitlines()]
    inputs = [line for f in sorted((repo_copy / "configs" / "quickstart-input").iterdir())
              for line in f.read_text().splitlines()]
    assert sorted(out) == sorted(inputs)


def test_audit_log_takes_event_time_and_dead_letters_events_without_one(repo_copy: Path) -> None:
    run("configs/audit-log.yaml")
    events = [json.loads(line) for line in (repo_copy / "configs" / "audit-input" / "events.jsonl").read_text().splitlines()]
    timed = [e for e in events if "time" in e]
    archived = [json.loads(line) for f in sorted((repo_copy / "out" / "audit").iterdir())
                for line in f.read_text().splitlines()]
    assert archived == timed

    async def inspect() -> None:
        config = load_pipeline("configs/audit-log.yaml")
        backend = open_backend(config.log)
        await backend.open()
        try:
            settings = await backend.topic_settings("audit-events")  # type: ignore[attr-defined]
            assert settings["compression.type"] == "zstd"
            assert settings["message.timestamp.type"] == "CreateTime"
            assert settings["retention.ms"] >= 7 * 365 * 24 * 3600 * 1000
            consumer = backend.consumer(["audit-events"])
            records = await consumer.poll(1000, 0.5)
            for r in records:
                event = json.loads(r.value)
                assert r.timestamp == int(datetime.fromisoformat(event["time"]).timestamp() * 1000)
            dead = await backend.consumer(["audit-events-dlq"]).poll(10, 0.5)
            assert [json.loads(d.value)["note"] for d in dead] == ["no time field"]
            headers = dict(dead[0].headers)
            assert headers["millpond.error.topic"] == b"audit-events"
            assert b"no field 'time'" in headers["millpond.error"]  # type: ignore[operator]
        finally:
            await backend.close()

    asyncio.run(inspect())
