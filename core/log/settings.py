"""Per-topic settings, spelled as Kafka spells them (``retention.ms``, ...).

Stored as ``topic.json`` beside the topic's partition folders.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError, InvalidTopicError

DAY_MS = 24 * 60 * 60 * 1000

_LEGAL_TOPIC = re.compile(r"^[a-zA-Z0-9._-]+$")
MAX_TOPIC_LENGTH = 249


def validate_topic_name(name: str) -> str:
    """Kafka's rule. A name is also a folder name, so this is the path-traversal guard."""
    if not isinstance(name, str) or not name:
        raise InvalidTopicError("topic name is empty")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name {name!r} is not allowed")
    if len(name) > MAX_TOPIC_LENGTH:
        raise InvalidTopicError(f"topic name is {len(name)} characters long; the limit is {MAX_TOPIC_LENGTH}")
    if not _LEGAL_TOPIC.match(name):
        raise InvalidTopicError(
            f"topic name {name!r} has illegal characters; use only ASCII letters, digits, '.', '_' and '-'"
        )
    return name


class TopicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    segment_bytes: int = Field(1 << 30, alias="segment.bytes", ge=1024)
    segment_ms: int = Field(7 * DAY_MS, alias="segment.ms", ge=1)
    retention_ms: int = Field(7 * DAY_MS, alias="retention.ms", ge=-1)
    retention_bytes: int = Field(-1, alias="retention.bytes", ge=-1)
    cleanup_policy: Literal["delete", "compact", "compact,delete", "delete,compact"] = Field(
        "delete", alias="cleanup.policy"
    )
    delete_retention_ms: int = Field(DAY_MS, alias="delete.retention.ms", ge=0)
    min_compaction_lag_ms: int = Field(0, alias="min.compaction.lag.ms", ge=0)
    min_cleanable_dirty_ratio: float = Field(0.5, alias="min.cleanable.dirty.ratio", ge=0.0, le=1.0)
    message_timestamp_type: Literal["CreateTime", "LogAppendTime"] = Field(
        "CreateTime", alias="message.timestamp.type"
    )
    compression_type: Literal["none", "gzip", "lz4", "zstd", "producer"] = Field(
        "none", alias="compression.type"
    )
    flush_messages: int | None = Field(None, alias="flush.messages", ge=1)
    flush_ms: int | None = Field(None, alias="flush.ms", ge=0)
    #: a hash chain over the records of each partition (millpond.audit); see README "Audit logs"
    audit_chain: Literal["none", "sha256"] = Field("none", alias="audit.chain")

    @model_validator(mode="after")
    def _chain_keeps_every_record(self) -> TopicSettings:
        # Compaction removes records from chained blocks (verify would call it tampering), and
        # LogAppendTime rewrites timestamps after the block's hash was taken.
        if self.audit_chain != "none" and self.compact:
            raise ValueError(f"audit.chain {self.audit_chain} needs cleanup.policy delete, not "
                             f"{self.cleanup_policy}: compaction would remove chained records")
        if self.audit_chain != "none" and self.message_timestamp_type == "LogAppendTime":
            raise ValueError("audit.chain needs message.timestamp.type CreateTime: LogAppendTime rewrites "
                             "timestamps after the chain hashed them")
        return self

    @property
    def compact(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def delete(self) -> bool:
        return "delete" in self.cleanup_policy

    @classmethod
    def parse(cls, config: dict[str, Any], topic: str = "") -> TopicSettings:
        """From Kafka-named keys; ``compression`` and ``both`` are accepted as short forms."""
        values = dict(config)
        if "compression" in values:
            values["compression.type"] = values.pop("compression")
        if values.get("cleanup.policy") == "both":
            values["cleanup.policy"] = "compact,delete"
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            where = f" of topic {topic!r}" if topic else ""
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"]
                else str(e["msg"]).removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ConfigError(f"invalid settings{where}: {problems}") from None

    def as_kafka(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)
