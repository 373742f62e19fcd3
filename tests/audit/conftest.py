"""An audit topic written through the embedded backend, and the ways an attacker edits its files."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import crc32c
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from millpond.audit.checkpoints import Signer
from millpond.backends.base import TopicSpec
from millpond.backends.embedded import EmbeddedBackend
from millpond.cli import main
from millpond.log import batch as batch_format
from millpond.log.segment import LogSegment
from millpond.log.store import CLEAN_SHUTDOWN
from millpond.records import Record

TOPIC = "audit"


class Keys:
    def __init__(self, directory: Path) -> None:
        self.private = Ed25519PrivateKey.generate()
        self.private_file = directory / "audit.key"
        self.public_file = directory / "audit.pub"
        self.private_file.write_bytes(self.private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        self.public_file.write_bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def event(i: int) -> Record:
    value = b'{"seq":%d,"actor":"user%d","action":"file.read","path":"/srv/data/%08d"}' % (i, i % 17, i)
    return Record(value, b"user%d" % (i % 17), 1_700_000_000_000 + i * 1000)


async def open_backend(directory: Path, keys: Keys | None, *, every_records: int = 100,
                       config: dict[str, Any] | None = None, partitions: int = 1) -> EmbeddedBackend:
    backend = EmbeddedBackend(directory)
    await backend.open()
    if keys is not None:
        backend.enable_audit(Signer(keys.private), every_records=every_records, every_seconds=3600)
    settings = {"audit.chain": "sha256", "segment.bytes": 4096, **(config or {})}
    await backend.create_topic(TopicSpec(TOPIC, partitions, settings), exist_ok=True)
    return backend


async def append(backend: EmbeddedBackend, start: int, blocks: Sequence[int], partition: int = 0) -> int:
    """Blocks of the given sizes (one producer flush each); returns the next event number."""
    producer = backend.producer()
    i = start
    for size in blocks:
        for _ in range(size):
            await producer.send(TOPIC, event(i), partition)
            i += 1
        await producer.flush()
    return i


def write_log(directory: Path, keys: Keys | None, blocks: Sequence[int], **kw: Any) -> None:
    async def go() -> None:
        backend = await open_backend(directory, keys, **kw)
        await append(backend, 0, blocks)
        await backend.close()

    asyncio.run(go())


def verify(capsys: pytest.CaptureFixture[str], directory: Path, keys: Keys | None, *extra: str) -> tuple[int, str]:
    args = ["verify", TOPIC, "--log", str(directory), *extra]
    if keys is not None:
        args += ["--public-key", str(keys.public_file)]
    code = main(args)
    out, err = capsys.readouterr()
    return code, out + err


# -- the attacker's tools: whole batches, offsets renumbered, CRCs recomputed --


def partition_dir(directory: Path, partition: int = 0, topic: str = TOPIC) -> Path:
    return directory / "topics" / topic / str(partition)


def segment_files(directory: Path, partition: int = 0) -> list[Path]:
    return sorted(partition_dir(directory, partition).glob("*.log"))


def batches_of(path: Path) -> list[bytearray]:
    segment = LogSegment(path.parent, int(path.stem), writable=False)
    try:
        return [bytearray(segment.read_bytes(pos, h.size)) for pos, h in segment.walk()]
    finally:
        segment.close()


def recompute_crc(batch: bytearray) -> None:
    batch[17:21] = crc32c.crc32c(bytes(batch[21:])).to_bytes(4, "big")


def write_segment(path: Path, batches: Sequence[bytearray], base_offset: int | None = None) -> None:
    """The batches as the segment file, base offsets renumbered from ``base_offset`` (default: the file's
    own); its indexes removed (the attacker leaves nothing that disagrees)."""
    offset = int(path.stem) if base_offset is None else base_offset
    out = []
    for batch in batches:
        batch_format.set_base_offset(batch, offset)
        offset = batch_format.read_header(batch).next_offset
        out.append(bytes(batch))
    path.write_bytes(b"".join(out))
    for suffix in (".index", ".timeindex"):
        path.with_suffix(suffix).unlink(missing_ok=True)


def edit_value(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes inside an uncompressed batch of the segment and recompute that batch's CRC."""
    assert len(old) == len(new)
    batches = batches_of(path)
    for batch in batches:
        at = batch.find(old)
        if at >= 0:
            batch[at : at + len(old)] = new
            recompute_crc(batch)
            write_segment(path, batches)
            return
    raise AssertionError(f"{old!r} not in {path}")


def crash(directory: Path) -> None:
    """As if the writer died: no clean-shutdown marker (recovery runs at the next open)."""
    (directory / CLEAN_SHUTDOWN).unlink(missing_ok=True)


def tear_tail(directory: Path, partition: int, cut: int) -> None:
    """A torn write: the last ``cut`` bytes of the newest segment never reached the disk."""
    path = segment_files(directory, partition)[-1]
    size = path.stat().st_size
    os.truncate(path, max(0, size - cut))
