"""Reading a pipeline file: every problem reported with its YAML path and line, plugins resolved,
topic settings and references checked, guarantees and literal secrets refused."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, DeliveryGuaranteeError, PluginError
from ..yamlsource import ConfigProblem, Loc, YamlDocument
from .connectors import ConverterClasses, ConverterConfig, Resolved, incomplete
from .pipeline import PipelineConfig


class PipelineFileError(ConfigError):
    """A pipeline file has problems; ``problems`` lists every one."""

    def __init__(self, filename: str, problems: list[ConfigProblem]) -> None:
        self.filename = filename
        self.problems = problems
        lines = [p.format(filename) for p in problems]
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{filename}: {count}\n" + "\n".join(lines))


def _error_message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _error_loc(raw: tuple[Any, ...]) -> Loc:
    # pydantic puts union/validator tags such as "function-after[...]" in a loc
    return tuple(p for p in raw if isinstance(p, int) or "[" not in str(p))


def _model_problems(doc: YamlDocument, model: type[BaseModel], data: Any, base: Loc, prefix: str = "") -> Any:
    """Validate ``data`` with ``model``; report each error at ``base`` + its loc. The model or None.

    ``prefix`` names the owner of a nested block (``connector 'tail', transform mask: ``)
    where the YAML path alone gives only list indexes.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            rel = _error_loc(tuple(error["loc"]))
            loc = base + rel
            if any(loc[:end] in doc.unresolved for end in range(len(loc) + 1)):
                continue  # already reported as an unset variable
            message = _error_message(error)
            if error["type"] == "extra_forbidden" and rel:
                message = f"unknown key {rel[-1]!r}"
                if len(rel) == 1:
                    message += f" (known: {', '.join(_known_keys(model))})"
            doc.problem(loc, prefix + message)
        return None


def _known_keys(model: type[BaseModel]) -> list[str]:
    return sorted(info.alias or name for name, info in model.model_fields.items())


def _plugin_problems(doc: YamlDocument) -> tuple[dict[Loc, Resolved], dict[Loc, ConverterClasses]]:
    """Connector, transform and converter names against the plugin registry, and
    each connector's ``config`` against its class's ``config_model``; returns
    what resolved, by the YAML path of the connector or transform, and each
    connector's converter classes (the defaults too), by the connector's path."""
    from ..plugins import lookup

    found: dict[Loc, Resolved] = {}
    converters: dict[Loc, ConverterClasses] = {}
    data = doc.data
    connectors = data.get("connectors") if isinstance(data, dict) else None
    for i, spec in enumerate(connectors if isinstance(connectors, list) else []):
        if not isinstance(spec, dict):
            continue
        here: Loc = ("connectors", i)
        kind, type_name = spec.get("kind"), spec.get("type")
        if kind in ("source", "sink") and isinstance(type_name, str):
            _check_plugin(doc, lookup, str(kind), type_name, spec.get("config", {}), here, found)
        transforms = spec.get("transforms")
        for j, item in enumerate(transforms if isinstance(transforms, list) else []):
            if isinstance(item, dict) and isinstance(item.get("type"), str):
                at = here + ("transforms", j)
                owner = f"connector {spec.get('name')!r}, transform {item['type']}: "
                _check_plugin(doc, lookup, "transform", item["type"], item.get("config", {}), at, found, owner)
        converter = spec.get("converter")
        named = converter if isinstance(converter, dict) else {}
        classes = []
        for side in ("key", "value"):
            name = named.get(side, ConverterConfig.model_fields[side].default)
            if isinstance(name, str):
                try:
                    classes.append(lookup("converter", name))
                except PluginError as exc:
                    doc.problem(here + ("converter", side), str(exc))
        if len(classes) == 2:
            converters[here] = ConverterClasses(*classes)
    return found, converters


def _check_plugin(
    doc: YamlDocument,
    lookup: Any,
    kind: str,
    name: str,
    config: Any,
    at: Loc,
    found: dict[Loc, Resolved],
    prefix: str = "",
) -> None:
    try:
        cls = lookup(kind, name)
    except PluginError as exc:
        doc.problem(at + ("type",), str(exc))
        return
    problem = incomplete(kind, name, cls)
    if problem is not None:
        doc.problem(at + ("type",), prefix + problem)
        return
    settings = _model_problems(doc, cls.config_model, {} if config is None else config, at + ("config",), prefix)
    if settings is not None:
        found[at] = Resolved(cls, settings)


