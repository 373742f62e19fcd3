"""The embedded log as a LogBackend: one process, files on local disk, no server.

The writing backend owns the store's lock and runs the group and transaction
coordinators. A read-only backend (``readonly=True``) opens the same directory
while a worker writes, for ``consume``, ``describe`` and friends.

Disk work is synchronous and short (whole batches, no fsync per batch), so it
runs on the event loop; consumers wait for appends on an asyncio event. The
exception is a compaction pass, which runs in a thread (see run_compaction).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any, TypeVar

from ...audit.checkpoints import Checkpointer, Signer
from ...audit.embedded import Chains, last_checkpoint
from ...errors import LogLockedError, MillpondError, OffsetOutOfRangeError, TransactionError, UnknownTopicError
from ...log.partition import FetchResult, Partition
from ...log.store import LogStore
from ...records import JsonRecords, PartitionBatches, Record, TopicPartition
from ..base import (
    GroupOffset,
    IsolationLevel,
    Lifecycle,
    LogMaintenance,
    Membership,
    PartitionInfo,
    TopicSpec,
    static_share,
)
from .groups import GroupCoordinator
from .storage import partition_writes, storage_errors
from .transactions import TransactionCoordinator, TransactionState

_T = TypeVar("_T")
log = logging.getLogger(__name__)

MAX_FETCH_BYTES = 4 << 20
BATCH_RECORDS = 10_000


class EmbeddedBackend(Lifecycle):
    @property
    def maintenance(self) -> LogMaintenance:
        return self

    def __init__(self, directory: str | Path, *, readonly: bool = False, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.readonly = readonly
        self.fsync = fsync
        self._store: LogStore | None = None
        self._groups: GroupCoordinator | None = None
        self._txns: TransactionCoordinator | None = None
        self._appended = asyncio.Event()
        self.bytes_reclaimed: dict[str, int] = {"retention": 0, "compaction": 0}
        #: retention and compaction never overlap: a pass in its thread must not see its segments deleted
        self._maintenance = asyncio.Lock()
        #: the audit hash chain of chained topics, and its signed checkpoints once enable_audit() was called
        self.chains = Chains(anchor=lambda partition: last_checkpoint(self.store, partition))
        self.checkpointer: Checkpointer | None = None

    # -- lifecycle --

    async def open(self) -> None:
        # Opening a writer writes too: recovery cuts torn tails and completes transactions.
        with nullcontext() if self.readonly else storage_errors(self.directory):
            store = LogStore(self.directory, writable=not self.readonly)
            try:
                self._groups = GroupCoordinator(store)
                if not self.readonly:
                    self._txns = TransactionCoordinator(store, self._groups, fsync=self.fsync)
                    self._txns.append = self.chains.append
            except BaseException:
                try:
                    store.close()  # release the lock: opening again must not find it held by us
                except Exception:  # noqa: BLE001 - the first error says what went wrong
                    log.debug("closing %s after a failed open failed too", self.directory, exc_info=True)
                raise
        self._store = store

    def enable_audit(self, signer: Signer, *, every_records: int, every_seconds: float) -> None:
        """Sign checkpoints of chained partitions (see millpond.audit.checkpoints); after open()."""
        with storage_errors(self.directory):
            self.checkpointer = Checkpointer(self.store, signer, every_records=every_records,
                                             every_seconds=every_seconds, fsync=self.fsync)
        self.chains.listener = self.checkpointer.on_block
        self.checkpointer.start()

    async def close(self) -> None:
        if self._store is not None:
            store = self._store
            try:
                if self.checkpointer is not None:  # the last checkpoint of each partition, at shutdown
                    with storage_errors(self.directory):
                        self.checkpointer.close()
            finally:
                self._store = None  # closed even if a flush fails: the lock is let go
                with storage_errors(self.directory):
                    store.close()

    @property
    def store(self) -> LogStore:
        if self._store is None:
            raise RuntimeError("backend is not open")
        return self._store

    @property
    def groups(self) -> GroupCoordinator:
        assert self._groups is not None, "backend is not open"
        return self._groups

    def _writer(self, what: str) -> TransactionCoordinator:
        if self._txns is None:
            raise LogLockedError(
                f"cannot {what}: the log at {self.directory} is open read-only "
                "(a running worker holds it; stop the worker or do this through its pipeline)"
            )
        return self._txns

    def notify(self) -> None:
        """Wake consumers waiting for new records."""
        event, self._appended = self._appended, asyncio.Event()
        event.set()

    # -- topics --

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = False) -> None:
        self._writer("create a topic")
        if exist_ok and spec.name in self.store.topics:
            return
        with storage_errors(self.store.topics_dir / spec.name):
            self.store.create_topic(spec.name, spec.partitions, dict(spec.config))

    async def alter_topic(self, spec: TopicSpec) -> dict[str, tuple[object, object]]:
        """Bring an existing topic's settings in line with ``spec``; returns what changed."""
        self._writer("change a topic")
        with storage_errors(self.store.topics_dir / spec.name):
            return self.store.alter_topic(spec.name, spec.partitions, dict(spec.config))

    async def delete_topic(self, name: str) -> None:
        self._writer("delete a topic")
        with storage_errors(self.store.topics_dir / name):
            self.store.delete_topic(name)

    async def list_topics(self) -> list[str]:
        if self.readonly:
            return sorted(p.name for p in self.store.topics_dir.iterdir() if (p / "topic.json").exists())
        return sorted(self.store.topics)

    async def describe_topic(self, name: str) -> list[PartitionInfo]:
        infos = []
        for p in self.store.topic(name).partitions:
            p.refresh()
            infos.append(
                PartitionInfo(
                    name,
                    p.partition,
                    p.log_start_offset,
                    p.log_end_offset,
                    p.high_watermark,
                    p.last_stable_offset,
                    p.size_bytes,
                    len(p.segments),
                    tuple(p.problems + p.check_tails()),
                )
            )
        return infos

    async def topic_settings(self, name: str) -> dict[str, Any]:
        return self.store.topic(name).settings.as_kafka()

    async def partitions_for(self, topic: str) -> int:
        return len(self.store.topic(topic).partitions)

    def partition(self, tp: TopicPartition) -> Partition:
        return self.store.partition(tp.topic, tp.partition)

    # -- producing and consuming --

    def producer(self, transactional_id: str | None = None) -> EmbeddedProducer:
        return EmbeddedProducer(self, transactional_id)

    def consumer(
        self,
        topics: Sequence[str],
        group: str | None = None,
        isolation: IsolationLevel = IsolationLevel.read_committed,
        reset: str = "earliest",
        membership: Membership | None = None,
    ) -> EmbeddedConsumer:
        return EmbeddedConsumer(self, topics, group, isolation, reset, membership)

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        return self.partition(tp).offset_for_time(timestamp_ms)

    # -- consumer groups --

    async def list_groups(self) -> list[str]:
        if self.readonly:
            self.groups.follow()
        return self.groups.groups()

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        if self.readonly:
            self.groups.follow()
        return self.groups.committed(group)

    async def describe_group(self, group: str) -> list[GroupOffset]:
        committed = await self.committed(group)
        rows = []
        for tp in sorted(committed):
            try:
                partition = self.partition(tp)
            except UnknownTopicError:
                continue
            partition.refresh()
            rows.append(GroupOffset(tp, committed[tp], partition.log_end_offset))
        return rows

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self._writer("reset offsets")
        self.groups.commit(group, offsets)

    # -- scheduled maintenance --

    async def run_retention(self, now_ms: int | None = None) -> int:
        """Apply retention to every partition; returns the number of segments deleted."""
        from ...log.retention import enforce_retention

        async with self._maintenance:
            results = await self._each_partition(
                "apply retention", lambda p: p.settings.delete, lambda p, now: enforce_retention(p, now), now_ms
            )
        self.bytes_reclaimed["retention"] += sum(r.bytes_deleted for r in results)
        return sum(r.segments_deleted for r in results)

    async def run_compaction(self, now_ms: int | None = None) -> int:
        """Compact every partition of compacted topics; returns the number cleaned.

        A pass reads and rewrites a whole partition (23.6 s for 10M updates over
        1M keys), so it runs in a worker thread, one partition at a time; the
        steps that touch what appends change (the flush before cleaning, each
        swap of cleaned segments) run back on the event loop, see
        :class:`_OffLoopPartition`.
        """
        from ...log.cleaner import compact

        self._writer("compact")
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        loop = asyncio.get_running_loop()
        cleaned = 0
        async with self._maintenance:
            for partition in self.store.partitions():
                if not partition.settings.compact:
                    continue
                view = _OffLoopPartition(partition, loop)

                def clean(view: _OffLoopPartition = view, partition: Partition = partition) -> Any:
                    with partition_writes(partition):
                        return compact(view, now)  # type: ignore[arg-type]  # the view stands in for it

                work = asyncio.ensure_future(asyncio.to_thread(clean))
                try:
                    result = await asyncio.shield(work)
                except asyncio.CancelledError:
                    await asyncio.wait({work})  # its swaps need this loop: let the pass end before the store closes
                    raise
                if result:
                    cleaned += 1
                    self.bytes_reclaimed["compaction"] += result.bytes_before - result.bytes_after
        return cleaned

    async def _each_partition(
        self,
        what: str,
        wanted: Callable[[Partition], bool],
        job: Callable[[Partition, int], Any],
        now_ms: int | None,
    ) -> list[Any]:
        # On the event loop, one partition at a time, letting other tasks run in
        # between: the jobs read a partition's transaction state, which appends change.
        self._writer(what)
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        results = []
        for partition in self.store.partitions():
            if wanted(partition):
                with partition_writes(partition):
                    results.append(job(partition, now))
                await asyncio.sleep(0)
        return results

    async def flush(self) -> None:
        with storage_errors(self.directory):
            self.store.flush()


