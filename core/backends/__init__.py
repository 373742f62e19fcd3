"""Log backends: the embedded log (default) and Apache Kafka."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError
from .base import LogBackend

if TYPE_CHECKING:
    from ..config import LogConfig


def open_backend(log: LogConfig, *, readonly: bool = False) -> LogBackend:
    """The backend a pipeline's ``log:`` block names (not yet opened: ``await backend.open()``)."""
    if log.embedded is not None:
        from .embedded import EmbeddedBackend

        return EmbeddedBackend(log.embedded.dir, readonly=readonly, fsync=log.embedded.fsync)
    if log.kafka is not None:
        from .kafka import KafkaBackend

        return KafkaBackend(log.kafka.bootstrap_servers, client_id=log.kafka.client_id, config=log.kafka.config,
                            security=log.kafka.security)
    raise ConfigError("log: give exactly one of 'embedded' or 'kafka'")


__all__ = ["LogBackend", "open_backend"]
