"""What a source task and a sink task share: where they run, their state, and the counters the worker reads."""

from __future__ import annotations

import enum
from collections.abc import Callable

from ..backends.base import LogBackend
from ..config import ConnectorSpec, PipelineConfig
from .policy import ErrorPolicyHandler


class TaskState(str, enum.Enum):
    """Kafka Connect's task states, with the same names (the API shows them as they are)."""

    UNASSIGNED = "UNASSIGNED"  # not started yet
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"  # asked to pause, or waiting for disk space; resumes where it was
    STOPPED = "STOPPED"  # asked to stop; holds nothing until resumed
    FAILED = "FAILED"  # gave up after its restarts; ``trace`` says why


def _no_timing(operation: str, seconds: float) -> None:
    pass


class ConnectorTask:
    """One task of a connector: its pipeline, spec, backend and number, its name in
    messages (``name#task`` when the connector has several) and its error policy.

    The counters below are bumped once per batch (never per record), so
    exposing them as metrics costs the loops nothing measurable.
    """

    kind: str

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
        # supervision, written by the worker's supervisor
        self.state = TaskState.UNASSIGNED
        self.trace: str | None = None
        self.restarts = 0
        # metrics: records and bytes through the task, and batch latencies
        self.records_in = 0
        self.records_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: ``observe(operation, seconds)`` for poll / write / flush / commit; set by the worker's metrics
        self.observe: Callable[[str, float], None] = _no_timing
