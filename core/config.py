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

``load_pipeline`` reads such a file into a :class:`PipelineConfig`;
``validate_file`` reports *every* problem with its YAML path and line
(``connectors[1].config.dir``, line 17), including unknown connector types,
connector configs that their class's ``config_model`` rejects, and delivery
guarantees a connector cannot give.

Strings may use ``${NAME}`` or ``${NAME:-default}`` (``$$`` is a literal
``$``). Values that come from the environment are treated as secrets: they
never appear in an error message, and :meth:`PipelineConfig.redacted` hides
them when a config is logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .backends.kafka_security import SECURITY_KEYS, KafkaSecurity
from .connector import Guarantee
from .errors import ConfigError, DeliveryGuaranteeError, InvalidTopicError, PluginError
from .runtime.settings import ApiSettings, WorkerSettings
from .yamlsource import ConfigProblem as ConfigProblem
from .yamlsource import Loc, YamlDocument
from .yamlsource import format_path as format_path

# -- topic names -------------------------------------------------------------

MAX_TOPIC_NAME = 249
_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]")


def topic_name_problem(name: str) -> str | None:
    """Why ``name`` is not a legal topic name (Kafka's rules), or None."""
    if not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"a topic name cannot be {name!r}"
    if len(name) > MAX_TOPIC_NAME:
        return f"a topic name has at most {MAX_TOPIC_NAME} characters, this one has {len(name)}"
    bad = sorted({c for c in name if not _TOPIC_CHARS.fullmatch(c)})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f"topic name {name!r} may only use ASCII letters, digits, '.', '_' and '-' (not {shown})"
    return None


def check_topic_name(name: str) -> str:
    """Return ``name`` or raise :class:`InvalidTopicError` saying why it is illegal."""
    problem = topic_name_problem(name)
    if problem:
        raise InvalidTopicError(problem)
    return name


def _topic_name(value: str) -> str:
    problem = topic_name_problem(value)
    if problem:
        raise ValueError(problem)
    return value


TopicName = Annotated[str, AfterValidator(_topic_name)]


# -- models ------------------------------------------------------------------


def _guarantee(value: Any) -> Any:
    if isinstance(value, Guarantee):
        return value
    if isinstance(value, str) and value in Guarantee.__members__:
        return Guarantee[value]
    raise ValueError(f"a guarantee is one of {', '.join(Guarantee.__members__)}")


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


def resolve_plugin(kind: str, type_name: str, data: Any, what: str) -> Resolved:
    from .plugins import lookup

    cls = lookup(kind, type_name)
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


class ConverterConfig(Model):
    key: str = "string"
    value: str = "json"


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
        return self


_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_INTERVAL_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(value: str | float) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``500ms`` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        found = _INTERVAL.fullmatch(str(value).strip())
        if not found:
            raise ValueError(f"{value!r} is not an interval (e.g. 30s, 5m, 2h, 1d, or seconds as a number)")
        seconds = float(found[1]) * _INTERVAL_S[found[2]]
    if seconds <= 0:
        raise ValueError(f"an interval must be longer than 0, not {value!r}")
    return seconds


class Schedule(Model):
    """When a maintenance job runs: ``interval: 5m`` or ``cron: "0 3 * * *"`` (APScheduler's triggers).

    A cron expression is read in ``timezone`` (an IANA name such as ``Europe/Paris``; default UTC)."""

    interval: str | float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            interval_seconds(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from apscheduler.triggers.cron import CronTrigger

        if value is not None:
            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"cron {value!r} is not MINUTE HOUR DAY MONTH WEEKDAY: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (an IANA name such as UTC or Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of 'interval' (e.g. 5m) or 'cron' (e.g. \"0 3 * * *\")")
        return self

    def trigger(self) -> Any:
        """The APScheduler trigger (IntervalTrigger or CronTrigger)."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.interval is not None:
            return IntervalTrigger(seconds=interval_seconds(self.interval), timezone=self.timezone)
        assert self.cron is not None
        return CronTrigger.from_crontab(self.cron, timezone=self.timezone)


class MaintenanceSettings(Model):
    """The ``maintenance:`` block: when the embedded log's retention and compaction run.

    A job left out runs on the default interval (retention every 5 minutes,
    compaction every 10); both can also be run at once through the API
    (``POST /admin/retention``) or the CLI (``millpond topics retain``)."""

    retention: Schedule | None = None
    compaction: Schedule | None = None


class AuditSettings(Model):
    """The ``audit:`` block: signed checkpoints of the topics with ``audit.chain`` (millpond.audit).

    The key file holds an Ed25519 private key in PEM (``openssl genpkey -algorithm ed25519``);
    name it with ``${ENV}`` to keep paths out of the file. It is read at start and never logged."""

    signing_key_file: str
    #: a checkpoint per chained partition after this many records ...
    checkpoint_records: int = Field(100_000, ge=1)
    #: ... or this many seconds after the first unsigned record (a timer checks), and at shutdown
    checkpoint_seconds: float = Field(60.0, gt=0)


class PipelineConfig(Model):
    name: str = "pipeline"
    log: LogConfig
    topics: list[TopicConfig] = Field(default_factory=list)
    connectors: list[ConnectorSpec] = Field(default_factory=list)
    api: ApiSettings = Field(default_factory=ApiSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)
    audit: AuditSettings | None = None

    #: paths (as tuples) whose values came from environment variables
    _secret_paths: set[tuple[str | int, ...]] = PrivateAttr(default_factory=set)

    def redacted(self) -> dict[str, Any]:
        """The config as plain data with every environment-supplied value shown as ``***``."""
        data: Any = self.model_dump(mode="json")
        for loc in self._secret_paths:
            _replace_at(data, loc, "***")
        return dict(data)


def _replace_at(data: Any, loc: tuple[str | int, ...], new: Any) -> None:
    for part in loc[:-1]:
        data = _child(data, part)
    if loc and _child(data, loc[-1]) is not None:
        data[loc[-1]] = new


def _child(data: Any, part: str | int) -> Any:
    if isinstance(data, dict):
        return data.get(part)
    if isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
        return data[part]
    return None


class PipelineFileError(ConfigError):
    """A pipeline file has problems; ``problems`` lists every one."""

    def __init__(self, filename: str, problems: list[ConfigProblem]) -> None:
        self.filename = filename
        self.problems = problems
        lines = [p.format(filename) for p in problems]
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{filename}: {count}\n" + "\n".join(lines))


# -- validation --------------------------------------------------------------


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


def _plugin_problems(doc: YamlDocument) -> dict[Loc, Resolved]:
    """Connector, transform and converter names against the plugin registry, and
    each connector's ``config`` against its class's ``config_model``; returns
    what resolved, by the YAML path of the connector or transform."""
    from .plugins import lookup

    found: dict[Loc, Resolved] = {}
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
        if isinstance(converter, dict):
            for side in ("key", "value"):
                name = converter.get(side)
                if isinstance(name, str):
                    try:
                        lookup("converter", name)
                    except PluginError as exc:
                        doc.problem(here + ("converter", side), str(exc))
    return found


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
    from .log.settings import TopicSettings

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
    from .plugins import lookup

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
    resolved = _plugin_problems(doc)
    _topic_settings_problems(doc)
    _topic_reference_problems(doc)
    if isinstance(config, PipelineConfig):
        for i, spec in enumerate(config.connectors):
            spec._resolved = resolved.get(("connectors", i))
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
