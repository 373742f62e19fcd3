"""Durable file I/O: the one door every write of the log and of the file sink goes through.

A process kill cannot show a missing fsync (the kernel still writes out what
the process had written); a power cut can. So every operation that decides
what survives a power cut — open/create, write, pwrite, truncate, fsync,
rename, unlink, mkdir and the fsync of a directory — is a function here, and
the crash tests (``tests/crash/``) record them to build the states a power cut
could leave.

In production each function is the ``os`` call plus one test of the
module-level ``recorder`` (None). A test installs a :class:`Recorder` there; it
is told of each operation after the operating system carried it out.

The rules the callers follow (what the crash tests check):

- data is fsynced before any file that claims it (a checkpoint, a rename);
- a new or renamed name is durable only after its directory is fsynced
  (:func:`fsync_dir`), so whoever creates a file that a later durable claim
  depends on fsyncs the directory first;
- a whole file that must be all-or-nothing is written to a temporary name,
  fsynced, renamed over the old one and the directory fsynced
  (:func:`replace_file`).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Protocol

StrPath = str | Path


class Recorder(Protocol):
    """What a crash test learns of each durable operation (called after it succeeded)."""

    def opened(self, fd: int, path: str, flags: int) -> None: ...
    def closed(self, fd: int) -> None: ...
    def pwrote(self, fd: int, data: bytes, offset: int) -> None: ...
    def truncated(self, fd: int, size: int) -> None: ...
    def synced(self, fd: int) -> None: ...
    def synced_dir(self, path: str) -> None: ...
    def renamed(self, source: str, target: str) -> None: ...
    def unlinked(self, path: str) -> None: ...
    def made_dir(self, path: str) -> None: ...


#: None in production; a crash test installs its recorder here
recorder: Recorder | None = None

#: test-only: fsyncs to leave out on purpose, by the ``why`` their callers give (segment, checkpoint,
#: checkpoint.dir, roll.dir, cleaned, swap.dir, file-sink, file-sink.dir), to prove the crash tests notice
skip_fsyncs: frozenset[str] = frozenset()


def open(path: StrPath, flags: int, mode: int = 0o644) -> int:  # noqa: A001 - os.open's twin
    fd = os.open(path, flags, mode)
    if recorder is not None:
        recorder.opened(fd, os.fspath(path), flags)
    return fd


def close(fd: int) -> None:
    os.close(fd)
    if recorder is not None:
        recorder.closed(fd)


def pwrite(fd: int, data: bytes | bytearray | memoryview, offset: int) -> int:
    written = os.pwrite(fd, data, offset)
    if recorder is not None:
        recorder.pwrote(fd, bytes(memoryview(data)[:written]), offset)
    return written


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """pwrite until every byte is written (a short write is legal for regular files too)."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += pwrite(fd, view[written:], offset + written)


def ftruncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)
    if recorder is not None:
        recorder.truncated(fd, size)


def fsync(fd: int, *, why: str = "") -> None:
    """fsync ``fd``; ``why`` names the fsync for the test-only switch that removes it."""
    if why and why in skip_fsyncs:
        return
    os.fsync(fd)
    if recorder is not None:
        recorder.synced(fd)


def fdatasync(fd: int) -> None:
    os.fdatasync(fd)
    if recorder is not None:
        recorder.synced(fd)  # size changes are data: fdatasync makes them durable too


def fsync_dir(path: StrPath, *, why: str = "") -> None:
    """Make the names in directory ``path`` (created, renamed, removed) durable."""
    if why and why in skip_fsyncs:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if recorder is not None:
        recorder.synced_dir(os.fspath(path))


def replace(source: StrPath, target: StrPath) -> None:
    os.replace(source, target)
    if recorder is not None:
        recorder.renamed(os.fspath(source), os.fspath(target))


def place(source: StrPath, target: StrPath) -> bool:
    """Give ``source`` the name ``target`` unless a file of that name exists (False then, nothing moved).

    A hard link and an unlink, so an existing ``target`` is never replaced (``replace`` would);
    a file system without hard links falls back to a rename. Recorded as a rename: after a
    power cut the new name is there only if the folder was fsynced, like a rename's.
    """
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        os.rename(source, target)
    else:
        os.unlink(source)
    if recorder is not None:
        recorder.renamed(os.fspath(source), os.fspath(target))
    return True


def unlink(path: StrPath, *, missing_ok: bool = False) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
        return
    if recorder is not None:
        recorder.unlinked(os.fspath(path))


def mkdir(path: StrPath, *, parents: bool = False, exist_ok: bool = False) -> None:
    """mkdir (``parents``: each missing parent too), each new folder made durable in its parent."""
    path = Path(path)
    if parents and not path.parent.is_dir() and path.parent != path:
        mkdir(path.parent, parents=True, exist_ok=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not exist_ok or not path.is_dir():
            raise
        return
    if recorder is not None:
        recorder.made_dir(os.fspath(path))
    fsync_dir(path.parent)


# -- whole files --


def write_file(path: StrPath, data: bytes, *, sync: bool = True) -> None:
    """Create or truncate ``path`` and write ``data`` (fsynced unless ``sync`` is false)."""
    fd = open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        pwrite_all(fd, data, 0)
        if sync:
            fsync(fd)
    finally:
        close(fd)


def replace_file(path: StrPath, data: bytes, *, why: str = "") -> None:
    """Replace ``path`` by ``data`` all or nothing: temp file, fsync, rename, fsync of the folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        pwrite_all(fd, data, 0)
        fsync(fd, why=why)
    finally:
        close(fd)
    replace(tmp, path)
    fsync_dir(path.parent, why=why and why + ".dir")


def append_file(path: StrPath, data: bytes, *, sync: bool = False) -> None:
    """Append ``data`` to ``path`` (created if missing)."""
    fd = open(path, os.O_WRONLY | os.O_CREAT)
    try:
        pwrite_all(fd, data, os.fstat(fd).st_size)
        if sync:
            fsync(fd)
    finally:
        close(fd)


def sync_file(path: StrPath) -> None:
    """fsync a file by name (one another object wrote)."""
    fd = open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        close(fd)


class FileWriter:
    """A buffered, write-only file whose every write reaches the OS through this module.

    Stands in for ``open(path, "wb", buffering=...)`` where the bytes must be
    seen by the crash tests: a Python file object writes with its own C code.
    """

    __slots__ = ("path", "_fd", "_buffer", "_position", "_size")

    def __init__(self, path: StrPath, buffer_size: int = 1 << 20) -> None:
        self.path = os.fspath(path)
        self._fd = open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self._buffer = bytearray()
        self._position = 0
        self._size = buffer_size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        if len(self._buffer) >= self._size:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self._buffer:
            pwrite_all(self._fd, self._buffer, self._position)
            self._position += len(self._buffer)
            self._buffer.clear()

    def sync(self, *, why: str = "") -> None:
        self.flush()
        fsync(self._fd, why=why)

    def fileno(self) -> int:
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        if self._fd >= 0:
            try:
                self.flush()
            finally:
                close(self._fd)
                self._fd = -1

    def __del__(self) -> None:
        # dropped without close(): let the descriptor (and any lock on it) go, buffered bytes
        # lost as in a crash
        try:
            fd = self._fd
        except AttributeError:  # __init__ failed before opening
            return
        if fd >= 0:
            self._fd = -1
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
