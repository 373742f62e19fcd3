"""A whole pipeline file as one model, and its logged form with secrets hidden."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr

from ..runtime.settings import ApiSettings, WorkerSettings
from .audit_block import AuditSettings
from .base import Model
from .connectors import ConnectorSpec
from .log_block import LogConfig, TopicConfig
from .maintenance import MaintenanceSettings


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
