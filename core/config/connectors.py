"""The ``connectors:`` block, and resolving each connector's (and transform's) plugin class
and validated settings once, so the runtime builds from them instead of validating again."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, PrivateAttr, ValidationError, model_validator

from ..connector import Converter, Guarantee, Sink
from ..errors import ConfigError
from ..runtime.settings import FlushSettings
from .base import Model, TopicName


def _guarantee(value: Any) -> Any:
    if isinstance(value, Guarantee):
        return value
    if isinstance(value, str) and value in Guarantee.__members__:
        return Guarantee[value]
    raise ValueError(f"a guarantee is one of {', '.join(Guarantee.__members__)}")


GuaranteeName = Annotated[Guarantee, BeforeValidator(_guarantee)]


class Resolved(NamedTuple):
    """A plugin's class and its validated settings: what the runtime builds instances from."""

    cls: type[Any]
    settings: Any


def validate_settings(model: type[BaseModel], data: Any, what: str) -> Any:
    """``data`` validated by a plugin's ``config_model``; a ConfigError naming ``what`` and each field."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{what}: invalid config: {problems}") from exc


def incomplete(kind: str, type_name: str, cls: type[Any]) -> str | None:
    """Why a plugin class cannot run as ``kind``, if it declares a capability without what it needs.

    A sink that keeps its own offsets must be able to reset them (an offsets reset goes to the owner),
    so a plugin that forgot half of that contract is refused when the pipeline is read, not at the
    first reset."""
    if kind == "sink" and cls.owns_offsets and cls.reset_offsets is Sink.reset_offsets:
        return (f"sink type {type_name!r} keeps its own offsets but cannot reset them "
                f"(owns_offsets without reset_offsets); its plugin is incomplete")
    return None


def resolve_plugin(kind: str, type_name: str, data: Any, what: str) -> Resolved:
    from ..plugins import lookup

    cls = lookup(kind, type_name)
    problem = incomplete(kind, type_name, cls)
    if problem is not None:
        raise ConfigError(f"{what}: {problem}")
    return Resolved(cls, validate_settings(cls.config_model, data, what))


class TransformConfig(Model):
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    _resolved: Resolved | None = PrivateAttr(default=None)

    def resolve(self, what: str) -> Resolved:
        """The transform class and validated settings (found at parse time; once, for a config built in code)."""
        if self._resolved is None:
            self._resolved = resolve_plugin("transform", self.type, self.config, f"{what} ({self.type})")
        return self._resolved


class ConverterClasses(NamedTuple):
    """The key and value converter classes a connector's ``converter:`` names."""

    key: type[Converter]
    value: type[Converter]


class ConverterConfig(Model):
    key: str = "string"
    value: str = "json"
    _resolved: ConverterClasses | None = PrivateAttr(default=None)

    def resolve(self) -> ConverterClasses:
        """The converter classes (found at parse time; once, for a config built in code)."""
        if self._resolved is None:
            from ..plugins import lookup

            self._resolved = ConverterClasses(lookup("converter", self.key), lookup("converter", self.value))
        return self._resolved


class ErrorPolicy(Model):
    policy: Literal["fail", "skip", "dead_letter"] = "fail"
    topic: TopicName | None = None

    @model_validator(mode="after")
    def _dlq_needs_topic(self) -> ErrorPolicy:
        if self.policy == "dead_letter" and not self.topic:
            raise ValueError("policy 'dead_letter' needs a 'topic'")
        return self


def _connector_name(value: str) -> str:
    if not _CONNECTOR_NAME.fullmatch(value):
        raise ValueError("a connector name has 1-200 ASCII letters, digits, '.', '_' or '-'")
    return value


_CONNECTOR_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


class ConnectorSpec(Model):
    #: also names the connector's consumer group and its source offsets
    name: Annotated[str, AfterValidator(_connector_name)]
    kind: Literal["source", "sink"]
    type: str
    #: sources: the topic records go to unless a record (or a route transform) names one
    topic: TopicName | None = None
    #: sinks: the topics the sink consumes
    topics: list[TopicName] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    transforms: list[TransformConfig] = Field(default_factory=list)
    converter: ConverterConfig = Field(default_factory=ConverterConfig)
    errors: ErrorPolicy = Field(default_factory=ErrorPolicy)
    guarantee: GuaranteeName = Guarantee.at_least_once
    tasks: int = Field(default=1, ge=1)
    #: sinks: when to flush (records, interval_s, idle_s, max_poll_records); unset keeps the worker's defaults
    flush: FlushSettings | None = None
    _resolved: Resolved | None = PrivateAttr(default=None)

    def resolve(self) -> Resolved:
        """The connector class and validated settings (found at parse time; once, for a config built in code)."""
        if self._resolved is None:
            self._resolved = resolve_plugin(self.kind, self.type, self.config, f"connector {self.name!r}")
        return self._resolved

    @model_validator(mode="after")
    def _topics_by_kind(self) -> ConnectorSpec:
        if self.kind == "source" and not self.topic:
            raise ValueError("a source needs 'topic'")
        if self.kind == "sink" and not self.topics:
            raise ValueError("a sink needs 'topics'")
        if self.kind == "source" and self.flush is not None:
            raise ValueError("'flush' is for sinks (a source's batches are its connector's business)")
        return self
