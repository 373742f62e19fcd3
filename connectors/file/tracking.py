"""What the file source knows of each file it tails: its identity and its place among a writer's rotations.

Split from ``source.py`` (which reads the files): a file is followed by
(dev, inode), its checkpoint entry is :meth:`TrackedFile.snapshot`, and
:func:`rotation_order` puts the rotations of one writer oldest first.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from typing import Any

FINGERPRINT_BYTES = 1024

#: a rotation suffix: ``.5`` (logrotate's numbers) or a date / date-time (``-20240501``, ``.2024-05-01_13``)
_ROTATION = re.compile(
    r"(?P<base>.+?)(?:[.](?P<number>\d{1,6})|[.\-_](?P<date>\d{4}-?\d{2}-?\d{2}(?:[T_\-]?\d{2}(?:[:\-]?\d{2}){0,2})?"
    r"|\d{10}))$"
)


def rotation_order(path: str) -> tuple[str, tuple[int, int, str]]:
    """(the writer's file name, an order among its rotations, oldest first).

    ``app.log.5`` < ``app.log.1`` < ``app.log``; ``app.log-20240501`` <
    ``app.log-20240502`` < ``app.log``. A numbered and a dated rotation of
    one writer (unusual) compare dated first.
    """
    m = _ROTATION.fullmatch(path)
    if m is None:
        return path, (2, 0, "")
    if m.group("number") is not None:
        return m.group("base"), (1, -int(m.group("number")), "")
    return m.group("base"), (0, 0, re.sub(r"\D", "", m.group("date")))


def kind_of(mode: int) -> str:
    """What a ``stat`` mode is, for a message about a path that is not a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(slots=True)
class TrackedFile:
    """One tailed file: where it is now, what it was first seen as (``origin``), how far it was read."""

    path: str
    origin: str
    dev: int
    inode: int
    position: int = 0
    #: complete lines before ``position``; None when unknown (a checkpoint from before it was kept)
    line: int | None = 0
    fp: int = 0
    fp_len: int = 0
    rotated: bool = False
    fd: int | None = None
    size: int = 0
    last_growth: float = 0.0
    matched: bool = True

    @property
    def ident(self) -> tuple[int, int]:
        return (self.dev, self.inode)

    def snapshot(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "origin": self.origin,
            "dev": self.dev,
            "inode": self.inode,
            "position": self.position,
            **({} if self.line is None else {"line": self.line}),
            "fp": self.fp,
            "fp_len": self.fp_len,
            "rotated": self.rotated,
        }
