"""The log store: one directory holding every topic, owned by one writing process.

Layout::

    <dir>/.lock                    writer lock (flock) with the holder's PID
    <dir>/.clean_shutdown          present only after a clean close
    <dir>/topics/<topic>/topic.json
    <dir>/topics/<topic>/<partition>/<segments, checkpoint, aborted index>

Any number of read-only stores may open the same directory while a writer
runs; they see what the writer has appended (see ``Partition.refresh``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LogLockedError, TopicExistsError, UnknownTopicError
from . import fsio
from .partition import Partition
from .settings import TopicSettings, validate_topic_name
from .topic import TOPIC_FILE, Topic

CLEAN_SHUTDOWN = ".clean_shutdown"
LOCK = ".lock"


class LogStore:
    def __init__(self, directory: str | Path, *, writable: bool = True) -> None:
        self.directory = Path(directory)
        self.writable = writable
        self.topics_dir = self.directory / "topics"
        self._lock_fd = -1
        if writable:
            fsio.mkdir(self.topics_dir, parents=True, exist_ok=True)
            self._lock()
            marker = self.directory / CLEAN_SHUTDOWN
            self.clean_shutdown = marker.exists() or not any(self.topics_dir.iterdir())
            if marker.exists():
                fsio.unlink(marker)
                # Gone for good before anything is written: a marker back after a power cut would
                # make the next open skip recovery and serve a torn tail.
                fsio.fsync_dir(self.directory)
        else:
            if not self.topics_dir.is_dir():
                raise UnknownTopicError(f"no millpond log at {self.directory}")
            self.clean_shutdown = True
        self.topics: dict[str, Topic] = {}
        for path in sorted(self.topics_dir.iterdir()) if self.topics_dir.is_dir() else ():
            if (path / TOPIC_FILE).exists():
                self.topics[path.name] = Topic(path, writable=writable, clean_shutdown=self.clean_shutdown)

    def _lock(self) -> None:
        path = self.directory / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LogLockedError(
                f"the log at {self.directory} is held by another process (pid {holder}); "
                "stop it, or run this command through it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    # -- topics --

    def create_topic(self, name: str, partitions: int = 1, config: dict[str, Any] | None = None) -> Topic:
        validate_topic_name(name)
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

    # -- lifecycle --

    def flush(self) -> None:
        for partition in self.partitions():
            partition.flush()

    def close(self) -> None:
        for topic in self.topics.values():
            topic.close()
        if self.writable and self._lock_fd >= 0:
            fsio.write_file(self.directory / CLEAN_SHUTDOWN, b"", sync=False)
            os.close(self._lock_fd)
            self._lock_fd = -1
