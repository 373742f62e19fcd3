"""Starting and stopping a run: checks before the log is opened, the topics, the worker and its API.

``run_pipeline`` is what ``millpond run`` calls. It installs the stop signals
first of all (a SIGTERM in the first moments still stops cleanly), checks
what a restart cannot fix (``preflight``), opens the backend, creates the
declared topics, then runs a :class:`~millpond.runtime.worker.Worker` with
the HTTP API beside it. The worker itself knows nothing of the API: the API
reads the worker.

Validate once, build once: the pipeline's plugins were resolved and their
settings validated when the file was read (``millpond.config``); nothing here
builds a connector, a transform or a converter. Each task builds its own live
objects from those resolved classes when it starts (``build.py``).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from ..api.server import ApiServer
from ..backends.base import LogBackend, TopicSpec
from ..config import PipelineConfig, resolve_pipeline
from ..errors import ConfigError
from .settings import WorkerSettings, check_listen, parse_listen
from .signals import StopSignals
from .source_offsets import ensure_source_offsets_topic
from .worker import RuntimeOptions, Worker

log = logging.getLogger("millpond.runtime")


def preflight(config: PipelineConfig, api_listen: str = "off") -> None:
    """Fail fast, before the log is opened, on anything a restart cannot fix: the pipeline's plugins,
    settings and guarantees (resolved when its file was read; once here for a config built in code),
    and where the API may listen (``--api`` may have moved it off loopback)."""
    resolve_pipeline(config)
    try:
        check_listen(api_listen, config.api.token)
    except ValueError as exc:
        raise ConfigError(f"api: {exc}") from None


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


def _install_loop_signals(
    loop: asyncio.AbstractEventLoop, stop_requested: asyncio.Event, worker_ref: list[Worker]
) -> list[int]:
    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop_requested.is_set():
            log.warning("second %s: cancelling", name)
            for t in asyncio.all_tasks(loop):
                if t.get_name().startswith("millpond:"):
                    t.cancel()
            return
        log.info("%s: stopping after the work in hand", name)
        stop_requested.set()
        for w in worker_ref:
            w.stop()

    installed: list[int] = []
    for signum in (signal.SIGTERM.value, signal.SIGINT.value):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    return installed


async def run_pipeline_async(
    config: PipelineConfig,
    *,
    until_idle: bool = False,
    options: RuntimeOptions | None = None,
    backend: LogBackend | None = None,
) -> Worker | None:
    """Run ``config`` in the current loop; ``backend`` (already open) is for tests and embedding.

    Returns the worker once it stopped, or None when a signal came before the log was opened.
    """
    options = options or RuntimeOptions()
    options.until_idle = options.until_idle or until_idle
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    worker_ref: list[Worker] = []
    installed: list[int] = []
    # first of all: a signal from now on stops the run cleanly, even before the log is open
    if options.install_signal_handlers:
        installed = _install_loop_signals(loop, stop_requested, worker_ref)
    early = options.early_signals
    if early is not None and early.received:
        log.info("%s before the start: stopping", signal.Signals(early.received[0]).name)
        stop_requested.set()
    own_backend = backend is None
    try:
        preflight(config, options.api_listen)
        if stop_requested.is_set():
            raise _Stopped
        if backend is None:
            from ..backends import open_backend

            opened = open_backend(config.log)
            await opened.open()
            backend = opened  # from here on the ``finally`` below closes it, also when signing fails
            if config.audit is not None:
                from ..audit.signing import sign_checkpoints

                await sign_checkpoints(backend, config.audit)
        await create_topics(config, backend)
        worker = Worker(config, backend, options)
        worker_ref.append(worker)
        if stop_requested.is_set():
            worker.stop()
        api = None
        if options.api_listen.strip().lower() != "off" and not stop_requested.is_set():
            api = ApiServer(worker, options.api_listen, token=config.api.token,
                            fallback_to_free_port=options.api_listen_is_default)
            await api.start()
        try:
            await worker.run()
        finally:
            if api is not None:
                await api.close()
        return worker
    except _Stopped:
        log.info("pipeline %r stopped before it started", config.name)
        return None
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        if early is not None:
            early.restore()  # removing a loop handler resets the signal to its default (which kills)
        if own_backend and backend is not None:
            await backend.close()


class _Stopped(Exception):
    """A stop signal came before the log was opened."""


def run_pipeline(
    config: PipelineConfig,
    *,
    until_idle: bool = False,
    options: RuntimeOptions | None = None,
    api: str | None = None,
    signals: StopSignals | None = None,
    worker_id: str | None = None,
) -> None:
    """Run a pipeline until SIGTERM/SIGINT (or, with ``until_idle``, until it has nothing left to do).

    ``api`` is ``HOST:PORT`` or ``off``; None takes the pipeline file's ``api:`` block. ``signals``
    are the handlers the CLI installed at its first moment. Raises the terminal error that stopped
    the run, if any (a ``MillpondError`` whose message names the connector and the cause).
    """
    options = options or RuntimeOptions()
    if api is not None:
        try:
            parse_listen(api)
        except ValueError as exc:
            raise ConfigError(f"--api: {exc}") from None
        options.api_listen = api
    else:
        options.api_listen = config.api.listen
        options.api_listen_is_default = "listen" not in config.api.model_fields_set
    options.early_signals = signals
    if worker_id is not None:
        try:
            WorkerSettings(id=worker_id)
        except ValueError:
            raise ConfigError(f"--worker-id {worker_id!r}: use letters, digits and . _ : @ - only") from None
        options.worker_id = worker_id
    asyncio.run(run_pipeline_async(config, until_idle=until_idle, options=options))


