"""The ``log:`` block (embedded or Kafka) and the ``topics:`` the pipeline declares in it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..backends.kafka_security import SECURITY_KEYS, KafkaSecurity
from .base import Model, TopicName


class EmbeddedLog(Model):
    dir: str
    fsync: bool = True


class KafkaLog(Model):
    bootstrap_servers: str
    client_id: str = "millpond"
    config: dict[str, Any] = Field(default_factory=dict)
    #: TLS and SASL (see core/backends/kafka_security.py)
    security: KafkaSecurity | None = None

    @model_validator(mode="after")
    def _security_in_its_block(self) -> KafkaLog:
        owned = sorted(set(self.config) & SECURITY_KEYS)
        if owned:
            raise ValueError(f"config: {', '.join(owned)} belong(s) in the 'security:' block "
                             "(protocol, ssl, sasl), which millpond turns into aiokafka's settings")
        return self


class LogConfig(Model):
    embedded: EmbeddedLog | None = None
    kafka: KafkaLog | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> LogConfig:
        if (self.embedded is None) == (self.kafka is None):
            raise ValueError("give exactly one of 'embedded' or 'kafka'")
        return self


class TopicConfig(Model):
    name: TopicName
    partitions: int = Field(default=1, ge=1, le=10_000)
    config: dict[str, Any] = Field(default_factory=dict)
