"""The timing harness every benchmark uses: arguments, timing, rounds, the figure lines, the JSON line.

A benchmark here measures millpond against a baseline run on the same machine
in the same process (this machine is shared, so absolute figures swing; a
ratio of two figures taken side by side swings less). What they share:

- :func:`parser`: ``--quick`` (a run of about a minute) and ``--rounds N``;
- :func:`timed` / :func:`timed_async`: wall seconds of one call;
- :func:`rotate`: the order of the measured paths changes every round, so
  none always runs first (cold caches) or last (a warm server);
- :func:`median`: per figure, the median over rounds;
- :func:`rate_line` / :func:`ratio_line`: the human lines, one format;
- :class:`MachineBusy` / :class:`TreeCpu`: the share of the cores the whole
  machine, or only the benchmark's own process trees, kept busy;
- :func:`run_pipeline`: a pipeline in process on its own log, timed from the
  worker's launch (start-up included) until a condition holds and until it
  has stopped (a source's last checkpoint and slot advance included), with
  the process's CPU seconds beside the wall ones, and optionally something
  running beside the worker (an API server and its clients);
- :func:`emit`: the last line of output, JSON, which scripts read.

Only public millpond API is used: the worker's tasks and their counters, the
backend's committed offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from millpond.backends import open_backend
from millpond.backends.base import LogBackend
from millpond.config import PipelineConfig
from millpond.runtime import RuntimeOptions
from millpond.runtime.launch import create_topics, preflight
from millpond.runtime.sink_task import SinkTask
from millpond.runtime.source_task import SourceTask
from millpond.runtime.worker import Worker

T = TypeVar("T")


def parser(doc: str, quick: str, rounds: int = 1) -> argparse.ArgumentParser:
    """An argument parser with the shared ``--quick`` and ``--rounds`` (``quick`` says what it changes)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"repeat and report the median of each figure (default {rounds}; the machine is shared)")
    return p


def timed(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    """(wall seconds, result) of ``fn(*args)``."""
    began = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - began, result


async def timed_async(awaitable: Awaitable[T]) -> tuple[float, T]:
    """(wall seconds, result) of awaiting ``awaitable``."""
    began = time.perf_counter()
    result = await awaitable
    return time.perf_counter() - began, result


def rotate(items: Sequence[T], round_no: int) -> list[T]:
    """``items`` rotated by the round number: each goes first in turn."""
    if not items:
        return []
    k = round_no % len(items)
    return [*items[k:], *items[:k]]


def median(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key, the median over the rounds (every round has the same keys)."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def rate_line(label: str, count: int, seconds: float, unit: str = "rows", note: str = "") -> str:
    """``label   1.234 s     810,373 rows/s  note`` — every figure line in one format."""
    line = f"{label + ':':<30}{seconds:8.3f} s {rate(count, seconds):14,.0f} {unit}/s"
    return f"{line}  {note}" if note else line


def ratio_line(label: str, numerator: float, denominator: float, target: float | None = None) -> str:
    """``ratio label: 0.83 (target >= 0.5: met)``."""
    ratio = numerator / denominator if denominator else float("inf")
    line = f"ratio {label}: {ratio:.3f}"
    if target is not None:
        line += f" (target >= {target}: {'met' if ratio >= target else 'NOT met'})"
    return line


class MachineBusy:
    """How busy the whole machine's CPUs were since this object was made, from ``/proc/stat``.

    A scale-out figure means little without it: when one worker already keeps
    the machine busy, more workers on the same cores cannot go faster, and this
    says where that ceiling is (busy fraction 0.6 of all cores: at most 1/0.6x).
    """

    def __init__(self) -> None:
        self._start = self._sample()

    @staticmethod
    def _sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]), idle

    def fraction(self) -> float:
        """Busy share of all cores since the start, 0..1."""
        total, idle = self._sample()
        spent = total - self._start[0]
        return 1.0 - (idle - self._start[1]) / spent if spent else 0.0


