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

The package, one module per part of the file: ``base.py`` (the model base and
topic names), ``log_block.py`` (``log:`` and ``topics:``), ``connectors.py``
(``connectors:``, and finding each one's plugin class and settings),
``maintenance.py`` (``maintenance:`` schedules), ``pipeline.py`` (the whole
file's model), ``loading.py`` (reading a file and reporting every problem).
``${NAME}`` interpolation and YAML line numbers live in ``millpond.yamlsource``.
"""

from ..yamlsource import ConfigProblem, format_path
from .audit_block import AuditSettings
from .base import MAX_TOPIC_NAME, Model, TopicName, check_topic_name, topic_name_problem
from .connectors import (
    ConnectorSpec,
    ConverterClasses,
    ConverterConfig,
    ErrorPolicy,
    GuaranteeName,
    Resolved,
    TransformConfig,
    resolve_plugin,
    validate_settings,
)
from .loading import (
    PipelineFileError,
    check_guarantees,
    load_pipeline,
    parse_pipeline,
    resolve_pipeline,
    validate_file,
)
from .log_block import EmbeddedLog, KafkaLog, LogConfig, TopicConfig
from .maintenance import MaintenanceSettings, Schedule, interval_seconds
from .pipeline import PipelineConfig

__all__ = [
    "AuditSettings",
    "MAX_TOPIC_NAME",
    "ConfigProblem",
    "ConnectorSpec",
    "ConverterClasses",
    "ConverterConfig",
    "EmbeddedLog",
    "ErrorPolicy",
    "GuaranteeName",
    "KafkaLog",
    "LogConfig",
    "MaintenanceSettings",
    "Model",
    "PipelineConfig",
    "PipelineFileError",
    "Resolved",
    "Schedule",
    "TopicConfig",
    "TopicName",
    "TransformConfig",
    "check_guarantees",
    "check_topic_name",
    "format_path",
    "interval_seconds",
    "load_pipeline",
    "parse_pipeline",
    "resolve_pipeline",
    "resolve_plugin",
    "topic_name_problem",
    "validate_file",
    "validate_settings",
]
