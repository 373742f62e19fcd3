"""The log store: one directory holding every topic, owned by one writing process.

Layout::

    <dir>/.lock                    writer lock (flock) with the holder's PID
    <dir>/.clean_shutdown          present only after a clean close; JSON naming the partitions
                                   with a transaction open at the close (opened at once, the
                                   others at their first use: see Partition)
    <dir>/topics/<topic>/topic.json
    <dir>/topics/<topic>/<partition>/<segments, checkpoint, aborted index>

Any number of read-only stores may open the same directory while a writer
runs; they see what the writer has appended (see ``Partition.refresh``).

A writer that finds the lock held waits a moment (``lock_timeout``) before it
refuses, so a worker starting while a short CLI write holds the log starts
once that write is done.
"""

from __future__ import annotations

import fcntl
import logging
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import orjson

from ..errors import ConfigError, LogLockedError, MillpondError, TopicExistsError, UnknownTopicError
from ..progress import Progress
from . import fsio
from .partition import Partition
from .settings import TopicSettings, validate_topic_name
from .topic import TOPIC_FILE, Topic

CLEAN_SHUTDOWN = ".clean_shutdown"
LOCK = ".lock"
LOCK_TIMEOUT = 5.0

log = logging.getLogger(__name__)


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files to its hard limit, where it may.

    Every segment holds a file descriptor while its store is open, so a log of
    a few thousand partitions or segments passes the common soft limit of 1,024
    (``OSError: Too many open files``) long before the hard limit, which the
    soft one may be raised to without privileges (as the Go runtime does at
    start). A limit that cannot be raised is left as it is: opening then fails
    as before, with the file it could not open.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return
        wanted = max(soft, 1 << 20) if hard == resource.RLIM_INFINITY else hard
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError) as exc:
        log.debug("could not raise the limit on open files: %s", exc)


def _open_at_once(marker: bytes) -> dict[str, set[int]] | None:
    """From the clean-shutdown marker: per topic, the partitions a clean open opens at once (those
    with a transaction open at the close, which the transaction coordinator aborts at its start);
    the others wait for their first use. None, to open all at once, for a marker that does not
    say (written by an older millpond, or cut short: it is written without an fsync, as only its
    existence is a claim)."""
    try:
        said = orjson.loads(marker)
    except ValueError:
        return None
    ongoing = said.get("ongoing") if isinstance(said, dict) else None
    if not isinstance(ongoing, dict) or not all(
        isinstance(numbers, list) and all(type(n) is int for n in numbers) for numbers in ongoing.values()
    ):
        return None
    return {str(topic): set(numbers) for topic, numbers in ongoing.items()}