class _OffLoopPartition:
    """A partition as a compaction pass in a worker thread sees it.

    Appends, rolls and reads run on the event loop's thread; the pass reads
    only sealed segments, whose bytes never change, but three things it uses
    change with appends. ``last_stable_offset`` is taken on the loop before
    the pass starts (a smaller one only cleans less). ``flush`` and
    ``replace_segments`` are run on the loop, the thread waiting for them, so
    the segment list and its offsets are never changed under a reader or an
    append. Everything else is the partition's.
    """

    def __init__(self, partition: Partition, loop: asyncio.AbstractEventLoop) -> None:
        self._partition = partition
        self._loop = loop
        self.last_stable_offset = partition.last_stable_offset

    def __getattr__(self, name: str) -> Any:
        return getattr(self._partition, name)

    def _on_loop(self, fn: Callable[[], Any]) -> Any:
        async def call() -> Any:
            return fn()

        future = asyncio.run_coroutine_threadsafe(call(), self._loop)
        while True:
            try:
                return future.result(timeout=1.0)
            except TimeoutError:
                if self._loop.is_closed() or not self._loop.is_running():
                    future.cancel()
                    raise MillpondError(
                        f"compaction of {self._partition.name}: the event loop stopped before the cleaned "
                        "segments were swapped in (they are dropped when the log is opened next)"
                    ) from None

    def flush(self, fsync: bool = True) -> None:
        self._on_loop(lambda: self._partition.flush(fsync))

    def replace_segments(self, old: Sequence[Any]) -> Any:
        return self._on_loop(lambda: self._partition.replace_segments(old))


