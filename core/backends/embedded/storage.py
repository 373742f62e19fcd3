"""OS errors on the log's write path, as the errors the runtime acts on.

The log's files are written by ``os.pwrite``, ``os.fsync``, ``os.replace`` and
file objects deep inside ``millpond.log``; an ``OSError`` from there says
little (``[Errno 28] No space left on device``, often without a file name).
The embedded backend's producer and coordinators wrap every write they start
in :func:`storage_errors`, so the runtime sees one of two errors:

- ``DiskFullError`` for ENOSPC and EDQUOT, naming the path and the free space,
  so it can pause and say once, plainly, that the disk is full;
- ``StorageError`` for any other failed write (EIO, EROFS, ...), naming the path.

Both are retriable. Errors millpond raised on purpose pass through unchanged.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import DiskFullError, StorageError
from ...units import human_bytes

if TYPE_CHECKING:
    from ...log.partition import Partition

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (the path itself may not exist yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def storage_error(exc: OSError, path: Path | str) -> StorageError:
    """The ``StorageError`` (or ``DiskFullError``) for ``exc`` raised while writing ``path``.

    The file name in ``exc`` wins when it has one (``open`` sets it; ``pwrite``
    and ``fsync`` do not, so ``path`` names what was being written).
    """
    where = Path(os.fsdecode(exc.filename)) if exc.filename else Path(path)
    reason = exc.strerror or str(exc)
    if exc.errno in DISK_FULL_ERRNOS:
        mount = mount_point(where)
        try:
            free = shutil.disk_usage(mount).free
        except OSError:
            free = 0
        return DiskFullError(
            f"disk full writing {where} ({human_bytes(free)} free on {mount})", path=str(where), free_bytes=free
        )
    return StorageError(f"cannot write {where}: {reason} (errno {exc.errno})", path=str(where))


@contextmanager
def storage_errors(path: Path | str | Callable[[], Path | str]) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into ``StorageError`` / ``DiskFullError``.

    ``path`` names what the block writes, for errors that carry no file name;
    a callable is asked only when an error happens (a partition's active
    segment may change inside the block).
    """
    try:
        yield
    except OSError as exc:
        raise storage_error(exc, path() if callable(path) else path) from exc


def partition_writes(partition: Partition) -> AbstractContextManager[None]:
    """:func:`storage_errors` for writes to ``partition``, naming its active segment."""
    return storage_errors(lambda: partition.active_segment.log_path)