class LogStore:
    def __init__(self, directory: str | Path, *, writable: bool = True, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.directory = Path(directory)
        self.writable = writable
        self.topics_dir = self.directory / "topics"
        self._lock_fd = -1
        raise_open_files_limit()
        if self.directory.exists() and not self.directory.is_dir():
            raise MillpondError(f"the log directory {self.directory} is a file, not a directory")
        try:
            if writable:
                fsio.mkdir(self.topics_dir, parents=True, exist_ok=True)
                self._lock(lock_timeout)
                marker = self.directory / CLEAN_SHUTDOWN
                try:
                    at_close: bytes | None = marker.read_bytes()
                except FileNotFoundError:
                    at_close = None
                self.clean_shutdown = at_close is not None or not any(self.topics_dir.iterdir())
                open_now = _open_at_once(at_close) if at_close is not None else None
                if at_close is not None:
                    fsio.unlink(marker)
                    # Gone for good before anything is written: a marker back after a power cut would
                    # make the next open skip recovery and serve a torn tail.
                    fsio.fsync_dir(self.directory)
            else:
                if not self.topics_dir.is_dir():
                    raise UnknownTopicError(f"no millpond log at {self.directory}")
                self.clean_shutdown = True
                open_now = None
            names = sorted(self.topics_dir.iterdir()) if self.topics_dir.is_dir() else []
        except (NotADirectoryError, FileExistsError, PermissionError) as exc:
            self._unlock()
            raise MillpondError(f"cannot open the log directory {self.directory}: {exc.strerror} "
                                f"({exc.filename})") from None
        self.topics: dict[str, Topic] = {}
        try:
            for path in names:
                if (path / TOPIC_FILE).exists():
                    eager = None if open_now is None else open_now.get(path.name, ())
                    self.topics[path.name] = Topic(path, writable=writable, clean_shutdown=self.clean_shutdown,
                                                   eager=eager)
        except BaseException:
            self._unlock()  # recovery failed (disk full?): opening again, even in this process, must not be refused
            raise

    def _lock(self, timeout: float) -> None:
        path = self.directory / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._lock_holder(fd, path)
                    os.close(fd)
                    raise LogLockedError(
                        f"the log at {self.directory} is held by another process ({holder}); "
                        "stop it, or run this command through it"
                    ) from None
                if not waited:
                    log.info("the log at %s is held by another process; waiting up to %.0f s", self.directory, timeout)
                    waited = True
                time.sleep(0.05)
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            self._unlock()  # a full disk: nobody must be left holding the lock
            raise

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @staticmethod
    def _lock_holder(fd: int, path: Path) -> str:
        """'pid N' from the lock file; the holder writes it right after taking the lock, so an
        empty file is retried for a moment."""
        for _ in range(20):
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text.isdigit():
                return f"pid {text}"
            time.sleep(0.01)
        return f"it has not written its pid to {path}"

    # -- topics --

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, Any] | None = None) -> Topic:
        validate_topic_name(name)
        if type(partitions) is not int or partitions < 1:
            raise ConfigError(f"topic {name!r}: partitions must be at least 1, got {partitions!r}")
        if name in self.topics:
            raise TopicExistsError(f"topic {name!r} already exists")
        settings = TopicSettings.parse(config or {}, name)
        directory = self.topics_dir / name
        if directory.exists():  # a half-created topic from a crash
            shutil.rmtree(directory)
        Topic.write_meta(directory, partitions, settings)
        topic = Topic(directory, writable=True)
        self.topics[name] = topic
        return topic

    def alter_topic(
        self, name: str, partitions: int, config: dict[str, Any] | None = None
    ) -> dict[str, tuple[object, object]]:
        """Make an existing topic's settings those given (defaults for what is not given).

        The partition count is not changed: that would move keys to other
        partitions and break their order, so a different count is an error.
        """
        topic = self.topic(name)
        if partitions != len(topic.partitions):
            raise ConfigError(
                f"topic {name!r} has {len(topic.partitions)} partitions in the log at {self.directory}, "
                f"but {partitions} are declared; changing the count would move keys between partitions "
                f"(declare {len(topic.partitions)}, or create a new topic)"
            )
        return topic.alter(TopicSettings.parse(config or {}, name))

    def delete_topic(self, name: str) -> None:
        topic = self.topic(name)
        topic.close()
        del self.topics[name]
        trash = self.directory / f".deleted-{name}-{time.time_ns()}"
        fsio.replace(topic.directory, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def topic(self, name: str) -> Topic:
        validate_topic_name(name)
        try:
            return self.topics[name]
        except KeyError:
            if not self.writable and (self.topics_dir / name / TOPIC_FILE).exists():
                topic = Topic(self.topics_dir / name, writable=False)
                self.topics[name] = topic
                return topic
            raise UnknownTopicError(f"unknown topic {name!r}") from None

    def partition(self, topic: str, partition: int) -> Partition:
        partitions = self.topic(topic).partitions
        if not 0 <= partition < len(partitions):
            raise UnknownTopicError(f"topic {topic!r} has no partition {partition} (it has {len(partitions)})")
        return partitions[partition]

    def partitions(self) -> list[Partition]:
        return [p for topic in self.topics.values() for p in topic.partitions]

    # -- repair --

    def repair(self, topic: str, partition: int | None, action: Literal["restore", "discard"],
               progress: Progress | None = None) -> list[str]:
        """Put back (``restore``) or delete for good (``discard``) what recovery moved into
        quarantine, for one partition or all of the topic's; returns one line per partition acted on.

        Restore checks the quarantined segments first (every batch, with its CRC)
        and refuses while they are still damaged: useful once the cause (a disk, a
        bad copy) is fixed. Offsets are never reused, so new records written since
        do not stand in the way. ``progress`` counts the bytes checked of all to check.
        """
        if not self.writable:
            raise LogLockedError(f"cannot repair {topic!r}: the log at {self.directory} is open read-only")
        chosen = self.topic(topic)
        numbers = range(len(chosen.partitions)) if partition is None else [self.partition(topic, partition).partition]
        done: list[str] = []
        if progress is not None and action == "restore":
            progress.total = sum(path.stat().st_size for number in numbers
                                 for event in chosen.partitions[number].quarantined()
                                 for path in Path(event["folder"]).glob("*.log"))
        for number in numbers:
            part = chosen.partitions[number]
            events = part.quarantined()
            if not events:
                continue
            if action == "discard":
                part.discard_quarantine()
                done.append(f"{part.name}: discarded " + ", ".join(Path(e["folder"]).name for e in events))
                continue
            part.restore_quarantine(progress)
            reopened = Partition(part.directory, part.topic, part.partition, part.settings, writable=True)
            reopened.rebuild_producer_state()
            chosen.partitions[number] = reopened
            done.append(f"{part.name}: restored " + ", ".join(Path(e["folder"]).name for e in events)
                        + f"; offsets {reopened.log_start_offset}..{reopened.log_end_offset - 1} are readable")
        return done

    # -- lifecycle --

    def flush(self) -> None:
        for partition in self.partitions():
            partition.flush()

    def close(self) -> None:
        try:
            for topic in self.topics.values():
                topic.close()
            failed = [p.name for p in self.partitions() if p._open_failed]
            if failed:
                log.warning("%s: opening %s at first use failed; the next open recovers them",
                            self.directory, ", ".join(failed))
            if self.writable and self._lock_fd >= 0 and not failed:
                ongoing: dict[str, list[int]] = {}
                for topic in self.topics.values():
                    numbers = [p.partition for p in topic.partitions if p.ongoing_producers()]
                    if numbers:
                        ongoing[topic.name] = numbers
                fsio.write_file(self.directory / CLEAN_SHUTDOWN, orjson.dumps({"ongoing": ongoing}), sync=False)
        finally:
            self._unlock()  # also when a flush failed: the next open recovers (no clean-shutdown marker)
