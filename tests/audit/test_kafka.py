"""The chain on the real Kafka: an audit topic copied from the embedded log (re-batched, new offsets)
verifies with `millpond verify` against the broker; an edit and a cut tail in the copy are found."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from millpond.audit.checkpoints import CHECKPOINT_TOPIC, Signer
from millpond.backends import open_backend
from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.cli import main
from millpond.config import LogConfig

from .conftest import Keys, event
from .test_copy import copy_topic

pytestmark = pytest.mark.kafka


def copy_to_kafka(tmp_path: Path, keys: Keys, bootstrap: str, topic: str, **copy: int) -> None:
    async def go() -> None:
        source = EmbeddedBackend(tmp_path / "log")
        await source.open()
        source.enable_audit(Signer(keys.private), every_records=10, every_seconds=3600)
        await source.create_topic(TopicSpec(topic, 2, {"audit.chain": "sha256", "compression.type": "zstd"}))
        producer = source.producer()
        i = 0
        for partition, blocks in ((0, [6, 9, 5]), (1, [7, 3])):
            for size in blocks:
                for _ in range(size):
                    await producer.send(topic, event(i), partition)
                    i += 1
                await producer.flush()
        await source.close()
        source = EmbeddedBackend(tmp_path / "log", readonly=True)
        await source.open()
        kafka = open_backend(LogConfig.model_validate({"kafka": {"bootstrap_servers": bootstrap}}))
        await kafka.open()
        try:
            await asyncio.wait_for(copy_topic(source, kafka, topic, **copy), 120)
            await asyncio.wait_for(copy_topic(source, kafka, CHECKPOINT_TOPIC), 120)
        finally:
            await kafka.close()
            await source.close()

    asyncio.run(go())


def verify(capsys: pytest.CaptureFixture[str], tmp_path: Path, bootstrap: str, topic: str, keys: Keys) -> tuple[int, str]:
    pipeline = tmp_path / "kafka.yaml"
    pipeline.write_text(f"log:\n  kafka: {{bootstrap_servers: '{bootstrap}'}}\n")
    code = main(["verify", topic, "-c", str(pipeline), "--public-key", str(keys.public_file)])
    out, err = capsys.readouterr()
    return code, out + err


def test_a_topic_copied_to_kafka_verifies_and_an_edit_there_is_found(
        tmp_path: Path, keys: Keys, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    copy_to_kafka(tmp_path / "a", keys, kafka_bootstrap, topic)
    code, out = verify(capsys, tmp_path, kafka_bootstrap, topic, keys)
    assert code == 0, out
    assert f"OK {topic}: 30 records in 5 blocks, 30 proven by " in out

    edited = f"audit-{uuid.uuid4().hex[:8]}"
    copy_to_kafka(tmp_path / "b", keys, kafka_bootstrap, edited, edit_offset=8)
    code, out = verify(capsys, tmp_path, kafka_bootstrap, edited, keys)
    assert code == 3, out
    assert f"{edited}-0: edited record at offset 6 (kafka:{edited}-0" in out


def test_a_tail_cut_on_kafka_is_found(tmp_path: Path, keys: Keys, kafka_bootstrap: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    topic = f"audit-{uuid.uuid4().hex[:8]}"
    copy_to_kafka(tmp_path, keys, kafka_bootstrap, topic, drop_last=5)
    code, out = verify(capsys, tmp_path, kafka_bootstrap, topic, keys)
    assert code == 3, out
    assert f"{topic}-0: tail cut after a signed checkpoint" in out
