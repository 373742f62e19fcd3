"""The worker: runs every connector task of one pipeline in one asyncio loop.

It checks the pipeline (guarantees, connector configs) before touching the
log, opens the backend, creates the declared topics, then supervises one
coroutine per task:

- a task that fails with a retriable error, or an unexpected one (an
  ``OSError``, a bug), is restarted with exponential backoff and jitter; it
  resumes from its committed offsets, so nothing is lost or doubled;
- a terminal error (``MillpondError`` with ``retriable = False``: bad config,
  a record under the ``fail`` policy, a fenced producer, ...) stops the whole
  pipeline and :func:`run_pipeline` raises it.

SIGTERM / SIGINT set the stop event: sources finish the transaction in hand,
sinks flush and commit, then the backend closes. A second signal cancels.

Backpressure and memory: tasks hand records over through the log, not
through in-memory queues. A source is not polled while its transaction
commits, and a transaction is bounded by records, bytes and time
(``SourceLimits``); a sink polls a bounded number of records and writes them
before polling again (``SinkLimits``). Memory per task stays bounded however
far a sink lags behind a source.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import signal
import time
from dataclasses import dataclass, field

from ..backends.base import LogBackend, TopicSpec
from ..config import PipelineConfig, check_guarantees
from ..errors import ConfigError, MillpondError
from .build import make_converters, make_transforms
from .scheduler import JobIntervals, PipelineJobs
from .sink_task import SinkLimits, SinkTask
from .source_offsets import ensure_source_offsets_topic
from .source_task import SourceLimits, SourceTask

log = logging.getLogger("millpond.runtime")


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


def preflight(config: PipelineConfig) -> None:
    """Fail fast, before the log is opened, on anything a restart cannot fix."""
    check_guarantees(config)
    for spec in config.connectors:
        if spec.kind == "sink" and spec.tasks > 1 and config.log.embedded is not None:
            raise ConfigError(
                f"connector {spec.name!r}: tasks: {spec.tasks} needs a log that splits a group's partitions "
                f"between members (Kafka); on the embedded log one sink task reads every partition, use tasks: 1"
            )
        spec.resolve()
        make_transforms(spec)
        make_converters(spec)


async def _open(config: PipelineConfig) -> LogBackend:
    from ..backends import open_backend

    backend = open_backend(config.log)
    await backend.open()
    return backend


async def create_topics(config: PipelineConfig, backend: LogBackend) -> None:
    declared = {t.name for t in config.topics}
    for topic in config.topics:
        topic_spec = TopicSpec(topic.name, topic.partitions, dict(topic.config))
        await backend.create_topic(topic_spec, exist_ok=True)
        # the pipeline file is the truth for the topics it declares
        for key, (old, new) in sorted((await backend.alter_topic(topic_spec)).items()):
            log.info("topic %r: %s changed from %s to %s", topic.name, key, old, new)
    await ensure_source_offsets_topic(backend)
    existing = set(await backend.list_topics())
    for spec in config.connectors:
        dlq = spec.errors.topic if spec.errors.policy == "dead_letter" else None
        if dlq and dlq not in existing and dlq not in declared:
            await backend.create_topic(TopicSpec(dlq, 1), exist_ok=True)
            existing.add(dlq)
        wanted = [spec.topic] if spec.kind == "source" else list(spec.topics)
        for name in wanted:
            if name and name not in existing:
                raise ConfigError(
                    f"connector {spec.name!r} uses topic {name!r}, which is neither declared under "
                    f"'topics:' nor present in the log"
                )


class Worker:
    """Supervises the tasks of one pipeline on an open backend."""

    def __init__(self, config: PipelineConfig, backend: LogBackend, options: RuntimeOptions | None = None) -> None:
        self.config = config
        self.backend = backend
        self.options = options or RuntimeOptions()
        self.stop_event = asyncio.Event()
        self.failure: BaseException | None = None
        self.tasks: list[SourceTask | SinkTask] = []
        for spec in config.connectors:
            for i in range(spec.tasks):
                if spec.kind == "source":
                    self.tasks.append(SourceTask(config, spec, backend, i, self.options.source_limits))
                else:
                    self.tasks.append(SinkTask(config, spec, backend, i, self.options.sink_limits))
        self.restarts: dict[str, int] = {t.name: 0 for t in self.tasks}

    def stop(self) -> None:
        self.stop_event.set()

    async def run(self) -> None:
        """Run until stopped (signal, idle, terminal failure); raise the terminal failure if any."""
        _tune_gc()
        jobs = PipelineJobs(self.backend, self.tasks, self.options.jobs)
        jobs.start()
        supervisors = [asyncio.create_task(self._supervise(t), name=f"millpond:{t.name}") for t in self.tasks]
        watcher = asyncio.create_task(self._watch_idle()) if self.options.until_idle else None
        try:
            await self.stop_event.wait()
            # let every task finish its transaction / flush in hand
            await asyncio.gather(*supervisors, return_exceptions=True)
        finally:
            for s in supervisors:
                s.cancel()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(*supervisors, return_exceptions=True)
            if watcher is not None:
                await asyncio.gather(watcher, return_exceptions=True)
            jobs.shutdown()
        if self.failure is not None:
            raise self.failure

    async def _supervise(self, task: SourceTask | SinkTask) -> None:
        attempt = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                await task.run(self.stop_event)
                return
            except asyncio.CancelledError:
                raise
            except MillpondError as exc:
                if not exc.retriable:
                    log.error("%s %r failed and cannot recover: %s", task.kind, task.name, exc)
                    if self.failure is None:
                        self.failure = exc
                    self.stop_event.set()
                    return
                reason: BaseException = exc
            except Exception as exc:
                reason = exc
            if time.monotonic() - started >= self.options.backoff_reset_s:
                attempt = 0
            delay = min(self.options.backoff_max_s, self.options.backoff_initial_s * (2**attempt))
            delay *= random.uniform(0.5, 1.0)
            attempt += 1
            self.restarts[task.name] += 1
            log.warning(
                "%s %r failed (%s: %s); restart #%d in %.1fs from committed offsets",
                task.kind, task.name, type(reason).__name__, reason, self.restarts[task.name], delay,
                exc_info=reason,
            )
            try:
                await asyncio.wait_for(self.stop_event.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def _watch_idle(self) -> None:
        """For ``until_idle``: stop once sources are idle and sinks caught up, twice in a row."""
        confirmations = 0
        while not self.stop_event.is_set():
            await asyncio.sleep(0.2)
            if await self._idle():
                confirmations += 1
                if confirmations >= 2:
                    log.info("pipeline %r is idle: every source is drained and every sink caught up", self.config.name)
                    self.stop_event.set()
            else:
                confirmations = 0

    async def _idle(self) -> bool:
        for task in self.tasks:
            if isinstance(task, SourceTask):
                if not task.is_idle(self.options.idle_seconds):
                    return False
            elif not await task.caught_up():
                return False
        return True


def _tune_gc() -> None:
    """Collect garbage less eagerly: a worker allocates a record object per
    record, and the default thresholds (700, 10, 10) made cyclic collections
    traverse every record in flight, over and over (consuming 200,000 records
    took 3.0 us each with the defaults, 1.25 us with these). Objects alive at start-up (modules, config) are frozen out
    of collection altogether."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


