"""One exception tree for millpond.

Every error carries ``retriable``: the runtime restarts a task that failed with
a retriable error (with backoff) and stops one that failed with a terminal
error, reporting why.
"""

from __future__ import annotations


class MillpondError(Exception):
    """Root of every error millpond raises on purpose."""

    retriable: bool = False


class ConfigError(MillpondError):
    """A pipeline file, topic setting or connector config is invalid."""


class InvalidTopicError(ConfigError):
    """A topic name is not a legal Kafka topic name."""


class UnknownTopicError(MillpondError):
    """The topic does not exist."""


class TopicExistsError(MillpondError):
    """The topic already exists."""


class OffsetOutOfRangeError(MillpondError):
    """A read asked for an offset before the log start or past the log end."""


class CorruptRecordError(MillpondError):
    """A batch failed its CRC or structural checks. Never served as data."""


class LogLockedError(MillpondError):
    """Another process holds the log directory's writer lock."""


class TransactionError(MillpondError):
    """A transaction was used after it ended, or could not commit."""


class GroupRebalancedError(MillpondError):
    """A consumer group member's commit came while (or after) the group moved its partitions:
    the commit was refused, so a partition it may no longer own is never committed by it."""

    retriable = True


class ProducerFencedError(TransactionError):
    """A newer producer with the same transactional id started (another worker took the task over):
    this one can never commit again. Terminal for the producer, not for a worker in a cluster."""


class DeliveryGuaranteeError(ConfigError):
    """A pipeline asks for a stronger guarantee than its connectors give."""


class PluginError(MillpondError):
    """A plugin could not be loaded or registered something invalid."""


class ConnectorError(MillpondError):
    """A connector failed. Subclasses say whether a restart can help."""


class RetriableConnectorError(ConnectorError):
    """A transient failure (timeout, server unavailable): retry with backoff."""

    retriable = True


class RecordError(MillpondError):
    """One record could not be converted, transformed or written.

    The error policy of the connector decides what happens to it: fail the
    task, skip the record, or send it to a dead-letter topic.
    """


class StorageError(MillpondError):
    """The log's files could not be written (EIO, a read-only file system, ...).

    Retriable: the runtime restarts the task with backoff; a transaction that
    failed half-way is completed (aborted) before its producer is used again.
    """

    retriable = True

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class DiskFullError(StorageError):
    """The log's file system is full (ENOSPC).

    A state, not a crash: the runtime pauses sources, says so once (which path,
    how much is free), and resumes by itself when space returns.
    """

    def __init__(self, message: str, *, path: str = "", free_bytes: int = 0) -> None:
        super().__init__(message, path=path)
        self.free_bytes = free_bytes
