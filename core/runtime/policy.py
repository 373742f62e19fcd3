"""The per-connector error policy for records that cannot be handled.

A :class:`~millpond.errors.RecordError` raised while converting, transforming
or writing one record is handed to :class:`ErrorPolicyHandler`:

- ``fail``: re-raise; the task stops and the pipeline reports why.
- ``skip``: log the record's topic, partition and offset (or the source
  offset) at WARNING and go on. Nothing disappears silently.
- ``dead_letter``: build a record for the dead-letter topic carrying the
  original key and value plus headers naming the error, the connector, the
  stage and where the record came from; the caller appends it.

Where a record came from: a record read from the log names its topic,
partition and offset; a record a source rejected before it reached the log
names its position in the source, one ``millpond.error.source.<field>``
header per field ``Source.origin_of`` gives (the file source: path, inode,
position, line; the Postgres source: table, lsn, txid, or for a snapshot row
the table, snapshot and chunk; syslog: transport, peer, message number), or
``millpond.error.source.checkpoint``, the source's checkpoint after the
record's batch, when the source cannot say more.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ErrorPolicy
from ..errors import RecordError
from ..records import Record

log = logging.getLogger("millpond.runtime.errors")

#: header names on a dead-lettered record
H_ERROR = "millpond.error"
H_STAGE = "millpond.error.stage"
H_CONNECTOR = "millpond.error.connector"
H_TOPIC = "millpond.error.topic"
H_PARTITION = "millpond.error.partition"
H_OFFSET = "millpond.error.offset"
#: prefix of the headers naming a source position (``millpond.error.source.path``, ...)
H_SOURCE = "millpond.error.source."


def describe_origin(connector: str, origin: Mapping[str, Any]) -> str:
    """``source 'tail' at path=in/a.log inode=12 position=350 line=8``: one line for the log."""
    fields = " ".join(f"{k}={v if isinstance(v, (str, int)) else json.dumps(v, sort_keys=True)}"
                      for k, v in origin.items())
    return f"source {connector!r} at {fields}" if fields else f"source {connector!r}"


def _as_bytes(value: Any) -> bytes | None:
    """Best-effort bytes of a value that may not have been serialised yet."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    except (TypeError, ValueError):
        return repr(value).encode()


@dataclass(slots=True)
class ErrorCounts:
    skipped: int = 0
    dead_lettered: int = 0


class ErrorPolicyHandler:
    """Applies one connector's error policy; counts what it skipped or dead-lettered."""

    def __init__(self, connector: str, policy: ErrorPolicy) -> None:
        self.connector = connector
        self.policy = policy
        self.counts = ErrorCounts()

    @property
    def dead_letter_topic(self) -> str | None:
        return self.policy.topic if self.policy.policy == "dead_letter" else None

    def handle(
        self,
        exc: RecordError,
        record: Record,
        stage: str,
        *,
        where: str | None = None,
        topic: str | None = None,
        source: Mapping[str, Any] | None = None,
    ) -> Record | None:
        """Apply the policy to ``record`` that failed at ``stage``.

        Returns the dead-letter record to append (policy ``dead_letter``), None
        when the record is skipped, and re-raises under ``fail``. A record that
        has no topic/partition/offset yet (a source record before it reaches
        the log) is described by ``source``, its position in the source, or
        else by ``where``.
        """
        if source is not None and where is None:
            where = describe_origin(self.connector, source)
        origin = where or self._origin(record)
        if self.policy.policy == "fail":
            raise RecordError(
                f"connector {self.connector!r}: {stage} failed for record at {origin}: {exc} "
                f"(error policy 'fail'; use 'skip' or 'dead_letter' to go on)"
            ) from exc
        if self.policy.policy == "skip":
            self.counts.skipped += 1
            log.warning(
                "connector %r: skipped record at %s (%s failed: %s)", self.connector, origin, stage, exc
            )
            return None
        self.counts.dead_lettered += 1
        log.warning(
            "connector %r: record at %s dead-lettered to %r (%s failed: %s)",
            self.connector, origin, self.policy.topic, stage, exc,
        )
        headers: list[tuple[str, bytes | None]] = list(record.headers or [])
        headers += [
            (H_ERROR, str(exc).encode()),
            (H_STAGE, stage.encode()),
            (H_CONNECTOR, self.connector.encode()),
            (H_TOPIC, (record.topic or topic or "").encode()),
            (H_PARTITION, b"" if record.partition is None else str(record.partition).encode()),
            (H_OFFSET, (b"" if record.offset is None else str(record.offset).encode()) if where is None
             else where.encode()),
        ]
        headers += [(H_SOURCE + name, _as_bytes(value if isinstance(value, str) else json.dumps(value)))
                    for name, value in (source or {}).items()]
        return Record(
            value=_as_bytes(record.value),
            key=_as_bytes(record.key),
            timestamp=record.timestamp,
            headers=headers,
        )

    @staticmethod
    def _origin(record: Record) -> str:
        if record.topic is not None and record.partition is not None and record.offset is not None:
            return f"topic {record.topic!r} partition {record.partition} offset {record.offset}"
        return "an unknown position"