class EmbeddedProducer:
    """Buffers records per partition; ``flush`` or ``commit`` appends them as whole batches."""

    def __init__(self, backend: EmbeddedBackend, transactional_id: str | None) -> None:
        self.backend = backend
        self.transactional_id = transactional_id
        self._pending: dict[TopicPartition, list[Record] | JsonRecords] = {}
        self._offsets: dict[str, dict[TopicPartition, int]] = {}
        self._state: TransactionState | None = None
        self._epoch = -1
        self._in_transaction = False

    def _partition_of(self, topic: str, record: Record, partition: int | None) -> int:
        if partition is not None:
            return partition
        if record.partition is not None:
            return record.partition
        return self.backend.store.topic(topic).partition_for(record.key)

    async def send(self, topic: str, record: Record, partition: int | None = None) -> None:
        self._bucket(TopicPartition(topic, self._partition_of(topic, record, partition))).append(record)

    async def send_batch(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        tp = TopicPartition(topic, partition)
        if isinstance(records, JsonRecords):  # kept as columns: encoded in one call at commit
            pending = self._pending.get(tp)
            if pending is None:
                self._pending[tp] = pending = type(records)(topic)
            if type(pending) is type(records):
                pending.extend(records)
                return
        self._bucket(tp).extend(records)

    def _bucket(self, tp: TopicPartition) -> list[Record]:
        pending = self._pending.get(tp)
        if pending is None:
            self._pending[tp] = pending = []
        elif isinstance(pending, JsonRecords):
            self._pending[tp] = pending = list(pending)
        return pending

    async def flush(self) -> None:
        if self._in_transaction:
            raise TransactionError("flush inside a transaction: call commit() instead")
        self.backend._writer("produce")
        appended = False
        try:
            # Records leave the buffer only once appended: after a failed write
            # (disk full) the next flush sends exactly what was not written.
            for tp in list(self._pending):
                rows = self._pending[tp]
                partition = self.backend.partition(tp)
                done = 0
                try:
                    with partition_writes(partition):
                        while done < len(rows):
                            self.backend.chains.append(partition, rows[done : done + BATCH_RECORDS])
                            done += BATCH_RECORDS
                            appended = True
                finally:
                    if done >= len(rows):
                        del self._pending[tp]
                    elif done:
                        self._pending[tp] = rows[done:]
        finally:
            if appended:
                self.backend.notify()

    async def init(self) -> None:
        """Register the producer; again when its last transaction did not complete, which completes it."""
        if self.transactional_id is None:
            return
        if self._state is not None and (self._state.epoch != self._epoch or self._state.complete):
            return  # ready, or fenced by a newer producer (commit() says so)
        self._state = self.backend._writer("begin a transaction").init_producer(self.transactional_id)
        self._epoch = self._state.epoch

    async def begin(self) -> None:
        if self.transactional_id is None:
            raise TransactionError("begin() needs a producer created with a transactional id")
        if self._in_transaction:
            raise TransactionError(f"transaction of {self.transactional_id!r} is already open")
        await self.init()
        self._in_transaction = True
        self._pending = {}
        self._offsets = {}

    async def send_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._in_transaction:
            raise TransactionError("send_offsets() outside a transaction")
        self._offsets.setdefault(group, {}).update(offsets)

    async def commit(self) -> None:
        if not self._in_transaction or self._state is None:
            raise TransactionError("commit() without begin()")
        pending, offsets = self._pending, self._offsets
        self._pending, self._offsets = {}, {}
        self._in_transaction = False
        try:
            # A transaction this leaves incomplete is completed by the next begin() (see init()).
            self.backend._writer("commit").commit(self._state, self._epoch, pending, offsets)
        finally:
            self.backend.notify()  # markers written either way move the last stable offset

    async def abort(self) -> None:
        # Nothing reached the log yet: records are appended only at commit.
        self._pending, self._offsets = {}, {}
        self._in_transaction = False

    async def close(self) -> None:
        if self._in_transaction:
            await self.abort()
        elif self._pending:
            await self.flush()


class EmbeddedConsumer:
    """Owns every partition of its topics, or with a membership its fixed share of them
    (the members of a group all live in this one process, so no coordinator is needed)."""

    rebalances = False

    def __init__(
        self,
        backend: EmbeddedBackend,
        topics: Sequence[str],
        group: str | None,
        isolation: IsolationLevel,
        reset: str,
        membership: Membership | None = None,
    ) -> None:
        self.backend = backend
        self.group = group
        self.read_committed = isolation == IsolationLevel.read_committed
        self.reset = reset
        self._positions: dict[TopicPartition, int] = {}
        self._assignment = [
            TopicPartition(topic, p) for topic in topics for p in range(len(backend.store.topic(topic).partitions))
        ]
        if membership is not None:
            self._assignment = static_share(self._assignment, membership.member, membership.members)
        self._next = 0  # round-robin start, so no partition starves

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self._positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        if tp not in self._positions:
            committed = self.backend.groups.committed(self.group) if self.group else {}
            if tp in committed:
                self._positions[tp] = committed[tp]
            else:
                self._positions[tp] = self._reset_offset(self.backend.partition(tp))
        return self._positions[tp]

    def _reset_offset(self, partition: Partition) -> int:
        return partition.log_end_offset if self.reset == "latest" else partition.log_start_offset

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        return await self._wait_for(self._fetch, max_records, timeout)

    async def poll_batches(self, max_records: int = 10_000, timeout: float = 1.0) -> list[PartitionBatches]:
        return await self._wait_for(self._fetch_batches, max_records, timeout)

    async def _wait_for(self, fetch: Callable[[int], Awaitable[list[_T]]], max_records: int, timeout: float) -> list[_T]:
        """``fetch`` until it returns something or ``timeout`` passes, woken by appends (a read-only
        backend, which is not told of them, looks again every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            waiter = self.backend._appended
            found = await fetch(max_records)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            try:
                wait = min(remaining, 0.2) if self.backend.readonly else remaining
                await asyncio.wait_for(waiter.wait(), wait)
            except asyncio.TimeoutError:
                pass

    async def _fetch_batches(self, max_records: int) -> list[PartitionBatches]:
        """``_fetch`` without decoding: the fetched batches as they are, per partition."""
        out: list[PartitionBatches] = []
        records = 0
        async for tp, position, result in self._reads(lambda: records >= max_records):
            if result.batches:
                out.append(PartitionBatches(tp, [b.data for b in result.batches], position))
                records += sum(b.header.last_offset_delta + 1 for b in result.batches)
        return out

    async def _fetch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        append = out.append
        async for (topic, number), position, result in self._reads(lambda: len(out) >= max_records):
            for batch in result.batches:
                for r in batch.records(position):
                    append(Record(r.value, r.key, r.timestamp, r.headers, topic, number, r.offset))
        return out

    async def _reads(self, full: Callable[[], bool]) -> AsyncIterator[tuple[TopicPartition, int, FetchResult]]:
        """One read per assigned partition, round-robin from where the last fetch stopped, until
        ``full()`` says the caller has enough (checked after it took each read); moves positions on."""
        n = len(self._assignment)
        for i in range(n):
            tp = self._assignment[(self._next + i) % n]
            partition = self.backend.partition(tp)
            position = await self.position(tp)
            try:
                result = partition.read(position, MAX_FETCH_BYTES, read_committed=self.read_committed)
            except OffsetOutOfRangeError:
                reset_to = self._reset_offset(partition)
                log.warning("%s: offset %d is out of range; resetting to %d", tp, position, reset_to)
                self._positions[tp] = reset_to
                continue
            yield tp, position, result
            self._positions[tp] = result.next_offset
            if full():
                self._next = (self._next + i + 1) % n
                return

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.group is None:
            raise TransactionError("commit() needs a consumer with a group")
        self.backend._writer("commit offsets").groups.commit(self.group, offsets)

    async def close(self) -> None:
        self._positions.clear()
