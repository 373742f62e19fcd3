"""The seams a connector author implements: Source, Sink and Transform.

They stay small on purpose (Kafka Connect's SourceTask/SinkTask, bytewax's
snapshot contract). A connector never touches the log: the runtime appends
what a source returns, hands a sink what the log holds, and decides when
progress is committed.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from .records import EncodedRecords, JsonRecords, PartitionBatches, Record, TopicPartition


class Guarantee(enum.IntEnum):
    """Delivery guarantees, weakest first, so they compare with ``<``."""

    at_most_once = 0
    at_least_once = 1
    exactly_once = 2


class ConnectorConfig(BaseModel):
    """Base of every connector's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class SourceBatch:
    """What one ``Source.poll`` returns.

    ``offset`` is the source offset *after* the last of ``records``
    (JSON-ready). The runtime appends the records and this source offset in one
    log transaction; after a restart it hands the last committed source offset to
    ``Source.start``. A batch may carry no records and only move the
    source offset (a heartbeat, a skipped line).

    ``encoded`` holds records the source already serialised as JSON, column
    by column (see :class:`~millpond.records.JsonRecords`); they are appended
    after ``records``, in the order given.
    """

    records: list[Record]
    offset: Any
    encoded: list[JsonRecords] = field(default_factory=list)


@dataclass(slots=True)
class ConnectorContext:
    """What the runtime tells a connector about where it runs."""

    name: str
    pipeline: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: set by the runtime before ``Source.start``: the converter (``"json"``, ``"string"``) whose bytes
    #: the log takes as they are in ``SourceBatch.encoded`` columns; None when the pipeline wants
    #: records (transforms, other converters), so a source that can do both returns records.
    #: ``"json-lines"``: every transform has a batch form, so a source of JSON documents may hand over
    #: their lines as they are (:class:`~millpond.records.JsonLines`), unparsed
    encoded_as: str | None = None


class Source(ABC):
    """A source task: reads an external system and returns records.

    Lifecycle: ``start(offset)`` once, ``poll()`` repeatedly, ``commit(offset)``
    after each source offset is durable in the log, ``stop()`` once.
    """

    guarantee: ClassVar[Guarantee] = Guarantee.at_least_once
    #: why ``guarantee`` is not stronger; quoted when a pipeline asks for more
    guarantee_reason: ClassVar[str] = ""
    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        self.config = config
        self.context = context

    @abstractmethod
    async def start(self, offset: Any | None) -> None:
        """Resume after ``offset`` (the last committed source offset) or from the beginning."""

    @abstractmethod
    async def poll(self) -> SourceBatch | None:
        """Return the next batch, or None when nothing is ready now. Must not block for long."""

    async def commit(self, offset: Any) -> None:
        """``offset`` is now durable in the log; the source may release what precedes it."""

    @classmethod
    def validate_offset(cls, offset: Any) -> Any:
        """Check an offset a user wants this source to resume from (``PATCH .../offsets``); return it
        as ``start`` expects it, or raise ``ValueError`` saying what is wrong.

        Called before anything is changed, so a bad offset never reaches the checkpoint store. The
        default accepts any JSON object; a source whose checkpoint has a shape declares it here.
        """
        if not isinstance(offset, dict):
            raise ValueError(f"an offset of {cls.__name__} is a JSON object, not {type(offset).__name__}")
        return offset

    async def stop(self) -> None:
        """Release resources. Called once, also after a failure."""

    def origin_of(self, record: Record) -> dict[str, Any] | None:
        """Where ``record`` (one of the last batch's records) came from, for a dead letter's headers:
        a file's path, inode and byte position, a table and an LSN. Asked only for rejected records,
        so it may be slow. None: the runtime names the batch's checkpoint instead."""
        return None


