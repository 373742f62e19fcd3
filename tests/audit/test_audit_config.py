"""configs/audit-log.yaml as a user runs it: events in, every one proven by a signed checkpoint."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from millpond.cli import main
from millpond.config import load_pipeline
from millpond.runtime import RuntimeOptions, run_pipeline_async

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def repo_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.delenv("MILLPOND_AUDIT_KEY", raising=False)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_the_audit_config_signs_what_it_ingests_and_verify_catches_an_edit(
        repo_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    options = RuntimeOptions(idle_seconds=0.5, install_signal_handlers=False)
    config = load_pipeline("configs/audit-log.yaml")
    assert config.audit is not None and config.audit.signing_key_file == "./configs/audit-demo.key"
    asyncio.run(asyncio.wait_for(run_pipeline_async(config, until_idle=True, options=options), 60))
    timed = sum(1 for line in (repo_copy / "configs/audit-input/events.jsonl").read_text().splitlines()
                if '"time"' in line)
    verify = ["verify", "audit-events", "--public-key", "configs/audit-demo.pub", "--log", "data/audit"]
    assert main(verify) == 0
    out = capsys.readouterr().out
    assert f"OK audit-events: {timed} records" in out and f"{timed} proven by " in out
    assert "0 chained, not yet signed" in out  # the shutdown checkpoint signed the rest

    # edit one event on disk (zstd: the attacker recompresses the batch and fixes its CRC)
    from millpond.log import batch as batch_format
    from millpond.log.codec import iter_records

    from .conftest import batches_of, write_segment

    segment = next(p for p in sorted((repo_copy / "data/audit/topics/audit-events").glob("*/*.log"))
                   if p.stat().st_size)
    batches = batches_of(segment)
    records = list(iter_records(bytes(batches[0])))
    rows = [batch_format.Row(r.key, r.value.replace(b'"actor":"', b'"actor":"x') if i == 0 else r.value, r.timestamp,
                             r.headers) for i, r in enumerate(records)]
    header = batch_format.read_header(batches[0])
    forged = batch_format.build_batch(rows, compression=batch_format.CODECS["zstd"],
                                      producer_id=header.producer_id, producer_epoch=header.producer_epoch,
                                      transactional=header.is_transactional)
    assert forged != batches[0]
    write_segment(segment, [forged, *batches[1:]])
    assert main(verify) == 3
    err = capsys.readouterr().err
    assert "edited record at offset 0" in err and segment.name in err
