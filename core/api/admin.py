"""The worker's write endpoints for the CLI: what a command does when a worker holds the log.

Connect has no such resources (its cluster owns no log); these follow its habits
(JSON bodies, ``{"error_code", "message"}`` on errors, 404 for what is not there):

=========================================  ==============================================================
``POST /topics``                           ``{"name", "partitions", "config", "if_not_exists"}`` -> 201
``PUT /topics/{topic}/config``             ``{"config": {...}}``: the topic's settings become these
``PATCH /topics/{topic}/config``           ``{"set": {...}, "delete": [...]}``: change only those
``DELETE /topics/{topic}``                 204; 409 while a connector of this worker uses the topic
``POST /topics/{topic}/records``           ``{"records": [...], "transactional_id"}``: one transaction;
                                           or a Kafka RecordBatch v2 body (below)
``PATCH /groups/{group}/offsets``          ``{"offsets": [{"topic", "partition", "offset"}]}``, a group
                                           that is not a connector (connectors: ``.../offsets``)
``POST /admin/retention|compaction``       run the job now; what it did
``POST /admin/dlq/{topic}/replay``         ``{"connector", "execute"}``: see ``runtime/dlq.py``
=========================================  ==============================================================

Records travel as ``{"key", "value", "timestamp", "headers": [[name, value]], "partition"}`` with
bytes in base64 (null stays null): a value is any bytes, not only text. The CLI sends instead the
log's own format, Kafka RecordBatch v2 (``Content-Type: application/vnd.kafka.recordbatch.v2``,
``?partition=N&transactional_id=...``), built and read by aiokafka's C codec: JSON and base64
cost about 25 us a record on both sides, most of it on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..backends.base import LogBackend, TopicSpec, send_in_transaction
from ..config import check_topic_name
from ..errors import ConfigError, TopicExistsError
from ..records import Record, TopicPartition

if TYPE_CHECKING:
    from ..runtime.scheduler import Job
    from ..runtime.worker import Worker


# -- records on the wire -------------------------------------------------------------------

RECORD_BATCH = "application/vnd.kafka.recordbatch.v2"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: Any, where: str) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where} is base64 text or null")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError(f"{where} is not base64") from None


def encode_records(records: Sequence[Record], partition: int | None = None) -> list[dict[str, Any]]:
    return [
        {"key": _b64(r.key), "value": _b64(r.value), "timestamp": r.timestamp,
         "headers": [[k, _b64(v)] for k, v in r.headers], "partition": partition}
        for r in records
    ]


def decode_records(items: Any) -> list[tuple[Record, int | None]]:
    """The request's records with the partition each asks for; ValueError naming the bad one."""
    if not isinstance(items, list):
        raise ValueError('expected {"records": [{"key", "value", "timestamp", "headers", "partition"}]}')
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"records[{i}] is not an object")
        headers = []
        for j, pair in enumerate(item.get("headers") or []):
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise ValueError(f"records[{i}].headers[{j}] is not [name, value]")
            headers.append((pair[0], _unb64(pair[1], f"records[{i}].headers[{j}]")))
        timestamp, partition = item.get("timestamp"), item.get("partition")
        for name, value in (("timestamp", timestamp), ("partition", partition)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"records[{i}].{name} is a number or null")
        record = Record(_unb64(item.get("value"), f"records[{i}].value"), _unb64(item.get("key"), f"records[{i}].key"),
                        timestamp, headers)
        out.append((record, partition))
    return out


def encode_batch(records: Sequence[Record]) -> bytes:
    """``records`` as one Kafka RecordBatch v2 (offsets 0..n-1; a None timestamp becomes now)."""
    from ..log.batch import build_batch

    return bytes(build_batch(records))


def decode_batches(body: bytes, partition: int | None) -> list[tuple[Record, int | None]]:
    """The records of the RecordBatch v2 batches in ``body``; ValueError when one is torn or corrupt."""
    from ..log.batch import LOG_OVERHEAD, crc_ok, iter_records, walk

    out: list[tuple[Record, int | None]] = []
    end = 0
    for position, header in walk(body, 0, len(body)):
        if header.magic != 2 or not crc_ok(body, position, header):
            raise ValueError(f"the record batch at byte {position} is not a valid RecordBatch v2 (CRC or magic)")
        end = position + header.batch_length + LOG_OVERHEAD
        out += [(Record(r.value, r.key, r.timestamp, list(r.headers)), partition)
                for r in iter_records(body[position:end])]
    if end != len(body):
        raise ValueError(f"the body ends with {len(body) - end} bytes that are not a whole record batch")
    return out


