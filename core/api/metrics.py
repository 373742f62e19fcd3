"""``GET /metrics``: the worker in Prometheus text format (``prometheus_client``).

Names follow Prometheus: ``millpond_<what>_<unit>``, ``_total`` on counters,
``_seconds`` / ``_bytes`` for units, variable parts in labels (connector,
task, topic, partition, group). Counters are read at scrape time from the
counters the task loops bump once per batch; the only thing the loops call
is ``task.observe(operation, seconds)`` once per poll, write, flush or commit,
so the per-record cost is nil. Log and lag figures are asked of the backend
when scraped. The embedded log's fsyncs are timed through the hook in
``millpond.log.observe`` (``millpond_log_fsync_seconds``), set while the API
serves; the maintenance jobs count runs and bytes reclaimed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..backends.base import GroupOffset, PartitionInfo
from ..log import observe
from ..runtime.task import ConnectorTask, TaskState

if TYPE_CHECKING:
    from ..runtime.worker import Worker

log = logging.getLogger("millpond.api.metrics")

#: batch latencies: from a fast in-memory poll (0.1 ms) to a slow fsync'd commit (10 s)
LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OPERATIONS = ("poll", "write", "flush", "commit")


@dataclass(slots=True)
class LogSnapshot:
    """What the backend said at scrape time."""

    partitions: list[PartitionInfo] = field(default_factory=list)
    groups: dict[str, list[GroupOffset]] = field(default_factory=dict)


def _observer(hist: Histogram, task: ConnectorTask) -> Callable[[str, float], None]:
    children = {op: hist.labels(task.spec.name, str(task.task), op) for op in OPERATIONS}

    def observe(operation: str, seconds: float) -> None:
        children[operation].observe(seconds)

    return observe


class WorkerMetrics(Collector):
    """One registry per worker (several workers can share a process in tests)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency = Histogram(
            "millpond_task_operation_seconds",
            "Duration of one batch operation of a task (poll, write, flush, commit)",
            ["connector", "task", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for task in worker.tasks:
            task.observe = _observer(self.latency, task)
        self.fsync = Histogram(
            "millpond_log_fsync_seconds",
            "Duration of one partition flush's fsync in the embedded log",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(self)
        self._snapshot = LogSnapshot()

    def watch_fsync(self) -> None:
        """Time the embedded log's fsyncs from now on (one process, one log: the last worker to ask wins)."""
        observe.fsync_observer = self.fsync.observe

    def unwatch_fsync(self) -> None:
        if observe.fsync_observer == self.fsync.observe:
            observe.fsync_observer = None

    async def handle(self, request: web.Request) -> web.Response:
        self._snapshot = await self.snapshot()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def snapshot(self) -> LogSnapshot:
        backend = self.worker.backend
        snap = LogSnapshot()
        for topic in sorted(await backend.list_topics()):
            try:
                snap.partitions.extend(await backend.describe_topic(topic))
            except Exception as exc:  # a topic deleted meanwhile: leave it out of this scrape
                log.debug("metrics: topic %r not described: %s", topic, exc)
        for task in self.worker.tasks:
            group = getattr(task, "group", None)
            if group and group not in snap.groups:
                try:
                    snap.groups[group] = await backend.describe_group(group)
                except Exception as exc:
                    log.debug("metrics: group %r not described: %s", group, exc)
        return snap

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["connector", "task"]
        counters = {
            "records_in": ("Records a task read (a sink from the log, a source from its system)", "records_in"),
            "records_out": ("Records a task handed on (a source to the log, a sink to its store)", "records_out"),
            "bytes_in": ("Bytes a sink read from the log: its record batches as stored where the sink takes "
                         "batches, else the records' key and value bytes", "bytes_in"),
            "bytes_out": ("Value bytes a source appended to the log", "bytes_out"),
            "restarts": ("Restarts of a task after a failure", "restarts"),
        }
        for name, (doc, attr) in counters.items():
            fam = CounterMetricFamily(f"millpond_task_{name}", doc, labels=labels)
            for t in self.worker.tasks:
                fam.add_metric([t.spec.name, str(t.task)], getattr(t, attr))
            yield fam
        errors = CounterMetricFamily("millpond_task_record_errors", "Records the error policy handled",
                                     labels=[*labels, "policy"])
        dead = CounterMetricFamily("millpond_task_dead_letters", "Records sent to the dead-letter topic",
                                   labels=labels)
        for t in self.worker.tasks:
            counts = t.errors.counts
            errors.add_metric([t.spec.name, str(t.task), "skip"], counts.skipped)
            errors.add_metric([t.spec.name, str(t.task), "dead_letter"], counts.dead_lettered)
            dead.add_metric([t.spec.name, str(t.task)], counts.dead_lettered)
        yield errors
        yield dead
        state = GaugeMetricFamily("millpond_task_state", "1 for the state a task is in (Kafka Connect's names)",
                                  labels=[*labels, "state"])
        for t in self.worker.tasks:
            for s in TaskState:
                state.add_metric([t.spec.name, str(t.task), s.value], 1.0 if t.state is s else 0.0)
        yield state
        jobs = self.worker.jobs
        runs = CounterMetricFamily("millpond_log_maintenance_runs", "Runs of the log's maintenance jobs",
                                   labels=["job"])
        failed = CounterMetricFamily("millpond_log_maintenance_failures", "Maintenance runs that failed",
                                     labels=["job"])
        for job, n in sorted(jobs.runs.items()):
            runs.add_metric([job], n)
            failed.add_metric([job], jobs.failures[job])
        yield runs
        yield failed
        yield CounterMetricFamily("millpond_log_retention_segments_deleted",
                                  "Segments retention deleted", value=jobs.done["retention"])
        yield CounterMetricFamily("millpond_log_compacted_partitions", "Partitions compaction cleaned",
                                  value=jobs.done["compaction"])
        reclaimed = CounterMetricFamily("millpond_log_reclaimed_bytes",
                                        "Bytes the log's maintenance jobs freed (segments deleted, "
                                        "compacted away)", labels=["job"])
        for job, n in sorted(jobs.bytes_reclaimed.items()):
            reclaimed.add_metric([job], n)
        yield reclaimed
        yield GaugeMetricFamily("millpond_worker_disk_full", "1 while sources are paused for a full disk",
                                value=1.0 if self.worker.disk_full is not None else 0.0)

        plabels = ["topic", "partition"]
        gauges = {
            "log_start_offset": "First offset still in the partition",
            "log_end_offset": "Offset the next record appended gets",
            "high_watermark": "Offset up to which records are readable",
            "last_stable_offset": "Offset up to which read_committed consumers read",
            "size_bytes": "Bytes the partition's segments hold",
            "segments": "Segments of the partition",
        }
        for name, doc in gauges.items():
            gauge = GaugeMetricFamily(f"millpond_partition_{name}", doc, labels=plabels)
            for p in self._snapshot.partitions:
                gauge.add_metric([p.topic, str(p.partition)], float(getattr(p, name)))
            yield gauge
        glabels = ["group", "topic", "partition"]
        lag = GaugeMetricFamily("millpond_group_lag", "Records between a group's committed offset and the log end",
                                labels=glabels)
        committed = GaugeMetricFamily("millpond_group_committed_offset", "A group's committed offset",
                                      labels=glabels)
        for group, offsets in sorted(self._snapshot.groups.items()):
            for g in offsets:
                where = [group, g.topic_partition.topic, str(g.topic_partition.partition)]
                lag.add_metric(where, float(g.lag))
                if g.committed is not None:
                    committed.add_metric(where, float(g.committed))
        yield lag
        yield committed
