"""Segment files opened on demand, at most a bounded number at once, least recently used closed first.

A log of years holds tens of thousands of segments; a descriptor each from
start-up passed the common soft limit of 1,024 (``Too many open files``) at a
few thousand segments or partitions. Kafka keeps every segment open and asks
for a large ``ulimit -n``; millpond opens a segment's ``.log`` when it is read
or written and keeps at most ``capacity()`` open per process (its indexes are
read whole into memory, so they hold none).

The cache is shared by the event loop and the compaction thread. A descriptor in
use (between ``acquire`` and ``release``) is never closed: closing it could let
the next open reuse its number, and the other thread would read another file. A
deleted segment leaves the cache with its descriptor (``pin``), so a reader that
holds it reads the old bytes until it lets the segment go, as before.
"""

from __future__ import annotations

import resource
import threading
from collections import OrderedDict
from typing import Protocol

from . import fsio

#: the most descriptors the cache keeps, whatever the limit allows
MAX_OPEN = 4096
#: the least, whatever the limit: below this, reads reopen files all the time
MIN_OPEN = 32


class Opens(Protocol):
    """What the cache needs of a segment."""

    _fd: int
    _users: int

    def _open_file(self) -> int: ...


def capacity() -> int:
    """A quarter of the soft limit on open files (sockets, checkpoints and the rest need the others),
    between ``MIN_OPEN`` and ``MAX_OPEN``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_OPEN
    return max(MIN_OPEN, min(MAX_OPEN, soft // 4))


class Descriptors:
    def __init__(self, limit: int | None = None) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[Opens, None] = OrderedDict()
        self._limit = limit

    @property
    def limit(self) -> int:
        if self._limit is None:
            self._limit = capacity()  # after the store raised the soft limit
        return self._limit

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, owner: Opens) -> int:
        """``owner``'s descriptor, opened if it is not; not closed until ``release``.

        Files are opened and closed outside the lock: a thread stopped inside an open (a crash
        test's simulated power cut does that) must not stop every other segment's reads.
        """
        with self._lock:
            owner._users += 1
            fd = owner._fd
            if fd >= 0:
                if owner in self._open:
                    self._open.move_to_end(owner)
                return fd
            victims = self._evict(self.limit - 1) if len(self._open) >= self.limit else None
        if victims:
            self._close(victims)
        try:
            fd = owner._open_file()
        except BaseException:
            self.release(owner)
            raise
        with self._lock:
            if owner._fd >= 0:  # another thread opened it meanwhile
                fd, extra = owner._fd, fd
            else:
                owner._fd, extra = fd, -1
                self._open[owner] = None
        if extra >= 0:
            fsio.close(extra)
        return fd

    def release(self, owner: Opens) -> None:
        with self._lock:
            owner._users -= 1

    def adopt(self, owner: Opens) -> None:
        """Count a descriptor the owner opened itself (a new segment's file, created)."""
        with self._lock:
            victims = self._evict(self.limit - 1)
            self._open[owner] = None
        self._close(victims)

    def pin(self, owner: Opens) -> None:
        """Take ``owner`` out of the cache; its descriptor (if open) stays open until the owner closes it."""
        with self._lock:
            self._open.pop(owner, None)

    def forget(self, owner: Opens) -> None:
        """``owner`` closes its descriptor itself."""
        with self._lock:
            self._open.pop(owner, None)

    def _evict(self, keep: int) -> list[tuple[Opens, int]]:
        """Take the least recently used descriptors not in use out until at most ``keep`` are open;
        the caller closes them (``_close``) once it let go of the lock."""
        victims: list[tuple[Opens, int]] = []
        while len(self._open) > keep:
            for victim in self._open:  # oldest first; one in use is passed over
                if not victim._users:
                    break
            else:
                break  # all in use: go over the limit for a moment rather than close one being read
            del self._open[victim]
            victims.append((victim, victim._fd))
            victim._fd = -1
        return victims

    @staticmethod
    def _close(victims: list[tuple[Opens, int]]) -> None:
        for _, fd in victims:
            if fd >= 0:
                fsio.close(fd)

#: the process's cache: every segment of every store
descriptors = Descriptors()
