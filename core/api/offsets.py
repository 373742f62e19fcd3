"""Connector offsets through the API, in KIP-875's shapes, changed while the connector runs.

``GET /connectors/{name}/offsets`` answers ``{"offsets": [{"partition": {...}, "offset": {...}}]}``;
``PATCH`` takes the same body (an ``offset`` of null resets that partition) and ``DELETE`` resets
every partition; both take ``?dry_run=true``, which answers what would change and changes nothing.

Unlike Kafka Connect (which refuses unless the connector is STOPPED), the change is made while it
runs: the connector's tasks are held between two incarnations (sources commit their transaction in
hand, sinks flush and commit), the new offsets are written to the store that owns them, and the
tasks go back to the state they were in. The owners (DESIGN.md, "A running worker"):

- a sink's consumer group: ``{"kafka_topic": T, "kafka_partition": P}`` -> ``{"kafka_offset": N}``,
  N between the partition's log start and log end offsets; reset (null / DELETE) means the log
  start offset, so everything retained is read again. A sink that ``owns_offsets`` (Postgres, the
  file sink) gets the same offsets through ``Sink.reset_offsets``, and its group follows;
- a source's checkpoint in ``__source_offsets``: ``{"task": I}`` -> the checkpoint as the source
  keeps it, checked by the source class's ``validate_offset``; reset removes the checkpoint, so the
  task starts as it did the first time (the file source from the start of each file, postgres-cdc
  with a new snapshot).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from .. import plugins
from ..backends.base import LogBackend
from ..config import ConnectorSpec, PipelineConfig
from ..records import TopicPartition
from ..runtime.build import make_sink
from ..runtime.source_offsets import read_source_offset, write_source_offsets
from ..runtime.source_task import SourceTask

if TYPE_CHECKING:
    from ..runtime.worker import Worker

log = logging.getLogger("millpond.api.offsets")


def _bad(message: str) -> NoReturn:
    raise web.HTTPBadRequest(text=json.dumps({"error_code": 400, "message": message}),
                             content_type="application/json")


@dataclass(slots=True)
class Change:
    partition: dict[str, Any]
    before: Any
    after: Any

    def shape(self) -> dict[str, Any]:
        return {"partition": self.partition, "from": self.before, "to": self.after}


class ConnectorOffsets:
    """The offsets of one connector: read, planned, applied."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.sups = worker.tasks_of(name)
        self.spec = self.sups[0].task.spec

    # -- sinks: the consumer group (and the sink's own store) ------------------------------

    async def _bounds(self) -> dict[TopicPartition, tuple[int, int]]:
        bounds: dict[TopicPartition, tuple[int, int]] = {}
        for topic in self.spec.topics:
            for info in await self.worker.backend.describe_topic(topic):
                bounds[TopicPartition(info.topic, info.partition)] = (info.log_start_offset, info.log_end_offset)
        return bounds

    async def current(self) -> list[dict[str, Any]]:
        if self.spec.kind == "sink":
            committed = await self.worker.backend.committed(self.spec.name)
            return [
                {"partition": {"kafka_topic": tp.topic, "kafka_partition": tp.partition},
                 "offset": {"kafka_offset": offset}}
                for tp, offset in sorted(committed.items()) if tp.topic in self.spec.topics
            ]
        out = []
        for s in self.sups:
            task = s.task
            assert isinstance(task, SourceTask)
            checkpoint = await read_source_offset(self.worker.backend, task.offset_key)
            if checkpoint is not None:
                out.append({"partition": {"task": task.task}, "offset": checkpoint})
        return out

    async def plan(self, entries: list[Any] | None) -> list[Change]:
        """The changes ``entries`` (KIP-875's list; None: reset everything) would make; 400 on a bad one."""
        if self.spec.kind == "sink":
            return await self._plan_sink(entries)
        return await self._plan_source(entries)

    async def _plan_sink(self, entries: list[Any] | None) -> list[Change]:
        bounds = await self._bounds()
        committed = await self.worker.backend.committed(self.spec.name)
        wanted: dict[TopicPartition, int] = {}
        if entries is None:
            wanted = {tp: start for tp, (start, _end) in bounds.items()}
        for i, entry in enumerate(entries or []):
            part = entry.get("partition") if isinstance(entry, dict) else None
            if not isinstance(part, dict) or set(part) != {"kafka_topic", "kafka_partition"}:
                _bad(f"offsets[{i}]: a sink's partition is {{\"kafka_topic\": T, \"kafka_partition\": P}}")
            tp = TopicPartition(str(part["kafka_topic"]), part["kafka_partition"])
            if tp not in bounds:
                _bad(f"offsets[{i}]: connector {self.name!r} reads no partition {tp.topic}-{tp.partition} "
                     f"(its topics: {', '.join(self.spec.topics)})")
            start, end = bounds[tp]
            offset = entry.get("offset")
            if offset is None:
                wanted[tp] = start
                continue
            n = offset.get("kafka_offset") if isinstance(offset, dict) else None
            if not isinstance(n, int) or isinstance(n, bool):
                _bad(f"offsets[{i}]: a sink's offset is {{\"kafka_offset\": N}} or null")
            if not start <= n <= end:
                _bad(f"offsets[{i}]: offset {n} of {tp.topic}-{tp.partition} is outside the log "
                     f"(log_start_offset {start}, log_end_offset {end})")
            wanted[tp] = n
        return [
            Change({"kafka_topic": tp.topic, "kafka_partition": tp.partition},
                   None if committed.get(tp) is None else {"kafka_offset": committed[tp]}, {"kafka_offset": n})
            for tp, n in sorted(wanted.items()) if committed.get(tp) != n
        ]

    async def _plan_source(self, entries: list[Any] | None) -> list[Change]:
        cls = plugins.source_class(self.spec.type)
        by_task = {s.task.task: s.task for s in self.sups}
        wanted: dict[int, Any] = {}
        if entries is None:
            wanted = {i: None for i in by_task}
        for i, entry in enumerate(entries or []):
            part = entry.get("partition") if isinstance(entry, dict) else None
            task_no = part.get("task") if isinstance(part, dict) else None
            if not isinstance(task_no, int) or task_no not in by_task:
                _bad(f"offsets[{i}]: a source's partition is {{\"task\": N}}, N one of {sorted(by_task)}")
            offset = entry.get("offset")
            if offset is None:
                wanted[task_no] = None
                continue
            try:
                wanted[task_no] = cls.validate_offset(offset)
            except ValueError as exc:
                _bad(f"offsets[{i}]: not a valid offset for source {self.name!r} ({self.spec.type}): {exc}")
        changes = []
        for task_no, after in sorted(wanted.items()):
            task = by_task[task_no]
            assert isinstance(task, SourceTask)
            before = await read_source_offset(self.worker.backend, task.offset_key)
            if before != after:
                changes.append(Change({"task": task_no}, before, after))
        return changes

    # -- applying ------------------------------------------------------------------------------

    async def apply(self, changes: list[Change]) -> None:
        if not changes:
            return
        async with self.worker.quiesced(self.name):
            if self.spec.kind == "sink":
                await self._apply_sink(changes)
            else:
                await self._apply_source(changes)

    async def _apply_sink(self, changes: list[Change]) -> None:
        offsets = {TopicPartition(c.partition["kafka_topic"], c.partition["kafka_partition"]): c.after["kafka_offset"]
                   for c in changes}
        await reset_sink_offsets(self.worker.config, self.spec, self.worker.backend, offsets)

    async def _apply_source(self, changes: list[Change]) -> None:
        by_task = {s.task.task: s.task for s in self.sups}
        for c in changes:
            task = by_task[c.partition["task"]]
            assert isinstance(task, SourceTask)
            await write_source_offsets(self.worker.backend, task.transactional_id, {task.offset_key: c.after})
            log.info("source %r: checkpoint %s", task.name, "removed (starts over)" if c.after is None else "replaced")