# -- what both paths do (the CLI directly, or the worker for it) -----------------------------------------


async def alter_topic_config(backend: LogBackend, topic: str, set_: Mapping[str, Any],
                             delete: Sequence[str] = (), *, replace: bool = False) -> dict[str, tuple[object, object]]:
    """Change a topic's settings: these set, those back to their defaults (``replace``: only ``set_``
    remains). Returns {setting: (old, new)} for what changed."""
    current = {} if replace else await backend.topic_settings(topic)
    wanted = {k: v for k, v in current.items() if k not in delete}
    wanted.update(set_)
    return await backend.alter_topic(TopicSpec(topic, await backend.partitions_for(topic), wanted))


async def append_records(backend: LogBackend, topic: str, records: Sequence[tuple[Record, int | None]],
                         transactional_id: str) -> int:
    """Append ``records`` to ``topic`` in one transaction: all of them or none. Returns how many."""
    partitions = await backend.partitions_for(topic)
    for record, partition in records:
        if partition is not None and not 0 <= partition < partitions:
            raise ConfigError(f"topic {topic!r} has partitions 0-{partitions - 1}, not {partition}")
    await send_in_transaction(backend, transactional_id, ((topic, r, p) for r, p in records))
    return len(records)


# -- the handlers ----------------------------------------------------------------------------------


