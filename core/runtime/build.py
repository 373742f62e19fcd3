"""Turning a ConnectorSpec into live objects: connector, transforms, converters.

The classes and their validated settings were resolved when the pipeline was
parsed (``ConnectorSpec.resolve``); building an instance validates nothing again.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import ConnectorSpec, PipelineConfig
from ..connector import ConnectorContext, Converter, Sink, Source, Transform
from ..records import Record


def make_context(config: PipelineConfig, spec: ConnectorSpec, task: int) -> ConnectorContext:
    return ConnectorContext(
        name=spec.name,
        pipeline=config.name,
        extra={
            "task": task,
            "tasks": spec.tasks,
            "topic": spec.topic,
            "topics": list(spec.topics),
            # where the embedded log lives, for messages that name a command to run against it
            "log_dir": config.log.embedded.dir if config.log.embedded is not None else None,
        },
    )


def make_source(config: PipelineConfig, spec: ConnectorSpec, task: int) -> Source:
    cls, settings = spec.resolve()
    source: Source = cls(settings, make_context(config, spec, task))
    return source


def make_sink(config: PipelineConfig, spec: ConnectorSpec, task: int) -> Sink:
    cls, settings = spec.resolve()
    sink: Sink = cls(settings, make_context(config, spec, task))
    return sink


def make_transforms(spec: ConnectorSpec) -> list[Transform]:
    chain: list[Transform] = []
    for i, tc in enumerate(spec.transforms):
        cls, settings = tc.resolve(f"connector {spec.name!r} transform #{i}")
        chain.append(cls(settings))
    return chain


def make_converters(spec: ConnectorSpec) -> tuple[Converter, Converter]:
    key, value = spec.converter.resolve()
    return key(), value()


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
