"""Pydantic models of a pipeline YAML file.

A pipeline file declares the log, the topics and the connectors::

    name: quickstart
    log:
      embedded: {dir: ./data/quickstart}
    topics:
      - name: lines
        partitions: 3
        config: {retention.ms: 604800000}
    connectors:
      - name: tail
        kind: source
        type: file
        topic: lines
        config: {path: "./in/*.log"}
        transforms: [{type: mask, config: {fields: [email]}}]
        converter: {key: string, value: string}
        errors: {policy: dead_letter, topic: lines-dlq}
        guarantee: exactly_once
      - name: out
        kind: sink
        type: file
        topics: [lines]
        config: {dir: ./out}
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .connector import Guarantee


def _guarantee(value: Any) -> Any:
    return Guarantee[value] if isinstance(value, str) and value in Guarantee.__members__ else value


GuaranteeName = Annotated[Guarantee, BeforeValidator(_guarantee)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class EmbeddedLog(Model):
    dir: str
    fsync: bool = True


class KafkaLog(Model):
    bootstrap_servers: str
    client_id: str = "millpond"
    config: dict[str, Any] = Field(default_factory=dict)


class LogConfig(Model):
    embedded: EmbeddedLog | None = None
    kafka: KafkaLog | None = None

    @model_validator(mode="after")
    def _one_backend(self) -> LogConfig:
        if (self.embedded is None) == (self.kafka is None):
            raise ValueError("give exactly one of 'embedded' or 'kafka'")
        return self


class TopicConfig(Model):
    name: str
    partitions: int = Field(default=1, ge=1, le=10_000)
    config: dict[str, Any] = Field(default_factory=dict)


class TransformConfig(Model):
    type: str
    config: dict[str, Any] = Field(default_factory=dict)


class ConverterConfig(Model):
    key: str = "string"
    value: str = "json"


class ErrorPolicy(Model):
    policy: Literal["fail", "skip", "dead_letter"] = "fail"
    topic: str | None = None

    @model_validator(mode="after")
    def _dlq_needs_topic(self) -> ErrorPolicy:
        if self.policy == "dead_letter" and not self.topic:
            raise ValueError("policy 'dead_letter' needs a 'topic'")
        return self


class ConnectorSpec(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,200}$")
    kind: Literal["source", "sink"]
    type: str
    #: sources: the topic records go to unless a record (or a route transform) names one
    topic: str | None = None
    #: sinks: the topics the sink consumes
    topics: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    transforms: list[TransformConfig] = Field(default_factory=list)
    converter: ConverterConfig = Field(default_factory=ConverterConfig)
    errors: ErrorPolicy = Field(default_factory=ErrorPolicy)
    guarantee: GuaranteeName = Guarantee.at_least_once
    tasks: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _topics_by_kind(self) -> ConnectorSpec:
        if self.kind == "source" and not self.topic:
            raise ValueError("a source needs 'topic'")
        if self.kind == "sink" and not self.topics:
            raise ValueError("a sink needs 'topics'")
        return self


class PipelineConfig(Model):
    name: str = "pipeline"
    log: LogConfig
    topics: list[TopicConfig] = Field(default_factory=list)
    connectors: list[ConnectorSpec] = Field(default_factory=list)
