"""Signed checkpoints: Ed25519 signatures over where a partition's chain stands.

A checkpoint says "partition P of topic T had chain hash H after seq S records,
its block ending at offset O, at time_ms" and is signed with the pipeline's
audit key. Everything up to a checkpoint whose hash matches the recomputed
chain is proven: changing it would need a second sha256 preimage or the key.

Checkpoints are records of the internal topic ``__audit_checkpoints`` (one
partition, cleanup delete, retention -1: they are the anchors that outlive the
segments retention deletes). Key ``topic/partition``, value JSON::

    {"topic", "partition", "offset", "seq", "hash" (hex), "time_ms", "key_id", "signature" (hex)}

The signature covers :meth:`Checkpoint.signed_bytes`, a fixed binary form, not
the JSON (whose spelling a copy may change).

They are not written in the transaction of the data they cover, but after it
and after that data is fsynced: the chain includes aborted blocks anyway (so
atomic visibility buys nothing), and what a checkpoint must never do is claim
data that a crash can still take away, which fsync-before-checkpoint rules
out. A checkpoint lost in a crash leaves its records "chained, not yet
signed" until the next one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError, MillpondError, UnknownTopicError
from ..log.batch import Row
from ..log.partition import Partition
from ..log.store import LogStore
from .chain import Link

log = logging.getLogger(__name__)

CHECKPOINT_TOPIC = "__audit_checkpoints"
CHECKPOINT_TOPIC_CONFIG: dict[str, Any] = {"cleanup.policy": "delete", "retention.ms": -1, "retention.bytes": -1}
_DOMAIN = b"millpond.audit.checkpoint.v1\0"
_FIXED = struct.Struct(">iqQ32sq")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    topic: str
    partition: int
    offset: int  # the last offset of the block it signs
    seq: int
    hash: bytes
    time_ms: int
    key_id: str
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        topic = self.topic.encode()
        key_id = self.key_id.encode()
        return b"".join((_DOMAIN, struct.pack(">H", len(topic)), topic,
                         _FIXED.pack(self.partition, self.offset, self.seq, self.hash, self.time_ms),
                         struct.pack(">H", len(key_id)), key_id))

    def to_json(self) -> bytes:
        return json.dumps({"topic": self.topic, "partition": self.partition, "offset": self.offset, "seq": self.seq,
                           "hash": self.hash.hex(), "time_ms": self.time_ms, "key_id": self.key_id,
                           "signature": self.signature.hex()}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Checkpoint:
        """Raises ValueError (or KeyError/TypeError) on a malformed record; the caller names where."""
        d = json.loads(raw)
        digest = bytes.fromhex(d["hash"])
        if len(digest) != 32:
            raise ValueError(f"hash is {len(digest)} bytes, not 32")
        return cls(str(d["topic"]), int(d["partition"]), int(d["offset"]), int(d["seq"]), digest,
                   int(d["time_ms"]), str(d["key_id"]), bytes.fromhex(d["signature"]))

    def signed_by(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(self.signature, self.signed_bytes())
        except InvalidSignature:
            return False
        return True


def key_id(public: Ed25519PublicKey) -> str:
    """A short name of the key (sha256 of its raw bytes, 16 hex digits), so a rotation is visible."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """A PEM (PKCS#8, as ``openssl genpkey -algorithm ed25519`` writes) Ed25519 private key.
    Errors name the file, never its contents."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"audit signing key {path}: cannot read it ({exc.strerror})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"audit signing key {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"audit signing key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """A PEM Ed25519 public key (``openssl pkey -pubout``), or the private key file itself."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"audit public key {path}: cannot read it ({exc.strerror})") from None
    try:
        key: Any = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise ConfigError(f"audit public key {path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"audit public key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


class Signer:
    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    def __repr__(self) -> str:  # never the key
        return f"Signer(key_id={self.key_id})"

    def sign(self, topic: str, partition: int, offset: int, link: Link, time_ms: int) -> Checkpoint:
        unsigned = Checkpoint(topic, partition, offset, link.seq, link.hash, time_ms, self.key_id)
        return Checkpoint(topic, partition, offset, link.seq, link.hash, time_ms, self.key_id,
                          self._private.sign(unsigned.signed_bytes()))


def ensure_topic(store: LogStore) -> Partition:
    if CHECKPOINT_TOPIC not in store.topics:
        store.create_topic(CHECKPOINT_TOPIC, 1, dict(CHECKPOINT_TOPIC_CONFIG))
    return store.partition(CHECKPOINT_TOPIC, 0)


@dataclass(slots=True)
class _Unsigned:
    partition: Partition
    offset: int
    link: Link
    records: int  # chained since the last checkpoint
    since: float  # monotonic time of the first of them


class Checkpointer:
    """Writes a checkpoint per chained partition every ``every_records`` records or
    ``every_seconds`` (looked at on each append, and by a timer on the event loop once
    :meth:`start` ran, so a partition that went quiet is signed too), and for every
    partition with unsigned records at :meth:`close`."""

    def __init__(self, store: LogStore, signer: Signer, *, every_records: int = 1_000_000,
                 every_seconds: float = 60.0, fsync: bool = True) -> None:
        self.store = store
        self.signer = signer
        self.every_records = every_records
        self.every_seconds = every_seconds
        self.fsync = fsync
        self._partition = ensure_topic(store)
        self._unsigned: dict[str, _Unsigned] = {}
        self.written = 0
        self._timer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """The timer for quiet partitions, on the running event loop (where appends run too)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a script): appends and close() still write them
            return
        if self._timer is None:
            self._timer = loop.create_task(self._tick(), name="millpond:audit-checkpoints")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.every_seconds / 4))
            try:
                self.write_due()
            except (MillpondError, OSError) as exc:  # the next tick, or the next append, tries again
                log.error("audit checkpoint not written: %s", exc)

    def write_due(self) -> None:
        now = time.monotonic()
        for name, pending in list(self._unsigned.items()):
            if now - pending.since >= self.every_seconds:
                self.write(name)

    def on_block(self, partition: Partition, offset: int, link: Link, records: int) -> None:
        now = time.monotonic()
        pending = self._unsigned.get(partition.name)
        if pending is None:
            pending = self._unsigned[partition.name] = _Unsigned(partition, offset, link, 0, now)
        pending.partition, pending.offset, pending.link = partition, offset, link
        pending.records += records
        if pending.records >= self.every_records or now - pending.since >= self.every_seconds:
            self.write(partition.name)

    def write(self, name: str) -> None:
        pending = self._unsigned.pop(name, None)
        if pending is None:
            return
        partition = pending.partition
        # The data first: a checkpoint must never claim records a crash can still take away.
        partition.flush(self.fsync)
        checkpoint = self.signer.sign(partition.topic, partition.partition, pending.offset, pending.link,
                                      int(time.time() * 1000))
        self._partition.append([Row(f"{partition.topic}/{partition.partition}".encode(), checkpoint.to_json(),
                                    checkpoint.time_ms, [])])
        self._partition.flush(self.fsync)
        self.written += 1
        log.debug("audit checkpoint %s offset %d seq %d", name, pending.offset, pending.link.seq)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for name in list(self._unsigned):
            self.write(name)


