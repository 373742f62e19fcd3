"""The worker: runs every connector task of one pipeline in one asyncio loop.

``launch.py`` checks the pipeline, opens the backend and creates the topics;
the worker is made on the open backend and reads its config once, when it is
made: its tasks and their supervisors, its share of a cluster's source tasks
(``SourceAssignment``, on Kafka) and its periodic jobs. ``run`` then starts
them in one sequence: join the cluster, start the jobs, start a
:class:`Supervisor` per task, watch until stopped. A supervisor keeps its
task in one of Kafka Connect's states (UNASSIGNED, RUNNING, PAUSED, STOPPED,
FAILED) and decides what a failure means:

- an error that is not millpond's own (a driver exception, a bug, an
  ``OSError``) or a retriable one restarts the task with exponential backoff
  and jitter, one WARNING line per restart (the traceback only at DEBUG,
  ``millpond run -v``). The task resumes from its committed offsets, so
  nothing is lost or doubled. A task that fails more than ``max_restarts``
  times within ``restart_window_s`` is marked FAILED with its trace and left
  alone (the rest of the pipeline keeps running) until restarted through the
  API; when every task has failed, the worker stops and says why;
- a terminal error (``MillpondError`` with ``retriable = False``: bad config,
  a record under the ``fail`` policy, a fenced producer, ...) stops the whole
  pipeline and :func:`run_pipeline` raises it;
- ``DiskFullError`` is a state, not a failure: one WARNING naming the path
  and the free bytes, every source pauses (its transaction in hand is
  committed or aborted first), free space is checked every few seconds, and
  the sources resume by themselves once enough is free (or, with
  ``worker: {on_disk_full: stop}``, the worker stops cleanly).

Pause, stop, resume and restart (the API's verbs) end or start a task's
*incarnation*: ``task.run(halt)`` returns once its transaction is committed
(source) or its records are flushed and committed (sink), and nothing of it
stays open. Offsets are changed between two incarnations (see ``quiesced``).

SIGTERM / SIGINT stop the worker: sources finish the transaction in hand,
sinks flush and commit, then the backend closes. A second signal cancels.
The handlers are in place before the log is opened (``signals.py``).

Backpressure and memory: tasks hand records over through the log, not
through in-memory queues. A source is not polled while its transaction
commits, and a transaction is bounded by records, bytes and time
(``SourceLimits``); a sink polls a bounded number of records and writes them
before polling again (``SinkLimits``). Memory per task stays bounded however
far a sink lags behind a source.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import shutil
import socket
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ..backends.base import LogBackend
from ..config import PipelineConfig
from ..errors import (
    ConnectorError,
    DiskFullError,
    MillpondError,
    ProducerFencedError,
    RetriableConnectorError,
)
from .assignment import SourceAssignment
from .scheduler import JobIntervals, PipelineJobs
from .settings import WorkerSettings
from .signals import StopSignals
from .sink_task import SinkLimits, SinkTask
from .source_task import SourceLimits, SourceTask
from .task import TaskState

log = logging.getLogger("millpond.runtime")


def free_bytes(path: str) -> int:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor)."""
    probe = os.path.abspath(path or ".")
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


@dataclass(slots=True)
class RuntimeOptions:
    """Knobs of a run; the defaults suit a long-running pipeline."""

    #: stop once every source has been idle this long and every sink has caught up
    until_idle: bool = False
    idle_seconds: float = 2.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    #: a task that ran this long before failing starts its backoff from scratch
    backoff_reset_s: float = 60.0
    install_signal_handlers: bool = True
    source_limits: SourceLimits = field(default_factory=SourceLimits)
    sink_limits: SinkLimits = field(default_factory=SinkLimits)
    jobs: JobIntervals = field(default_factory=JobIntervals)
    #: restarts and disk-full behaviour; None takes the pipeline file's ``worker:`` block
    worker: WorkerSettings | None = None
    #: how free space is measured while the disk is full (tests put a fake here)
    disk_free: Callable[[str], int] = free_bytes
    #: the HTTP API: ``HOST:PORT`` or ``off`` (embedding and tests); ``run_pipeline`` takes the file's ``api:``
    api_listen: str = "off"
    #: True when ``api_listen`` is the built-in default: a busy port then falls back to a free one
    api_listen_is_default: bool = False
    #: signals caught before the loop started (``StopSignals.install``), honoured once it runs
    early_signals: StopSignals | None = None
    #: this worker's id (``--worker-id``); None takes ``worker: {id: ...}``, else ``host:pid``
    worker_id: str | None = None