def _answer(status: int, message: str) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {400: web.HTTPBadRequest, 404: web.HTTPNotFound,
                                                 409: web.HTTPConflict}
    return kinds[status](text=json.dumps({"error_code": status, "message": message}), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _answer(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise _answer(400, "the body is not a JSON object")
    return body


class AdminApi:
    """Topics, produce, group offsets and maintenance for the CLI, on the worker's open backend."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    @property
    def backend(self) -> LogBackend:
        return self.worker.backend

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/topics", self.create_topic)
        app.router.add_put("/topics/{topic}/config", self.put_config)
        app.router.add_patch("/topics/{topic}/config", self.patch_config)
        app.router.add_delete("/topics/{topic}", self.delete_topic)
        app.router.add_post("/topics/{topic}/records", self.produce)
        app.router.add_patch("/groups/{group}/offsets", self.reset_group)
        app.router.add_post("/admin/retention", self.retention)
        app.router.add_post("/admin/compaction", self.compaction)
        app.router.add_post("/admin/dlq/{topic}/replay", self.dlq_replay)

    async def _known(self, topic: str) -> None:
        if topic not in await self.backend.list_topics():
            raise _answer(404, f"unknown topic {topic!r}")

    def _users(self, topic: str) -> list[str]:
        return [s.name for s in self.worker.config.connectors
                if topic == s.topic or topic in s.topics
                or (s.errors.policy == "dead_letter" and s.errors.topic == topic)]

    async def create_topic(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name, partitions, config = body.get("name"), body.get("partitions", 1), body.get("config") or {}
        if not isinstance(name, str):
            raise _answer(400, 'expected {"name": TOPIC, "partitions": N, "config": {...}}')
        if not isinstance(partitions, int) or isinstance(partitions, bool) or partitions < 1:
            raise _answer(400, f"partitions must be a number of at least 1, not {partitions!r}")
        if not isinstance(config, dict):
            raise _answer(400, "config is an object of Kafka topic settings")
        check_topic_name(name)
        try:
            await self.backend.create_topic(TopicSpec(name, partitions, config),
                                            exist_ok=bool(body.get("if_not_exists")))
        except TopicExistsError as exc:
            raise _answer(409, str(exc)) from None
        return web.json_response({"name": name, "partitions": await self.backend.partitions_for(name),
                                  "config": await self.backend.topic_settings(name)}, status=201)

    async def put_config(self, request: web.Request) -> web.Response:
        body = await _body(request)
        config = body.get("config")
        if not isinstance(config, dict):
            raise _answer(400, 'expected {"config": {SETTING: VALUE}}')
        return await self._alter(request.match_info["topic"], config, [], replace=True)

    async def patch_config(self, request: web.Request) -> web.Response:
        body = await _body(request)
        set_, delete = body.get("set") or {}, body.get("delete") or []
        if not isinstance(set_, dict) or not isinstance(delete, list) or not all(isinstance(k, str) for k in delete):
            raise _answer(400, 'expected {"set": {SETTING: VALUE}, "delete": [SETTING]}')
        return await self._alter(request.match_info["topic"], set_, delete)

    async def _alter(self, topic: str, set_: dict[str, Any], delete: list[str], *, replace: bool = False
                     ) -> web.Response:
        await self._known(topic)
        changes = await alter_topic_config(self.backend, topic, set_, delete, replace=replace)
        # the worker makes a declared topic's settings the file's again at its next start
        declared = any(t.name == topic for t in self.worker.config.topics)
        return web.json_response({"name": topic, "config": await self.backend.topic_settings(topic),
                                  "changes": {k: [old, new] for k, (old, new) in sorted(changes.items())},
                                  "declared_in_pipeline": declared})

    async def delete_topic(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        await self._known(topic)
        users = self._users(topic)
        if users:
            raise _answer(409, f"topic {topic!r} is used by connector(s) {', '.join(users)} of this worker; "
                               f"take them out of the pipeline and restart the worker first")
        await self.backend.delete_topic(topic)
        return web.Response(status=204)

    async def produce(self, request: web.Request) -> web.Response:
        topic = request.match_info["topic"]
        await self._known(topic)
        try:
            if request.content_type == RECORD_BATCH:
                part = request.query.get("partition")
                if part is not None and not part.isdigit():
                    raise ValueError(f"partition={part!r} is not a partition number")
                # off the event loop: the worker's tasks go on while a large batch is decoded
                records = await asyncio.to_thread(decode_batches, await request.read(),
                                                  None if part is None else int(part))
                txn = request.query.get("transactional_id")
            else:
                body = await _body(request)
                records = decode_records(body.get("records"))
                txn = body.get("transactional_id")
        except ValueError as exc:
            raise _answer(400, str(exc)) from None
        txn = txn or f"millpond-cli-produce-{topic}"
        count = await append_records(self.backend, topic, records, str(txn))
        return web.json_response({"topic": topic, "records": count})

    async def reset_group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group in self.worker.connector_names():
            raise _answer(409, f"{group!r} is a connector of this worker: change its offsets with "
                               f"PATCH /connectors/{group}/offsets, which pauses it first")
        body = await _body(request)
        entries = body.get("offsets")
        offsets: dict[TopicPartition, int] = {}
        for i, entry in enumerate(entries if isinstance(entries, list) else [None]):
            ok = isinstance(entry, dict) and isinstance(entry.get("topic"), str) and all(
                isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in ("partition", "offset"))
            if not ok:
                raise _answer(400, f'offsets[{i}]: expected {{"topic": T, "partition": P, "offset": N}}')
            assert isinstance(entry, dict)
            offsets[TopicPartition(entry["topic"], entry["partition"])] = entry["offset"]
        await self.backend.reset_offsets(group, offsets)
        return web.json_response({"group": group, "offsets": [
            {"topic": tp.topic, "partition": tp.partition, "offset": o} for tp, o in sorted(offsets.items())]})

    async def retention(self, request: web.Request) -> web.Response:
        return await self._maintenance("retention")

    async def compaction(self, request: web.Request) -> web.Response:
        return await self._maintenance("compaction")

    async def _maintenance(self, job: Job) -> web.Response:
        report = await self.worker.jobs.run_now(job)
        return web.json_response(report.shape())

    async def dlq_replay(self, request: web.Request) -> web.Response:
        from ..runtime.dlq import plan_replay, replay

        topic = request.match_info["topic"]
        await self._known(topic)
        body = await _body(request)
        connector = body.get("connector")
        if connector is not None and not isinstance(connector, str):
            raise _answer(400, "connector is a name or null")
        plan = await plan_replay(self.backend, topic, connector)
        if body.get("execute"):
            await replay(self.backend, plan)
        return web.json_response(plan.shape(executed=bool(body.get("execute"))))

