"""A kit for connector authors: drive a source or a sink the way the runtime does, and check the contract.

A plugin's tests use these instead of copying millpond's own test helpers
(pytest's ``pytester`` is the model). The built-in connectors and
``plugins/millpond-syslog`` pass the same checks::

    from millpond.testing import check_sink, check_source, drive_source

    def test_my_source_keeps_the_contract(tmp_path):
        report = asyncio.run(check_source(lambda: MySource(MyConfig(...), ConnectorContext("t"))))
        assert report.records == 10

What the runtime promises a connector, and so what the checks hold it to:

- A source offset (``SourceBatch.offset``) is its position *after* the
  last record of the batch. Started again from any source offset, it returns
  exactly the records that followed it: none lost, none repeated (a source
  that declares only ``at_least_once`` may repeat, never lose).
- A source offset is JSON: it is stored in the log as JSON and handed back to
  ``Source.start`` after a restart.
- A sink's ``flush(offsets)`` makes everything written before it durable; a
  sink that keeps its own offsets returns them from the next ``start()``, and
  a sink that declares ``exactly_once`` turns a replay into no change.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .connector import ConnectorConfig, Guarantee, Sink, Source, SourceBatch
from .converters import JsonConverter
from .errors import MillpondError
from .records import Record, TopicPartition


class ContractError(MillpondError, AssertionError):
    """A connector broke the contract the runtime relies on (the message says which part)."""


@dataclass(slots=True)
class SourceRun:
    """What one :func:`drive_source` call read: the records and each batch's source offset."""

    records: list[Record] = field(default_factory=list)
    #: the source offset after the last batch (the ``offset`` passed in when nothing came)
    offset: Any = None
    #: (records before the batch's end, the batch's source offset), one per batch that moved the source offset
    offsets: list[tuple[int, Any]] = field(default_factory=list)


def batch_records(batch: SourceBatch) -> list[Record]:
    """A batch's records as values, the columnar part (``encoded``) decoded as the runtime would."""
    if not batch.encoded:
        return list(batch.records)
    loads = JsonConverter().deserialize
    out = list(batch.records)
    for columns in batch.encoded:
        out += [Record(loads(v), loads(k), ts, topic=columns.topic) for k, v, ts in
                zip(columns.keys, columns.values, columns.timestamps)]
    return out


async def drive_source(
    source: Source,
    offset: Any = None,
    *,
    max_records: int | None = None,
    idle_polls: int = 3,
    idle_wait_s: float = 0.05,
    start: bool = True,
    stop: bool = True,
    feed: Callable[[Source], Awaitable[None]] | None = None,
) -> SourceRun:
    """Start ``source`` from ``offset`` and poll it as the runtime does until it is idle.

    Idle means ``idle_polls`` polls in a row returned nothing (with
    ``idle_wait_s`` between them). Every source offset is passed through JSON
    (as the log stores it) and handed to ``Source.commit`` once "durable".
    ``feed`` runs after ``start``: a push source (syslog, HTTP) gets its input there.
    """
    run = SourceRun(offset=offset)
    if start:
        await source.start(offset)
    try:
        if feed is not None:
            await feed(source)
        idle = 0
        while idle < idle_polls and (max_records is None or len(run.records) < max_records):
            batch = await source.poll()
            if batch is None:
                idle += 1
                await asyncio.sleep(idle_wait_s)
                continue
            idle = 0
            run.records += batch_records(batch)
            source_offset = _through_json(batch.offset, type(source).__name__)
            run.offset = source_offset
            run.offsets.append((len(run.records), source_offset))
            await source.commit(source_offset)
    finally:
        if stop:
            await source.stop()
    return run


async def drive_sink(
    sink: Sink,
    records: Sequence[Record],
    *,
    start: bool = True,
    stop: bool = True,
    flush_every: int | None = None,
) -> dict[TopicPartition, int] | None:
    """Write ``records`` (each with topic, partition and offset) and flush as the runtime does.

    Returns what ``start()`` returned: the sink's own offsets, or None when
    the consumer group keeps them. Records below those offsets are skipped,
    as the runtime's seek would skip them.
    """
    resumed: dict[TopicPartition, int] | None = None
    if start:
        own = await sink.start()
        resumed = None if own is None else dict(own)
    try:
        todo = [r for r in records if resumed is None or r.offset is None
                or r.offset >= resumed.get(r.topic_partition, 0)]
        step = flush_every or max(1, len(todo))
        for i in range(0, len(todo), step):
            chunk = list(todo[i : i + step])
            await sink.write(chunk)
            await sink.flush(next_offsets(chunk))
    finally:
        if stop:
            await sink.stop()
    return resumed


def next_offsets(records: Sequence[Record]) -> dict[TopicPartition, int]:
    """The next offset to read per partition after ``records`` (what ``Sink.flush`` receives)."""
    out: dict[TopicPartition, int] = {}
    for r in records:
        if r.offset is None:
            raise ContractError("records handed to a sink need topic, partition and offset")
        tp = r.topic_partition
        out[tp] = max(out.get(tp, 0), r.offset + 1)
    return out


def log_records(values: Sequence[Any], topic: str = "t", partitions: int = 1,
                key: Callable[[int, Any], Any] | None = None) -> list[Record]:
    """Records as a sink receives them from the log: round-robin over partitions, offsets from 0."""
    offsets = [0] * partitions
    out = []
    for i, value in enumerate(values):
        p = i % partitions
        out.append(Record(value, None if key is None else key(i, value), 1_700_000_000_000 + i,
                          topic=topic, partition=p, offset=offsets[p]))
        offsets[p] += 1
    return out


@dataclass(slots=True)
class SourceReport:
    records: int
    offsets: int
    resumed_from: int