def _items(data: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of the list under ``key`` in raw YAML data, with their indexes."""
    items = data.get(key) if isinstance(data, dict) else None
    return [(i, item) for i, item in enumerate(items if isinstance(items, list) else []) if isinstance(item, dict)]


def _topic_settings_problems(doc: YamlDocument) -> None:
    """Each topic's ``config:`` against the log's topic settings (Kafka names), field by field.

    Works on the raw data, so these problems are reported together with every
    other one, not only once the rest of the file is valid.
    """
    from ..log.settings import TopicSettings

    for i, topic in _items(doc.data, "topics"):
        values = topic.get("config")
        if not isinstance(values, dict):
            continue  # the model reports it
        values = dict(values)
        # the short forms TopicSettings.parse accepts
        if "compression" in values:
            values["compression.type"] = values.pop("compression")
        if values.get("cleanup.policy") == "both":
            values["cleanup.policy"] = "compact,delete"
        _model_problems(doc, TopicSettings, values, ("topics", i, "config"))


def _topic_reference_problems(doc: YamlDocument) -> None:
    """A topic a connector reads or writes must be declared under ``topics:`` or be written by
    this pipeline (a source's topic, a dead-letter topic): ``run`` would refuse it otherwise,
    unless someone happened to create it in the log beforehand."""
    declared = {t.get("name") for _, t in _items(doc.data, "topics")}
    connectors = _items(doc.data, "connectors")
    dead_letters = {spec["errors"].get("topic") for _, spec in connectors
                    if isinstance(spec.get("errors"), dict) and spec["errors"].get("policy") == "dead_letter"}
    for i, spec in connectors:
        name = spec.get("name")
        if spec.get("kind") == "source" and isinstance(spec.get("topic"), str):
            if spec["topic"] not in declared:
                doc.problem(("connectors", i, "topic"),
                            f"source {name!r} writes topic {spec['topic']!r}, which is not declared under 'topics:'")
        if spec.get("kind") == "sink" and isinstance(spec.get("topics"), list):
            written = declared | dead_letters | {s.get("topic") for _, s in connectors if s.get("kind") == "source"}
            for j, topic in enumerate(spec["topics"]):
                if isinstance(topic, str) and topic not in written:
                    doc.problem(("connectors", i, "topics", j),
                                f"sink {name!r} reads topic {topic!r}, which is neither declared under 'topics:' "
                                f"nor written by a source or a dead-letter policy of this pipeline")


def _semantic_problems(doc: YamlDocument, config: PipelineConfig) -> None:
    seen: dict[str, int] = {}
    for i, topic in enumerate(config.topics):
        if topic.name in seen:
            doc.problem(("topics", i, "name"), f"topic {topic.name!r} is declared twice")
        seen.setdefault(topic.name, i)
    names: dict[str, int] = {}
    for i, spec in enumerate(config.connectors):
        if spec.name in names:
            doc.problem(
                ("connectors", i, "name"),
                f"connector name {spec.name!r} is used twice (it names the consumer group and offsets)",
            )
        names.setdefault(spec.name, i)
    for i, message in _guarantee_problems(config):
        doc.problem(("connectors", i, "guarantee"), message)


def _guarantee_problems(config: PipelineConfig) -> Iterator[tuple[int, str]]:
    from ..plugins import lookup

    for i, spec in enumerate(config.connectors):
        try:
            cls = spec._resolved.cls if spec._resolved is not None else lookup(spec.kind, spec.type)
        except PluginError:
            continue  # reported as an unknown type
        gives = cls.guarantee
        if spec.guarantee > gives:
            reason = cls.guarantee_reason
            yield i, (
                f"connector {spec.name!r} asks for {spec.guarantee.name}, but {spec.kind}"
                f" type {spec.type!r} ({cls.__name__}) can give at most {gives.name}"
                + (f" ({reason})" if reason else "")
                + f"; set 'guarantee: {gives.name}' or use a connector that gives more"
            )


def _from_env_only(model: BaseModel, loc: Loc) -> Iterator[Loc]:
    """Where ``model`` (and the models inside it) holds a value of a field marked FROM_ENV_ONLY."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        here = loc + (info.alias or name,)
        extra = info.json_schema_extra
        if value is not None and isinstance(extra, dict) and extra.get("from_env_only"):
            yield here
        elif isinstance(value, BaseModel):
            yield from _from_env_only(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _from_env_only(item, here + (i,))


def _literal_secret_problems(doc: YamlDocument, config: PipelineConfig) -> None:
    """Refuse a password written in the file: files get committed, shared and printed."""
    where: list[Loc] = list(_from_env_only(config, ()))
    for i, spec in enumerate(config.connectors):
        if spec._resolved is not None and isinstance(spec._resolved.settings, BaseModel):
            where.extend(_from_env_only(spec._resolved.settings, ("connectors", i, "config")))
    for loc in where:
        if loc not in doc.secret_paths:
            doc.problem(loc, f"{loc[-1]} is written in the file: give it from the environment, "
                             f"e.g. {loc[-1]}: ${{MY_{str(loc[-1]).upper()}}}")


def check_guarantees(config: PipelineConfig) -> None:
    """Refuse a pipeline that asks a connector for more than its class declares.

    Raises :class:`DeliveryGuaranteeError` naming each connector, what it asked
    for and what it can give.
    """
    messages = [message for _, message in _guarantee_problems(config)]
    if messages:
        raise DeliveryGuaranteeError("; ".join(messages))


def resolve_pipeline(config: PipelineConfig) -> None:
    """Resolve everything a run builds from, and refuse what no run could do.

    Each connector's plugin class and validated settings, its transforms' and its converters' classes:
    a parsed file has them already (``parse_pipeline`` resolved them, reporting every problem with its
    line), a config built in code resolves them here, once. Then the delivery guarantees. Raises the
    first :class:`ConfigError` (or :class:`DeliveryGuaranteeError`), naming the connector.
    """
    for spec in config.connectors:
        spec.resolve()
        for i, transform in enumerate(spec.transforms):
            transform.resolve(f"connector {spec.name!r} transform #{i}")
        spec.converter.resolve()
    check_guarantees(config)


def parse_pipeline(
    text: str, env: Mapping[str, str] | None = None
) -> tuple[PipelineConfig | None, list[ConfigProblem]]:
    """Parse and validate pipeline YAML. Returns the config (None if invalid) and every problem."""
    doc = YamlDocument(text, os.environ if env is None else env)
    if doc.problems and doc.data is None:
        return None, doc.problems
    if not isinstance(doc.data, dict):
        doc.problem((), "a pipeline file must be a mapping with at least a 'log:' block")
        return None, doc.problems
    config = _model_problems(doc, PipelineConfig, doc.data, ())
    resolved, converters = _plugin_problems(doc)
    _topic_settings_problems(doc)
    _topic_reference_problems(doc)
    if isinstance(config, PipelineConfig):
        for i, spec in enumerate(config.connectors):
            spec._resolved = resolved.get(("connectors", i))
            spec.converter._resolved = converters.get(("connectors", i))
            for j, transform in enumerate(spec.transforms):
                transform._resolved = resolved.get(("connectors", i, "transforms", j))
        _semantic_problems(doc, config)
        _literal_secret_problems(doc, config)
        config._secret_paths = set(doc.secret_paths)
    problems = sorted(doc.problems, key=lambda p: (p.line or 0, p.path))
    return (config if not problems else None), problems


def _read(path: str | os.PathLike[str]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline file {os.fspath(path)}: {exc}") from exc


def validate_file(path: str | os.PathLike[str]) -> list[ConfigProblem]:
    """Every problem in the pipeline file at ``path`` (empty when it is valid)."""
    try:
        text = _read(path)
    except ConfigError as exc:
        return [ConfigProblem("", None, str(exc))]
    return parse_pipeline(text)[1]


def load_pipeline(path: str | os.PathLike[str]) -> PipelineConfig:
    """Read a pipeline file; raise :class:`PipelineFileError` listing every problem."""
    config, problems = parse_pipeline(_read(path))
    if problems or config is None:
        raise PipelineFileError(os.fspath(path), problems)
    return config