async def reset_sink_offsets(
    config: PipelineConfig, spec: ConnectorSpec, backend: LogBackend, offsets: Mapping[TopicPartition, int]
) -> None:
    """Write a sink connector's new offsets to their owner: the sink's own store when it
    ``owns_offsets`` (through ``Sink.reset_offsets``), and the consumer group, which follows it.
    The connector's tasks must not run meanwhile (the worker holds them; or no worker runs)."""
    sink = make_sink(config, spec, 0)
    if sink.owns_offsets:
        await sink.start()
        try:
            await sink.reset_offsets(offsets)
        finally:
            await sink.stop()
    await backend.reset_offsets(spec.name, offsets)
    log.info("connector %r: offsets reset: %s", spec.name,
             ", ".join(f"{tp.topic}-{tp.partition}@{o}" for tp, o in sorted(offsets.items())))


class OffsetsApi:
    """The three handlers; the server has already checked the connector exists."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def get(self, request: web.Request) -> web.Response:
        offsets = ConnectorOffsets(self.worker, request.match_info["name"])
        return web.json_response({"offsets": await offsets.current()})

    async def patch(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            _bad("the body is not JSON; expected {\"offsets\": [{\"partition\": {...}, \"offset\": {...}}]}")
        entries = body.get("offsets") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            _bad("expected {\"offsets\": [{\"partition\": {...}, \"offset\": {...}}]}")
        return await self._change(request, entries, "altered")

    async def delete(self, request: web.Request) -> web.Response:
        return await self._change(request, None, "reset")

    async def _change(self, request: web.Request, entries: list[Any] | None, verb: str) -> web.Response:
        offsets = ConnectorOffsets(self.worker, request.match_info["name"])
        changes = await offsets.plan(entries)
        shapes = [c.shape() for c in changes]
        if request.query.get("dry_run", "false").lower() in ("true", "1"):
            return web.json_response({"dry_run": True, "changes": shapes})
        await offsets.apply(changes)
        return web.json_response({"message": f"The offsets for this connector have been {verb} successfully",
                                  "changes": shapes})