class Sink(ABC):
    """A sink task: writes records from the log into an external system.

    Lifecycle: ``start()`` once; then ``write(records)`` any number of times and
    ``flush(offsets)`` to make everything written so far durable; ``stop()``.
    """

    guarantee: ClassVar[Guarantee] = Guarantee.at_least_once
    #: why ``guarantee`` is not stronger; quoted when a pipeline asks for more
    guarantee_reason: ClassVar[str] = ""
    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig
    #: the sink keeps its offsets in its own store (``start`` returns them): an offset reset must be
    #: written there, through ``reset_offsets``, or the sink would ignore it. Checked when the pipeline is read.
    owns_offsets: ClassVar[bool] = False
    #: the sink can take what the log holds undecoded (``write_batches``); the runtime hands it
    #: batches when the pipeline has no transforms, string converters and a backend that reads
    #: batches, and records otherwise
    takes_batches: ClassVar[bool] = False
    #: the converter (``"json"``) whose bytes the sink can parse itself (``write_encoded``): when both of
    #: the connector's converters are that one, the pipeline has no transforms and the backend reads
    #: batches, the runtime hands it each poll's keys and values in columns instead of decoded records
    takes_encoded: ClassVar[str | None] = None

    def __init__(self, config: Any, context: ConnectorContext) -> None:
        self.config = config
        self.context = context

    async def reset_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make the sink resume from ``offsets`` (the next offset to read, per partition given).

        Only for ``owns_offsets`` sinks. The runtime calls it on an instance it started for the
        purpose (after ``start``, before ``stop``, with no records written) while the connector's
        running task is paused and flushed. Records at or after the new offsets are written again
        as new output; what was written before stays, and must not be overwritten by the replay.
        """
        raise NotImplementedError(f"{type(self).__name__} declares owns_offsets but no reset_offsets")

    async def write_batches(self, polled: list[PartitionBatches]) -> int | None:
        """Write committed record batches as the log stores them (a ``takes_batches`` sink).

        Returns the number of records written, or None, having written nothing, when some record
        is not one the sink can take as it is (the runtime then decodes them and calls ``write``,
        which applies the error policy).
        """
        return None

    async def write_encoded(self, part: EncodedRecords) -> int:
        """Write one partition's records as the log holds them (a ``takes_encoded`` sink).

        Returns how many of them, from the first on, the sink took: everything before the first
        record it cannot take as it is (one that does not decode, or that ``write`` would reject).
        The runtime sends that record the record path (its converters, ``write`` and the error
        policy) and calls again with the records after it, so what the sink buffers is exactly
        what ``write`` would have buffered, in order.
        """
        return 0

    async def start(self) -> Mapping[TopicPartition, int] | None:
        """Open the sink.

        A sink that stores its own offsets together with its data (a
        transactional store) returns them: the next offset to read per
        partition, and the runtime seeks there. Others return None and resume
        from the consumer group's committed offsets.
        """
        return None

    @abstractmethod
    async def write(self, records: list[Record]) -> None:
        """Write records (in offset order per partition). May buffer."""

    @abstractmethod
    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Make everything written durable; ``offsets`` are the next offsets to read.

        A transactional sink stores ``offsets`` in the same commit as its data.
        Only after this returns does the runtime commit the group's offsets.
        """

    async def stop(self) -> None:
        """Release resources. Called once, also after a failure."""


class Transform(ABC):
    """A per-record function in a pipeline: one record in, zero or more out."""

    config_model: ClassVar[type[ConnectorConfig]] = ConnectorConfig

    def __init__(self, config: Any) -> None:
        self.config = config

    #: declared by a transform that also has a batch form, :meth:`apply_json_lines`; the runtime runs
    #: whole blocks through the chain when every transform in it declares one, and ``apply`` otherwise
    batch_form: ClassVar[bool] = False

    @abstractmethod
    def apply(self, record: Record) -> Iterable[Record]:
        """Return the records that replace ``record`` (empty to drop it)."""

    def apply_json_lines(self, block: bytes) -> bytes | None:
        """The batch form: ``block`` holds newline-ended JSON documents, one per record; return a block of
        the JSON the ``json`` converter would write for what ``apply`` makes of each (one record out per
        record in, same key and timestamp), or None when some document needs ``apply`` (the runtime then
        runs that block record by record, with the error policy). ``apply`` stays the reference."""
        raise NotImplementedError(f"{type(self).__name__} declares no batch form")


class Converter(ABC):
    """Turns a record's key and value into bytes for the log, and back."""

    @abstractmethod
    def serialize(self, value: Any) -> bytes | None:
        """Value to bytes; None stays None (a tombstone)."""

    @abstractmethod
    def deserialize(self, data: bytes | None) -> Any:
        """Bytes to value; None stays None."""