async def check_source(
    make: Callable[[], Source],
    *,
    min_records: int = 1,
    resume_points: int = 3,
    idle_polls: int = 3,
    same: Callable[[Record, Record], bool] | None = None,
    feed: Callable[[Source], Awaitable[None]] | None = None,
    order_within: Callable[[Record], Hashable] | None = None,
) -> SourceReport:
    """Check that a source keeps the source-offset contract.

    ``make`` builds a fresh source over the same, unchanging input. The check
    reads everything from the beginning, then starts new sources from up to
    ``resume_points`` source offsets (first, middle, last) and compares what they
    return with what followed that source offset in the first read. Records are
    compared by key and value unless ``same`` says otherwise, in one total
    order, or, with ``order_within``, in order within each group it names (a
    file source orders lines per file, not across files).

    A source that declares ``at_most_once`` cannot replay: ``feed`` gives it
    its input, and only the declarations, the source offsets and a restart from
    the last source offset are checked.
    """
    first = make()
    _check_declarations(type(first))
    run = await drive_source(first, None, idle_polls=idle_polls, feed=feed)
    name = type(first).__name__
    if len(run.records) < min_records:
        raise ContractError(f"{name}: read {len(run.records)} records from the beginning, expected at least {min_records}")
    if not run.offsets:
        raise ContractError(f"{name}: returned records but never a source offset")
    points = run.offsets
    if first.guarantee == Guarantee.at_most_once:
        await drive_source(make(), points[-1][1], idle_polls=1)
        return SourceReport(len(run.records), len(points), 0)
    equal = same or (lambda a, b: (a.key, a.value) == (b.key, b.value))
    picked = sorted({0, len(points) // 2, len(points) - 1})[:resume_points]
    for i in picked:
        done, source_offset = points[i]
        again = await drive_source(make(), source_offset, idle_polls=idle_polls)
        want = run.records[done:]
        got = again.records
        if first.guarantee < Guarantee.exactly_once:
            got = got[len(got) - len(want):] if len(got) >= len(want) else got
        if order_within is not None:
            got, want = _grouped(got, order_within), _grouped(want, order_within)
        if len(got) != len(want) or not all(equal(a, b) for a, b in zip(got, want)):
            raise ContractError(
                f"{name}: started from source offset #{i} ({_short(source_offset)}) it returned {len(again.records)} "
                f"records; {len(want)} followed that source offset in the first read"
                + _first_difference(got, want, equal)
            )
    return SourceReport(len(run.records), len(points), len(picked))


async def check_sink(
    make: Callable[[], Sink],
    records: Sequence[Record],
    read_back: Callable[[], Awaitable[list[Any]]],
    *,
    expected: Callable[[Sequence[Record]], list[Any]] | None = None,
) -> None:
    """Check that a sink makes flushed writes durable and resumes or deduplicates on replay.

    ``read_back`` reads the external system (what a user would see) and
    returns comparable items; ``expected(records)`` says what it should
    return after ``records`` were written (default: the records' values, in
    order). The check writes the first half and flushes, then, with a new sink
    (as after a restart), replays everything from the start the way the
    runtime would (from the sink's own offsets when it keeps them, else all of
    it again), and compares.
    """
    want = expected or (lambda rs: [r.value for r in rs])
    half = len(records) // 2
    first = make()
    _check_declarations(type(first))
    name = type(first).__name__
    await drive_sink(first, records[:half])
    seen = await read_back()
    if seen != want(records[:half]):
        raise ContractError(f"{name}: after flush the external system holds {_short(seen)}, expected {_short(want(records[:half]))}")
    second = make()
    resumed = await drive_sink(second, records)
    if resumed is not None and resumed != next_offsets(records[:half]):
        raise ContractError(f"{name}: start() returned {resumed}, expected the offsets flushed before: "
                            f"{next_offsets(records[:half])}")
    if resumed is None and type(second).guarantee < Guarantee.exactly_once:
        return  # an at-least-once sink without its own offsets may hold the replayed half twice
    seen = await read_back()
    if seen != want(records):
        raise ContractError(f"{name}: after a replay from the start the external system holds {_short(seen)}, "
                            f"expected {_short(want(records))} (nothing doubled)")


def _check_declarations(cls: type[Source] | type[Sink]) -> None:
    if not isinstance(cls.guarantee, Guarantee):
        raise ContractError(f"{cls.__name__}.guarantee must be a millpond.connector.Guarantee")
    if not (isinstance(cls.config_model, type) and issubclass(cls.config_model, ConnectorConfig)):
        raise ContractError(f"{cls.__name__}.config_model must subclass millpond.connector.ConnectorConfig")
    if cls.guarantee < Guarantee.exactly_once and not cls.guarantee_reason:
        raise ContractError(f"{cls.__name__} gives less than exactly_once: say why in guarantee_reason")


def _grouped(records: Sequence[Record], group: Callable[[Record], Hashable]) -> list[Record]:
    """Records regrouped (stable within each group), groups in the order of their first record by repr."""
    groups: dict[Hashable, list[Record]] = {}
    for r in records:
        groups.setdefault(group(r), []).append(r)
    return [r for g in sorted(groups, key=repr) for r in groups[g]]


def _through_json(offset: Any, name: str) -> Any:
    try:
        return json.loads(json.dumps(offset))
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{name}: source offset {offset!r} is not JSON ({exc})") from None


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_difference(got: Sequence[Record], want: Sequence[Record],
                      equal: Callable[[Record, Record], bool]) -> str:
    for i, (a, b) in enumerate(zip(got, want)):
        if not equal(a, b):
            return f"; first difference at record {i}: {_short((a.key, a.value))} != {_short((b.key, b.value))}"
    return ""