def worker_id(options: RuntimeOptions, settings: WorkerSettings) -> str:
    """This worker's id: ``--worker-id``, else the file's ``worker: {id: ...}``, else ``host:pid``
    (unique among the live workers of a cluster without anyone choosing names)."""
    return options.worker_id or settings.id or f"{socket.gethostname()}:{os.getpid()}"


async def _first(*waits: asyncio.Event, timeout: float | None = None) -> None:
    """Return when any of ``waits`` is set, or after ``timeout``."""
    if any(e.is_set() for e in waits):
        return
    pending = [asyncio.ensure_future(e.wait()) for e in waits]
    try:
        await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for p in pending:
            p.cancel()


class Supervisor:
    """Keeps one task in the state it is asked to be in, and restarts it within bounds."""

    def __init__(self, worker: Worker, task: SourceTask | SinkTask) -> None:
        self.worker = worker
        self.task = task
        #: what the user asked for: RUNNING, PAUSED or STOPPED
        self.target = TaskState.RUNNING
        self.failed = False
        self.waiting_for_space = False
        self._wake = asyncio.Event()
        self._halt: asyncio.Event | None = None
        self._between = asyncio.Event()  # set while no incarnation runs
        self._between.set()
        self._failures: deque[float] = deque()
        #: incarnations started so far (a restart waits for the next one)
        self.incarnation = 0
        #: False while the task is another worker's (a source task in a cluster, see ``assignment.py``)
        self.assigned = True

    # -- control (the API, the worker) ---------------------------------------

    def halt(self) -> None:
        """End the running incarnation after the work in hand."""
        if self._halt is not None:
            self._halt.set()

    def set_target(self, state: TaskState) -> None:
        self.target = state
        if state is not TaskState.RUNNING:
            self.halt()
        self._wake.set()

    def restart(self) -> int:
        """Start afresh: forget past failures, end the running incarnation, run again.

        Returns the incarnation count before the restart, for ``settled(after=...)``."""
        self.failed = False
        self._failures.clear()
        self.task.trace = None
        self.target = TaskState.RUNNING
        self.halt()
        self._wake.set()
        return self.incarnation

    def assign(self) -> None:
        """The cluster gave this worker the task: run it (unless held for another reason)."""
        self.assigned = True
        self._wake.set()

    async def unassign(self) -> None:
        """The cluster takes the task away: end its incarnation (its transaction in hand is
        committed or aborted) and return once nothing of it runs here."""
        self.assigned = False
        self.halt()
        self._wake.set()
        await self._between.wait()

    async def settled(self, timeout: float, after: int = -1) -> bool:
        """Wait until the task is where it was asked to be: out of its incarnation, or running
        (in an incarnation that started after incarnation ``after``, when given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.target is TaskState.RUNNING and not self.failed and not self.waiting_for_space:
                if (self.task.running and self.incarnation > after) or self.worker.disk_full is not None:
                    return True
            elif self._between.is_set():
                return True
            await asyncio.sleep(0.01)
        return False

    # -- the loop ------------------------------------------------------------

    def _held(self) -> TaskState | None:
        """The state the task is held in instead of running, if any."""
        if self.failed:
            return TaskState.FAILED
        if self.target is not TaskState.RUNNING:
            return self.target
        if not self.assigned:
            return TaskState.UNASSIGNED
        if self.worker.disk_full is not None and (self.task.kind == "source" or self.waiting_for_space):
            return TaskState.PAUSED
        self.waiting_for_space = False
        return None

    def _terminal(self, exc: MillpondError) -> None:
        """A failure no restart can fix: mark the task FAILED and stop the worker with ``exc``."""
        task = self.task
        task.state = TaskState.FAILED
        task.trace = "".join(traceback.format_exception(exc))
        self.failed = True
        log.error("%s %r failed and cannot recover: %s", task.kind, task.name, exc)
        self.worker.fail(exc)

    async def run(self) -> None:
        worker = self.worker
        task = self.task
        options = worker.options
        attempt = 0
        while not worker.stop_event.is_set():
            held = self._held()
            if held is not None:
                task.state = held
                self._wake.clear()
                await _first(self._wake, worker.stop_event, worker.space_back)
                continue
            halt = self._halt = asyncio.Event()
            self._between.clear()
            self.incarnation += 1
            task.state = TaskState.RUNNING
            started = time.monotonic()
            reason: BaseException | None = None
            try:
                await task.run(halt)
            except asyncio.CancelledError:
                raise
            except DiskFullError as exc:
                self.waiting_for_space = True
                worker.on_disk_full(exc)
            except ProducerFencedError as exc:
                if worker.assignment is None:
                    self._terminal(exc)
                    return
                # another worker runs the task now; the group tells this one soon, if it has not yet
                self.assigned = False
                log.warning("%s %r was taken over by another worker (its producer was fenced); it runs "
                            "there now", task.kind, task.name)
                continue
            except MillpondError as exc:
                if not exc.retriable:
                    self._terminal(exc)
                    return
                reason = exc
            except Exception as exc:
                reason = exc
            finally:
                self._halt = None
                self._between.set()
            if reason is None:
                continue
            task.trace = "".join(traceback.format_exception(reason))
            now = time.monotonic()
            window = worker.settings.restart_window_s
            self._failures.append(now)
            while self._failures and now - self._failures[0] > window:
                self._failures.popleft()
            if len(self._failures) > worker.settings.max_restarts:
                self.failed = True
                task.state = TaskState.FAILED
                log.error(
                    "%s %r failed %d times within %.0fs (last: %s: %s); marked FAILED, the rest of the pipeline "
                    "goes on. Restart it with POST /connectors/%s/restart once the cause is fixed",
                    task.kind, task.name, len(self._failures), window, type(reason).__name__, reason,
                    task.spec.name, exc_info=reason if log.isEnabledFor(logging.DEBUG) else None,
                )
                worker.on_task_failed()
                continue
            if now - started >= options.backoff_reset_s:
                attempt = 0
            delay = min(options.backoff_max_s, options.backoff_initial_s * (2**attempt))
            delay *= random.uniform(0.5, 1.0)
            attempt += 1
            task.restarts += 1
            log.warning(
                "%s %r failed (%s: %s); restart #%d in %.1fs from committed offsets%s",
                task.kind, task.name, type(reason).__name__, reason, task.restarts, delay,
                "" if log.isEnabledFor(logging.DEBUG) else " (traceback with -v)",
                exc_info=reason if log.isEnabledFor(logging.DEBUG) else None,
            )
            self._wake.clear()
            await _first(worker.stop_event, self._wake, timeout=delay)


class Worker:
    """Supervises the tasks of one pipeline on an open backend."""

    def __init__(self, config: PipelineConfig, backend: LogBackend, options: RuntimeOptions | None = None) -> None:
        self.config = config
        self.backend = backend
        self.options = options or RuntimeOptions()
        self.settings = self.options.worker or config.worker
        self.stop_event = asyncio.Event()
        self.failure: BaseException | None = None
        self.worker_id = worker_id(self.options, self.settings)
        self.tasks: list[SourceTask | SinkTask] = []
        for spec in config.connectors:
            for i in range(spec.tasks):
                if spec.kind == "source":
                    self.tasks.append(SourceTask(config, spec, backend, i, self.options.source_limits))
                else:
                    sink = SinkTask(config, spec, backend, i, self.options.sink_limits)
                    sink.client_id = f"millpond-{self.worker_id}"
                    self.tasks.append(sink)
        self.supervisors = {t.name: Supervisor(self, t) for t in self.tasks}
        #: the DiskFullError that paused the sources, while the disk is full
        self.disk_full: DiskFullError | None = None
        self.space_back = asyncio.Event()
        self._space_watch: asyncio.Task[None] | None = None
        #: which source tasks run here, when several workers share the pipeline (Kafka); None: all of them.
        #: The pipeline's source-task group decides: its sources wait unassigned until it answers (``run`` joins it)
        self.assignment: SourceAssignment | None = None
        self._sources = [s for s in self.supervisors.values() if s.task.kind == "source"]
        if config.log.kafka is not None and self._sources:
            for s in self._sources:
                s.assigned = False
            self.assignment = SourceAssignment(backend, config.name, [s.task.name for s in self._sources],
                                               self.worker_id, self._assign_source, self._unassign_source)
        #: the periodic jobs (retention, compaction, sink flushes, progress); ``run`` starts them
        self.jobs = PipelineJobs(backend, self.tasks, self.options.jobs, config.maintenance)

    @property
    def restarts(self) -> dict[str, int]:
        return {t.name: t.restarts for t in self.tasks}

    def stop(self) -> None:
        self.stop_event.set()
        for sup in self.supervisors.values():
            sup.halt()

    def fail(self, exc: BaseException) -> None:
        """A terminal failure: stop everything and let ``run`` raise it."""
        if self.failure is None:
            self.failure = exc
        self.stop()

    # -- connectors, as the API sees them -------------------------------------

    def connector_names(self) -> list[str]:
        return [spec.name for spec in self.config.connectors]

    def tasks_of(self, connector: str) -> list[Supervisor]:
        """The supervisors of ``connector``'s tasks; KeyError when there is no such connector."""
        found = [s for s in self.supervisors.values() if s.task.spec.name == connector]
        if not found:
            raise KeyError(connector)
        return found

    def connector_state(self, connector: str) -> TaskState:
        sups = self.tasks_of(connector)
        if any(s.failed for s in sups):
            return TaskState.FAILED
        if all(s.target is TaskState.STOPPED for s in sups):
            return TaskState.STOPPED
        if all(s.target is not TaskState.RUNNING for s in sups):
            return TaskState.PAUSED
        if any(s.task.state is TaskState.UNASSIGNED for s in sups):
            return TaskState.UNASSIGNED
        return TaskState.RUNNING

    def ready(self) -> bool:
        """Every task this worker owns is running (what ``GET /ready`` answers)."""
        return not self.stop_event.is_set() and all(
            s.task.state is TaskState.RUNNING and s.task.running for s in self.supervisors.values() if s.assigned)

    async def set_state(self, connector: str, state: TaskState, timeout: float = 10.0) -> bool:
        """Pause, stop or resume every task of ``connector``; True once all got there within ``timeout``."""
        sups = self.tasks_of(connector)
        for s in sups:
            s.set_target(state)
        results = await asyncio.gather(*(s.settled(timeout) for s in sups))
        return all(results)

    async def restart(self, connector: str, *, only_failed: bool = False, timeout: float = 10.0) -> list[str]:
        """Restart the tasks of ``connector`` (only the FAILED ones with ``only_failed``); their names."""
        chosen = [s for s in self.tasks_of(connector) if s.failed or not only_failed]
        waits = []
        for s in chosen:
            log.info("%s %r: restart requested", s.task.kind, s.task.name)
            waits.append(s.settled(timeout, after=s.restart()))
        await asyncio.gather(*waits)
        return [s.task.name for s in chosen]

    @contextlib.asynccontextmanager
    async def quiesced(self, connector: str, timeout: float = 60.0) -> AsyncIterator[list[Supervisor]]:
        """Hold every task of ``connector`` between two incarnations (transactions committed, sinks
        flushed, nothing open), then put each back in the state it was in."""
        sups = self.tasks_of(connector)
        before = [(s, s.target) for s in sups]
        for s in sups:
            s.set_target(TaskState.PAUSED)
        try:
            if not all(await asyncio.gather(*(s.settled(timeout) for s in sups))):
                raise RetriableConnectorError(
                    f"connector {connector!r}: its tasks did not pause within {timeout:.0f}s; nothing was changed"
                )
            yield sups
        finally:
            for s, target in before:
                s.set_target(target)

    # -- disk full -------------------------------------------------------------

    def on_disk_full(self, exc: DiskFullError) -> None:
        if self.disk_full is not None or self.stop_event.is_set():
            return
        path = exc.path or (self.config.log.embedded.dir if self.config.log.embedded else ".")
        self.disk_full = exc
        self.space_back.clear()
        if self.settings.on_disk_full == "stop":
            log.error("disk full: %s has %d bytes free; stopping (worker: on_disk_full: stop)", path, exc.free_bytes)
            self.fail(exc)
            return
        log.warning(
            "disk full: %s has %d bytes free; sources paused until %d bytes are free (checked every %gs)",
            path, exc.free_bytes, self.settings.disk_resume_bytes, self.settings.disk_poll_s,
        )
        for sup in self.supervisors.values():
            if sup.task.kind == "source":
                sup.halt()
        self._space_watch = asyncio.create_task(self._wait_for_space(path), name="millpond-disk-space")

    async def _wait_for_space(self, path: str) -> None:
        while not self.stop_event.is_set():
            await _first(self.stop_event, timeout=self.settings.disk_poll_s)
            try:
                free = await asyncio.to_thread(self.options.disk_free, path)
            except OSError as exc:
                log.debug("free space of %s unknown (%s); checking again", path, exc)
                continue
            if free >= self.settings.disk_resume_bytes:
                log.warning("disk space is back: %s has %d bytes free; sources resume", path, free)
                self.disk_full = None
                self.space_back.set()
                return

    def on_task_failed(self) -> None:
        if all(s.failed for s in self.supervisors.values()):
            names = ", ".join(repr(t.name) for t in self.tasks)
            self.fail(ConnectorError(f"every task failed and was given up ({names}); see the lines above"))

    # -- the run ---------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped (signal, idle, terminal failure); raise the terminal failure if any."""
        _tune_gc()
        if self.assignment is not None:
            await self.assignment.open()  # the group's answer starts this worker's share of the sources
        jobs = self.jobs
        jobs.start()
        supervisors = [
            asyncio.create_task(s.run(), name=f"millpond:{s.task.name}") for s in self.supervisors.values()
        ]
        watcher = asyncio.create_task(self._watch_idle()) if self.options.until_idle else None
        try:
            await self.stop_event.wait()
            # let every task finish its transaction / flush in hand
            await asyncio.gather(*supervisors, return_exceptions=True)
        finally:
            for s in supervisors:
                s.cancel()
            extra = [t for t in (watcher, self._space_watch) if t is not None]
            for t in extra:
                t.cancel()
            await asyncio.gather(*supervisors, *extra, return_exceptions=True)
            jobs.shutdown()
            if self.assignment is not None:
                # after the sources stopped: leaving hands their tasks over at once
                await self.assignment.close()
        if self.failure is not None:
            raise self.failure
        failed = [t for t in self.tasks if t.state is TaskState.FAILED]
        if failed:
            raise ConnectorError(
                "stopped with failed tasks: " + "; ".join(f"{t.kind} {t.name!r} ({_last_line(t.trace)})" for t in failed)
            )

    def _assign_source(self, i: int) -> None:
        """The group gave this worker source ``i`` (of ``_sources``)."""
        self._sources[i].assign()

    async def _unassign_source(self, i: int) -> None:
        """The group took source ``i`` away; returns once nothing of it runs here."""
        await self._sources[i].unassign()

    async def _watch_idle(self) -> None:
        """For ``until_idle``: stop once sources are idle and sinks caught up, twice in a row."""
        confirmations = 0
        while not self.stop_event.is_set():
            await asyncio.sleep(0.2)
            if await self._idle():
                confirmations += 1
                if confirmations >= 2:
                    log.info("pipeline %r is idle: every source is drained and every sink caught up", self.config.name)
                    self.stop()
            else:
                confirmations = 0

    async def _idle(self) -> bool:
        if self.assignment is not None and not self.assignment.settled:
            return False  # before the group's first answer every source looks unassigned, not idle
        for sup in self.supervisors.values():
            task = sup.task
            if sup.failed or sup.target is not TaskState.RUNNING or not sup.assigned:
                continue  # held on purpose: nothing more will come from it
            if isinstance(task, SourceTask):
                if self.disk_full is not None or not task.is_idle(self.options.idle_seconds):
                    return False
            elif not await task.caught_up():
                return False
        return True


def _last_line(trace: str | None) -> str:
    lines = [line for line in (trace or "").strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no trace"


def _tune_gc() -> None:
    """Collect garbage less eagerly: a worker allocates a record object per
    record, and the default thresholds (700, 10, 10) made cyclic collections
    traverse every record in flight, over and over (consuming 200,000 records
    took 3.0 us each with the defaults, 1.25 us with these). Objects alive at start-up (modules, config) are frozen out
    of collection altogether."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
