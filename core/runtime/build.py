"""Turning a ConnectorSpec into live objects: connector, transforms, converters.

Classes come from the plugin registry (``millpond.plugins``); each class's own
pydantic ``config_model`` validates its ``config:`` block, so a mistake names
the connector and the field.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from .. import plugins
from ..config import ConnectorSpec, PipelineConfig
from ..connector import ConnectorContext, Converter, Sink, Source, Transform
from ..errors import ConfigError
from ..records import Record


def validate_config(model: type[BaseModel], data: dict[str, Any], what: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{what}: invalid config: {problems}") from exc


def make_context(config: PipelineConfig, spec: ConnectorSpec, task: int) -> ConnectorContext:
    return ConnectorContext(
        name=spec.name,
        pipeline=config.name,
        extra={"task": task, "tasks": spec.tasks, "topic": spec.topic, "topics": list(spec.topics)},
    )


def make_source(config: PipelineConfig, spec: ConnectorSpec, task: int) -> Source:
    cls = plugins.source_class(spec.type)
    cfg = validate_config(cls.config_model, spec.config, f"connector {spec.name!r}")
    return cls(cfg, make_context(config, spec, task))


def make_sink(config: PipelineConfig, spec: ConnectorSpec, task: int) -> Sink:
    cls = plugins.sink_class(spec.type)
    cfg = validate_config(cls.config_model, spec.config, f"connector {spec.name!r}")
    return cls(cfg, make_context(config, spec, task))


def make_transforms(spec: ConnectorSpec) -> list[Transform]:
    chain: list[Transform] = []
    for i, tc in enumerate(spec.transforms):
        cls = plugins.transform_class(tc.type)
        cfg = validate_config(cls.config_model, tc.config, f"connector {spec.name!r} transform #{i} ({tc.type})")
        chain.append(cls(cfg))
    return chain


def make_converters(spec: ConnectorSpec) -> tuple[Converter, Converter]:
    key = plugins.converter_class(spec.converter.key)()
    value = plugins.converter_class(spec.converter.value)()
    return key, value


def apply_transforms(chain: list[Transform], record: Record) -> Iterable[Record]:
    """Run ``record`` through the chain; each transform may emit zero or more records."""
    records: Iterable[Record] = (record,)
    for transform in chain:
        out: list[Record] = []
        for r in records:
            out.extend(transform.apply(r))
        records = out
        if not out:
            break
    return records