async def run_pipeline_async(
    config: PipelineConfig,
    *,
    until_idle: bool = False,
    options: RuntimeOptions | None = None,
    backend: LogBackend | None = None,
) -> Worker:
    """Run ``config`` in the current loop; ``backend`` (already open) is for tests and embedding."""
    options = options or RuntimeOptions()
    options.until_idle = options.until_idle or until_idle
    preflight(config)
    own_backend = backend is None
    if backend is None:
        backend = await _open(config)
    try:
        await create_topics(config, backend)
        worker = Worker(config, backend, options)
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        if options.install_signal_handlers:
            def on_signal(signum: int) -> None:
                if worker.stop_event.is_set():
                    log.warning("second %s: cancelling", signal.Signals(signum).name)
                    for t in asyncio.all_tasks(loop):
                        if t.get_name().startswith("millpond:"):
                            t.cancel()
                    return
                log.info("%s: stopping after the work in hand", signal.Signals(signum).name)
                worker.stop()

            for signum in (signal.SIGTERM.value, signal.SIGINT.value):
                try:
                    loop.add_signal_handler(signum, on_signal, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError):  # not the main thread
                    pass
        try:
            await worker.run()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
        return worker
    finally:
        if own_backend:
            await backend.close()


def run_pipeline(config: PipelineConfig, *, until_idle: bool = False, options: RuntimeOptions | None = None) -> None:
    """Run a pipeline until SIGTERM/SIGINT (or, with ``until_idle``, until it has nothing left to do).

    Raises the terminal error that stopped it, if any (a ``MillpondError``
    whose message names the connector and the cause).
    """
    asyncio.run(run_pipeline_async(config, until_idle=until_idle, options=options))