class TreeCpu:
    """CPU seconds spent by some processes and all their descendants since this object was made.

    On a machine shared with other work, :class:`MachineBusy` counts everyone's
    load; this counts only the benchmark's own servers and workers (from
    ``/proc/PID/stat``), so "one worker keeps N% of the cores busy" stays
    true when a neighbour is busy too. A process that exits between the two
    samples takes its CPU time with it (a short undercount, never an overcount).
    """

    def __init__(self, roots: Callable[[], Iterable[int]]) -> None:
        self._roots = roots
        self._start = self._sample()

    @staticmethod
    def _stat() -> dict[int, tuple[int, int]]:
        """pid -> (parent pid, utime + stime in clock ticks) of every process."""
        found: dict[int, tuple[int, int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            found[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        return found

    def _sample(self) -> dict[int, int]:
        stat = self._stat()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in stat.items():
            children.setdefault(ppid, []).append(pid)
        ticks: dict[int, int] = {}
        todo = [pid for pid in self._roots() if pid in stat]
        while todo:
            pid = todo.pop()
            if pid not in ticks:
                ticks[pid] = stat[pid][1]
                todo.extend(children.get(pid, []))
        return ticks

    def seconds(self) -> float:
        """CPU seconds of the trees since the start (processes born since count whole)."""
        end = self._sample()
        spent = sum(t - self._start.get(pid, 0) for pid, t in end.items())
        return spent / os.sysconf("SC_CLK_TCK")


def emit(figures: Mapping[str, Any]) -> None:
    """The last line of a benchmark's output: its figures as JSON."""
    print(json.dumps(dict(figures)), flush=True)


@dataclass(frozen=True, slots=True)
class PipelineTimes:
    """Seconds from the worker's launch: until every task ran, until ``done``, until it had stopped,
    and until each named milestone first held; and the process's CPU seconds from launch until ``done``
    (the steadier figure on a shared machine: other processes lengthen wall time, not this one's CPU)."""

    startup_s: float
    done_s: float
    stopped_s: float
    milestones: dict[str, float]
    cpu_s: float = 0.0


Done = Callable[[Worker, LogBackend], Awaitable[bool]]
#: something that runs beside the worker: entered before its launch, left once ``done`` holds
Beside = Callable[[Worker], contextlib.AbstractAsyncContextManager[object]]


async def run_pipeline(
    config: PipelineConfig, done: Done, poll_s: float = 0.001, milestones: Mapping[str, Done] | None = None,
    beside: Beside | None = None,
) -> PipelineTimes:
    """Run ``config`` in process on its own backend until ``done(worker, backend)``, then stop it.

    ``milestones`` are conditions checked on the way (e.g. "the source has
    emitted everything" while the sink still works); each is timed when it
    first holds, from the same launch. ``beside(worker)`` runs beside the
    worker from just before its launch until ``done`` holds, as the API
    benchmark's server and scraper do (its exit counts in ``stopped_s`` only).
    """
    pending = dict(milestones or {})
    reached: dict[str, float] = {}
    preflight(config)
    backend = open_backend(config.log)
    await backend.open()
    try:
        await create_topics(config, backend)
        worker = Worker(config, backend, RuntimeOptions(install_signal_handlers=False))
        async with beside(worker) if beside is not None else contextlib.nullcontext():
            launched = time.perf_counter()
            cpu = time.process_time()
            run = asyncio.create_task(worker.run())
            started: float | None = None
            while True:
                await asyncio.sleep(poll_s)
                if run.done():
                    await run
                    raise RuntimeError(f"the pipeline {config.name!r} stopped early")
                if started is None and worker.tasks and all(t.running for t in worker.tasks):
                    started = time.perf_counter()
                if started is None:
                    continue
                for name, check in list(pending.items()):
                    if await check(worker, backend):
                        reached[name] = time.perf_counter() - launched
                        del pending[name]
                if await done(worker, backend):
                    break
            finished = time.perf_counter()
            cpu = time.process_time() - cpu
        worker.stop()
        await run
        stopped = time.perf_counter()
        for name in pending:  # held by the time the pipeline was done
            reached[name] = finished - launched
        return PipelineTimes(started - launched, finished - launched, stopped - launched, reached, cpu)
    finally:
        await backend.close()


def source_task(worker: Worker) -> SourceTask:
    return next(t for t in worker.tasks if isinstance(t, SourceTask))


def sink_task(worker: Worker) -> SinkTask:
    return next(t for t in worker.tasks if isinstance(t, SinkTask))


def source_emitted(n: int) -> Done:
    """Done when the pipeline's source has committed ``n`` records to the log."""
    async def check(worker: Worker, backend: LogBackend) -> bool:
        return source_task(worker).records_out >= n
    return check


def sink_committed(n: int) -> Done:
    """Done when the pipeline's sink has taken ``n`` records and its group's committed offsets cover them
    (the group's offset follows the sink's own commit, so the rows are in the target)."""
    async def check(worker: Worker, backend: LogBackend) -> bool:
        task = sink_task(worker)
        if task.records_in < n:
            return False
        return sum((await backend.committed(task.group)).values()) >= n
    return check
