"""The benchmarks' shared harness: rotation, medians, the lines, and a real pipeline timed through it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from millpond.config import PipelineConfig
from millpond.runtime import Worker
from tests.benchmarks import harness


def test_rotate_puts_each_path_first_in_turn() -> None:
    assert [harness.rotate("abc", n)[0] for n in range(6)] == list("abcabc")
    assert sorted(harness.rotate([3, 1, 2], 7)) == [1, 2, 3]
    assert harness.rotate([], 3) == []


def test_median_per_figure_and_the_lines() -> None:
    assert harness.median([{"a": 1.0, "b": 9.0}, {"a": 3.0, "b": 1.0}, {"a": 2.0, "b": 5.0}]) == {"a": 2.0, "b": 5.0}
    assert harness.rate_line("append", 1000, 0.5, unit="records").endswith("0.500 s          2,000 records/s")
    assert harness.ratio_line("x", 1.0, 4.0, target=0.5) == "ratio x: 0.250 (target >= 0.5: NOT met)"


def test_emit_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    harness.emit({"cdc_rows_per_s": 5})
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"cdc_rows_per_s": 5}


def test_run_pipeline_times_a_real_pipeline_through_public_counters(tmp_path: Path) -> None:
    lines = 2000
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.log").write_text("".join(f"line {i}\n" for i in range(lines)))
    config = PipelineConfig.model_validate({
        "name": "harness",
        "log": {"embedded": {"dir": str(tmp_path / "log")}},
        "topics": [{"name": "lines", "partitions": 1}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(tmp_path / "in" / "*.log")},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp_path / "out"), "suffix": ".txt", "format": "text"},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def beside(worker: Worker) -> AsyncIterator[None]:
        seen.append(f"enter, {len(worker.tasks)} tasks, running: {any(t.running for t in worker.tasks)}")
        yield
        seen.append(f"exit, sink committed: {harness.sink_task(worker).records_in}")

    times = asyncio.run(harness.run_pipeline(config, harness.sink_committed(lines), poll_s=0.01,
                                             milestones={"source": harness.source_emitted(lines)}, beside=beside))
    assert 0 <= times.startup_s <= times.milestones["source"] <= times.done_s <= times.stopped_s
    assert 0 < times.cpu_s
    # entered before the launch, left once done (before the worker stopped)
    assert seen == ["enter, 2 tasks, running: False", f"exit, sink committed: {lines}"]
    # done means the sink's committed offsets cover every line: its files hold them all
    written = "".join(p.read_text() for p in sorted((tmp_path / "out").iterdir()))
    assert written.count("\n") == lines
