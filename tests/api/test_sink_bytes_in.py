"""``millpond_task_bytes_in_total`` of a sink, checked against the bytes in the log's own segment files.

The model is independent of the consumer: the partition's ``.log`` files are walked batch by batch
here (``batch.walk``), control batches left out (the file source commits transactions), so the figure
is what the segments hold, not what the sink task thought it read. A sink that takes batches counts
the batches as stored; a sink reading records counts their key and value bytes before conversion.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from millpond.config import PipelineConfig
from millpond.log.batch import LOG_OVERHEAD, iter_records, walk

from .test_worker_api import LINES, drained, go, raw_config, running, until


def data_batches(log_dir: Path, topic: str, partition: int) -> list[bytes]:
    """The data batches of one partition, read straight from its segment files in offset order."""
    out = []
    for segment in sorted((log_dir / "topics" / topic / str(partition)).glob("*.log")):
        buf = segment.read_bytes()
        for position, header in walk(buf, 0, len(buf)):
            if not header.is_control:
                out.append(buf[position: position + header.batch_length + LOG_OVERHEAD])
    return out


@pytest.mark.parametrize("path", ["batches", "records"])
def test_sink_bytes_in_equal_the_logs(tmp_path: Path, path: str) -> None:
    raw = raw_config(tmp_path)
    if path == "records":  # a converter other than string takes the sink off the batches path
        raw["connectors"][1]["converter"] = {"key": "bytes", "value": "bytes"}
    config = PipelineConfig.model_validate(raw)

    async def scenario() -> None:
        async with running(tmp_path, config) as w:
            await until(lambda: drained(w), "the lines to arrive")
            batches = data_batches(w.log_dir, "lines", 0)
            records = [r for b in batches for r in iter_records(b)]
            assert len(records) == LINES
            if path == "batches":
                expected = sum(len(b) for b in batches)
            else:
                expected = sum(len(r.value or b"") + len(r.key or b"") for r in records)
            bytes_in = await w.metric("millpond_task_bytes_in_total", connector="out", task="0")
            assert bytes_in == expected
            # and a source reads nothing from the log
            assert await w.metric("millpond_task_bytes_in_total", connector="tail", task="0") == 0

    go(scenario())
