"""What the views need beyond Kafka Connect's API: history, topics, records, and the ``/ui`` files.

=================================================  ==========================================
``GET /history?since=T``                           samples taken every second (the last 5 min):
                                                   per connector counts, rates and state; lag
                                                   per group and partition; log size per topic
``GET /topics`` (``?all=true``)                    topics and their partitions' offsets and size
``GET /topics/{topic}/partitions/{p}/records``     ``?offset=N`` or ``?timestamp=MS``, ``&limit=``:
                                                   committed records, each in the shape
                                                   ``POST /topics/{topic}/records`` takes (bytes
                                                   in base64) plus its ``offset``
``GET /ui/``                                       the dashboard (static files in this package)
=================================================  ==========================================

Rates are computed here, once, between two samples the worker took itself, so
``millpond top`` and the dashboard show the same figures and neither has to invent
a rate for its first look: a sample without a predecessor has ``null`` rates, and
so has a source's ``rate_in`` (the runtime counts what a source hands to the log,
not what it read). A negative ``offset`` counts offsets back from the log end
(``consume --offset -N`` counts records instead); transaction markers take offsets
too, so it may answer fewer records than that.

The dashboard's files are served without the bearer token (they hold no data and
a browser cannot add a header to a page load); every call they make carries it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web

from ...backends.base import IsolationLevel
from ...records import TopicPartition
from ..admin import encode_records

if TYPE_CHECKING:
    from ...runtime.worker import Worker

log = logging.getLogger("millpond.api.ui")

#: seconds between two samples, and how many are kept (5 minutes)
SAMPLE_INTERVAL_S = 1.0
HISTORY_SAMPLES = 300
#: most records one records call answers
MAX_RECORDS = 500

_STATIC = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}


def _http(status: int, message: str) -> NoReturn:
    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound}[status]
    raise cls(text=json.dumps({"error_code": status, "message": message}), content_type="application/json")


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        _http(400, f"query parameter {name}={raw!r} is not an integer")


class Views:
    """Samples the worker once a second and serves the read endpoints and the dashboard."""

    def __init__(self, worker: Worker, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.worker = worker
        self.interval = interval
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY_SAMPLES)
        self._sampler: asyncio.Task[None] | None = None

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/history", self.get_history)
        app.router.add_get("/topics", self.topics)
        app.router.add_get("/topics/{topic}/partitions/{partition}/records", self.records)
        app.router.add_get("/ui", self.ui_redirect)
        app.router.add_get("/ui/", self.ui_file)
        app.router.add_get("/ui/{file}", self.ui_file)

    # -- sampling ----------------------------------------------------------------------

    def start(self) -> None:
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever(), name="api-history")

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log went away for a moment: a gap in the charts, not a crash
                log.debug("history: sample skipped: %s", exc)
            await asyncio.sleep(self.interval)

    async def sample(self) -> dict[str, Any]:
        """Take one sample, with rates against the previous one, and keep it."""
        now = round(time.time(), 3)  # the time shown is the time the rates are computed with
        previous = self.history[-1] if self.history else None
        connectors: dict[str, dict[str, Any]] = {}
        for task in self.worker.tasks:
            c = connectors.setdefault(task.spec.name, {
                "type": task.kind, "state": self.worker.connector_state(task.spec.name).value,
                "tasks": 0, "records_in": 0, "records_out": 0, "bytes_out": 0,
                "errors": 0, "dead_letters": 0, "restarts": 0, "task_states": []})
            counts = task.errors.counts
            c["tasks"] += 1
            c["task_states"].append(task.state.value)
            c["records_in"] += task.records_in
            c["records_out"] += task.records_out
            c["bytes_out"] += task.bytes_out
            c["errors"] += counts.skipped + counts.dead_lettered
            c["dead_letters"] += counts.dead_lettered
            c["restarts"] += task.restarts
        for name, c in connectors.items():
            before = previous["connectors"].get(name) if previous else None
            for what in ("in", "out"):
                rate = None
                if what == "in" and c["type"] == "source":
                    pass  # the runtime counts what a source hands to the log, not what it read: no rate
                elif before is not None and previous is not None and now > previous["time"]:
                    # a restarted counter (never below zero) reads as no progress, not a negative rate
                    moved = max(0, c[f"records_{what}"] - before[f"records_{what}"])
                    rate = round(moved / (now - previous["time"]), 1)
                c[f"rate_{what}"] = rate
        backend = self.worker.backend
        lag: list[dict[str, Any]] = []
        seen: set[str] = set()
        for task in self.worker.tasks:
            group = getattr(task, "group", None)
            if not group or group in seen:
                continue
            seen.add(group)
            try:
                offsets = await backend.describe_group(group)
            except Exception as exc:  # not there yet (a sink that has not committed): no lag in this sample
                log.debug("history: group %r not described: %s", group, exc)
                continue
            for g in offsets:
                lag.append({"group": group, "topic": g.topic_partition.topic,
                            "partition": g.topic_partition.partition, "committed": g.committed,
                            "log_end_offset": g.log_end_offset, "lag": g.lag})
        topics: dict[str, dict[str, int]] = {}
        for topic in sorted(await backend.list_topics()):
            with contextlib.suppress(Exception):  # deleted meanwhile
                parts = await backend.describe_topic(topic)
                topics[topic] = {"partitions": len(parts), "size_bytes": sum(p.size_bytes for p in parts),
                                 "records": sum(p.log_end_offset - p.log_start_offset for p in parts)}
        out = {"time": now, "connectors": connectors, "lag": lag, "topics": topics}
        self.history.append(out)
        return out

    async def get_history(self, request: web.Request) -> web.Response:
        since = request.query.get("since")
        samples = list(self.history)
        if since:
            try:
                after = float(since)
            except ValueError:
                _http(400, f"query parameter since={since!r} is not a time in seconds")
            samples = [s for s in samples if s["time"] > after]
        return web.json_response({"interval": self.interval, "samples": samples})

    # -- topics and records --------------------------------------------------------------

    async def topics(self, request: web.Request) -> web.Response:
        everything = request.query.get("all", "false").lower() in ("true", "1")
        backend = self.worker.backend
        out = []
        for topic in sorted(await backend.list_topics()):
            if topic.startswith("__") and not everything:
                continue
            parts = await backend.describe_topic(topic)
            out.append({"name": topic, "partitions": [
                {"partition": p.partition, "log_start_offset": p.log_start_offset,
                 "log_end_offset": p.log_end_offset, "high_watermark": p.high_watermark,
                 "last_stable_offset": p.last_stable_offset, "size_bytes": p.size_bytes,
                 "segments": p.segments} for p in parts]})
        return web.json_response(out)

    async def records(self, request: web.Request) -> web.Response:
        """Committed records of one partition from ``offset`` (or the first at or after ``timestamp``)."""
        topic = request.match_info["topic"]
        backend = self.worker.backend
        if topic not in await backend.list_topics():
            _http(404, f"Topic {topic} not found")
        try:
            partition = int(request.match_info["partition"])
        except ValueError:
            _http(400, f"partition {request.match_info['partition']!r} is not an integer")
        infos = {p.partition: p for p in await backend.describe_topic(topic)}
        if partition not in infos:
            _http(404, f"Topic {topic} has no partition {partition}")
        info = infos[partition]
        limit = _int(request, "limit")
        if limit is None:
            limit = 50
        if not 1 <= limit <= MAX_RECORDS:
            _http(400, f"limit={limit} is not between 1 and {MAX_RECORDS}")
        tp = TopicPartition(topic, partition)
        stamp = _int(request, "timestamp")
        if stamp is not None:
            found = await backend.offset_for_time(tp, stamp)
            start = info.log_end_offset if found is None else found
        else:
            given = _int(request, "offset")
            if given is None:
                start = info.log_start_offset
            elif given < 0:  # offsets back from the end
                start = max(info.log_start_offset, info.log_end_offset + given)
            else:
                start = max(given, info.log_start_offset)
        end = info.last_stable_offset
        records: list[dict[str, Any]] = []
        if start < end:
            consumer = backend.consumer([topic], group=None, isolation=IsolationLevel.read_committed)
            try:
                for other in infos.values():
                    if other.partition != partition:
                        await consumer.seek(TopicPartition(topic, other.partition), other.log_end_offset)
                await consumer.seek(tp, start)
                empty = 0
                while len(records) < limit and await consumer.position(tp) < end and empty < 10:
                    batch = await consumer.poll(max_records=limit - len(records), timeout=0.1)
                    empty = 0 if batch else empty + 1
                    mine = [r for r in batch if r.topic_partition == tp][:limit - len(records)]
                    for r, shaped in zip(mine, encode_records(mine, partition)):
                        records.append({"offset": r.offset, **shaped})
            finally:
                await consumer.close()
        return web.json_response({"topic": topic, "partition": partition, "start": start,
                                  "log_start_offset": info.log_start_offset,
                                  "log_end_offset": info.log_end_offset, "records": records})

    # -- the dashboard's files ---------------------------------------------------------------

    async def ui_redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def ui_file(self, request: web.Request) -> web.Response:
        name = request.match_info.get("file", "index.html")
        kind = next((t for ext, t in _STATIC.items() if name.endswith(ext)), None)
        here = resources.files(__name__)
        if kind is None or "/" in name or name.startswith(".") or not here.joinpath(name).is_file():
            _http(404, f"no file {name!r} in the dashboard")
        return web.Response(body=here.joinpath(name).read_bytes(), content_type=kind,
                            headers={"Cache-Control": "no-cache"})
