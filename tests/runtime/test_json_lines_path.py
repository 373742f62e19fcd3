"""file (format json) -> mask -> embedded log -> file: the batch-form path writes what the record path writes.

When every transform declares a batch form, the file source hands over its
lines unparsed (JsonLines) and the source task runs whole blocks through
``apply_json_lines``. The model is the record path, computed here line by line
(``json_or_text``, ``Mask.apply``, the json converter); a block holding a line
the mask rejects goes record by record in its place, so that line meets the
error policy (``skip``) and the lines around it keep their order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from millpond.config import PipelineConfig
from millpond.converters import JsonConverter, StringConverter
from millpond.errors import PluginError, RecordError
from millpond.records import Record, json_or_text
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.source_task import _through_batch_forms, encoded_as
from millpond.transforms import Mask, MaskConfig, Rename, RenameConfig

MASK = {"fields": ["user", "meta.ip"], "salt": "s"}


def config(tmp: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "jl",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": "lines", "partitions": 1}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(tmp / "in" / "*.log"), "format": "json", "read_bytes": 4096},
             "converter": {"key": "string", "value": "json"}, "guarantee": "exactly_once",
             "transforms": [{"type": "mask", "config": MASK}], "errors": {"policy": "skip"}},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp / "out"), "suffix": ".txt", "format": "text"},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })


def model(lines: list[bytes]) -> list[bytes]:
    mask = Mask(MaskConfig(**MASK))
    out = []
    for line in lines:
        try:
            [r] = mask.apply(Record(json_or_text(line.decode())))
        except RecordError:
            continue  # skipped by the error policy
        data = JsonConverter().serialize(r.value)
        assert data is not None
        out.append(data)
    return out


def run(tmp: Path, lines: list[bytes], monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[int]]:
    (tmp / "in").mkdir()
    (tmp / "in" / "a.log").write_bytes(b"".join(line + b"\n" for line in lines))
    blocks: list[int] = []
    batch_form = Mask.apply_json_lines

    def counting(self: Mask, block: bytes) -> bytes | None:
        blocks.append(block.count(b"\n"))
        return batch_form(self, block)

    monkeypatch.setattr(Mask, "apply_json_lines", counting)
    options = RuntimeOptions(idle_seconds=0.5, install_signal_handlers=False)
    options.sink_limits.poll_timeout_s = 0.05
    options.sink_limits.idle_flush_s = 0.05
    asyncio.run(asyncio.wait_for(run_pipeline_async(config(tmp), until_idle=True, options=options), 60))
    out = b"".join(p.read_bytes() for p in sorted((tmp / "out").iterdir()))
    return out.splitlines(), blocks


def documents(n: int) -> list[bytes]:
    return [b'{"i": %d, "user": "u%d@example.com", "meta": {"ip": "10.0.0.%d"}, "msg": "h\\u00e9"}'
            % (i, i % 13, i % 5) for i in range(n)]


def test_blocks_go_through_the_batch_form_and_write_what_records_would(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lines = documents(3000)
    got, blocks = run(tmp_path, lines, monkeypatch)
    assert got == model(lines)
    assert sum(blocks) == len(lines) and len(blocks) < len(lines) / 10  # blocks, not one call per line


def test_a_rejected_line_sends_its_block_record_by_record_in_order(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lines = documents(2000)
    lines[700] = b"not json"  # mask rejects it: skipped by the policy
    lines[1500] = b'{"user": "a", "big": 123456789012345678901234567890}'  # orjson would read a float
    got, _ = run(tmp_path, lines, monkeypatch)
    want = model(lines)
    assert len(want) == len(lines) - 1
    assert got == want


def test_batch_forms_are_declared_not_probed() -> None:
    keys, values = StringConverter(), JsonConverter()
    mask = Mask(MaskConfig(**MASK))
    rename = Rename(RenameConfig(fields={"a": "b"}))  # no batch form
    assert encoded_as([mask], keys, values) == "json-lines"
    assert encoded_as([mask, mask], keys, values) == "json-lines"
    assert encoded_as([mask, rename], keys, values) is None
    assert encoded_as([mask], values, values) is None  # keys of lines are the string converter's bytes
    assert encoded_as([mask], keys, keys) is None
    assert encoded_as([], keys, keys) == "string"


class Doubling(Mask):
    """A batch form that breaks the contract: two lines out for each line in."""

    def apply_json_lines(self, block: bytes) -> bytes | None:
        return block + block


def test_a_batch_form_that_changes_the_line_count_is_an_error() -> None:
    block = b"".join(line + b"\n" for line in documents(3))
    assert _through_batch_forms([Mask(MaskConfig(**MASK))], block, 3) is not None
    with pytest.raises(PluginError, match="Doubling: apply_json_lines returned 6 lines for 3"):
        _through_batch_forms([Mask(MaskConfig(**MASK)), Doubling(MaskConfig(**MASK))], block, 3)