def read_checkpoints(store: LogStore, topic: str) -> list[tuple[int, Checkpoint | str]]:
    """(offset in ``__audit_checkpoints``, checkpoint or why it is unreadable) for ``topic``, in order."""
    from ..log import batch as batch_format

    try:
        partition = store.partition(CHECKPOINT_TOPIC, 0)
    except UnknownTopicError:
        return []
    if not partition.writable:
        partition.refresh()
    out: list[tuple[int, Checkpoint | str]] = []
    offset = partition.log_start_offset
    while offset < partition.high_watermark:
        result = partition.read(offset, 4 << 20)
        if not result.batches:
            break
        for batch in result.batches:
            for record in batch_format.iter_records(batch.data):
                found = checkpoint_of(record.key, record.value, topic)
                if found is not None:
                    out.append((record.offset, found))
        offset = result.next_offset
    return out


def checkpoint_of(key: bytes | None, value: bytes | None, topic: str) -> Checkpoint | str | None:
    """What a record of ``__audit_checkpoints`` says of ``topic``: its checkpoint, why it cannot be read,
    or None when it is another topic's (keys are ``topic/partition``)."""
    if key is None or not bytes(key).startswith(f"{topic}/".encode()):
        return None
    try:
        checkpoint = Checkpoint.from_json(value or b"")
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable checkpoint ({exc})"
    return checkpoint if checkpoint.topic == topic else None

