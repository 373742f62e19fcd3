"""The sink task hands a ``takes_batches`` sink the log's batches, and records when it declines.

On the real embedded backend with the file sink: clean lines never become
records (``write`` is not called); a poll holding a value that is not a line
goes through ``write`` and comes out as the record path writes it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.connectors.file import FileSink
from millpond.records import Record
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.launch import create_topics


def config(tmp: Path, value_converter: str = "string") -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "it",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": "lines", "partitions": 1}],
        "connectors": [
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp / "out"), "format": "auto", "suffix": ".txt"},
             "converter": {"key": "string", "value": value_converter}, "guarantee": "exactly_once"},
        ],
    })


async def produce(cfg: PipelineConfig, values: list[bytes | None]) -> None:
    backend = open_backend(cfg.log)
    await backend.open()
    try:
        await create_topics(cfg, backend)
        producer = backend.producer(transactional_id="test")
        await producer.begin()
        await producer.send_batch("lines", 0, [Record(v, None, 1) for v in values])
        await producer.commit()
    finally:
        await backend.close()


def run_sink(tmp: Path, values: list[bytes | None], monkeypatch: pytest.MonkeyPatch,
             value_converter: str = "string") -> tuple[str, int]:
    cfg = config(tmp, value_converter)
    asyncio.run(produce(cfg, values))
    calls = []
    write = FileSink.write

    async def counting(self: FileSink, records: list[Record]) -> None:
        calls.append(len(records))
        await write(self, records)

    monkeypatch.setattr(FileSink, "write", counting)
    options = RuntimeOptions(idle_seconds=0.3, install_signal_handlers=False)
    options.sink_limits.poll_timeout_s = 0.05
    options.sink_limits.idle_flush_s = 0.05
    asyncio.run(asyncio.wait_for(run_pipeline_async(cfg, until_idle=True, options=options), 60))
    text = "".join(p.read_text() for p in sorted((tmp / "out").iterdir()))
    return text, len(calls)


def test_clean_lines_skip_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values: list[bytes | None] = [f"line {i}".encode() for i in range(5000)]
    text, writes = run_sink(tmp_path, values, monkeypatch)
    assert text.splitlines() == [v.decode() for v in values if v is not None]
    assert writes == 0


def test_a_value_that_is_not_a_line_takes_the_record_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, writes = run_sink(tmp_path, [b"a", b"two\nlines", None, b"c"], monkeypatch)
    assert text == 'a\n"two\\nlines"\nnull\nc\n'  # what format auto writes for each, as before
    assert writes >= 1


def test_other_converters_take_the_record_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text, writes = run_sink(tmp_path, [b'{"a": 1}', b'"s"'], monkeypatch, value_converter="json")
    assert text == '{"a":1}\ns\n'
    assert writes >= 1
