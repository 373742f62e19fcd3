"""What a source task and a sink task share: where they run, and the flags the worker reads."""

from __future__ import annotations

from ..backends.base import LogBackend
from ..config import ConnectorSpec, PipelineConfig
from .policy import ErrorPolicyHandler


class ConnectorTask:
    """One task of a connector: its pipeline, spec, backend and number, its name in
    messages (``name#task`` when the connector has several) and its error policy."""

    def __init__(self, config: PipelineConfig, spec: ConnectorSpec, backend: LogBackend, task: int) -> None:
        self.config = config
        self.spec = spec
        self.backend = backend
        self.task = task
        self.name = spec.name if spec.tasks == 1 else f"{spec.name}#{task}"
        self.errors = ErrorPolicyHandler(spec.name, spec.errors)
        # progress, read by the worker
        self.idle_since: float | None = None
        self.running = False
