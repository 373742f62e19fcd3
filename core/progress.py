"""One progress reporter for every long piece of work a user waits on.

A Postgres snapshot, a sink catching up a large lag, a compaction pass, a CLI
scan: each counts units of work against a total (or none) and reports the same
way. On a terminal it is a single-line bar on stderr with rate and estimate,
redrawn at most ~10 times a second and cleared at the end. Anywhere else (a pipe,
the worker's log) it is an INFO line every ``interval`` seconds, the first after
``first`` seconds, so work that ends quickly says nothing at all:

    snapshot of public.orders: 1.2M of about 3.4M rows (35%), 81,000 rows/s, about 27 s left

The rate is measured over the last ``window`` seconds of samples and always
between two real samples, the first of which is the start: a report never says
"0/s" only because it had no earlier sample to compare with.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import IO

from .units import human_bytes

__all__ = ["Progress", "format_count", "format_duration"]


def format_count(n: float) -> str:
    """``81,000`` below a million, ``1.2M`` / ``3.4G`` above: short enough for an 80-column bar."""
    n = round(n)
    if abs(n) < 1_000_000:
        return f"{n:,}"
    if abs(n) < 1_000_000_000:
        return f"{n / 1_000_000:.1f}M"
    return f"{n / 1_000_000_000:.1f}G"


def format_duration(seconds: float) -> str:
    """``27 s``, ``4 min 10 s``, ``2 h 5 min``: an estimate, so no more than two parts."""
    s = max(0, math.ceil(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        m, s = divmod(s, 60)
        return f"{m} min {s} s" if s else f"{m} min"
    h, rest = divmod(s, 3600)
    m = rest // 60
    return f"{h} h {m} min" if m else f"{h} h"


class Progress:
    """Counts units of work and reports them; see the module docstring.

    ``add`` and ``update`` are cheap between reports (a clock read and a
    compare), so callers may call them per batch without throttling themselves.
    ``count`` is the units done so far, ``total`` may be set or changed later
    (when it becomes known). ``tty`` forces the bar (True) or the lines (False);
    None asks the stream. With a ``logger`` the lines go to it at INFO instead
    of the stream (the worker's log), and there is no bar unless ``tty=True``.
    """

    def __init__(
        self,
        what: str,
        *,
        unit: str = "records",
        total: int | None = None,
        approximate: bool = False,
        stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
        tty: bool | None = None,
        interval: float = 10.0,
        first: float = 2.0,
        redraw: float = 0.1,
        width: int = 80,
        window: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.unit = unit
        self.total = total
        #: the total is an estimate ("of about"), and the count may pass it
        self.approximate = approximate
        self.stream = stream if stream is not None else sys.stderr
        self.logger = logger
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty()) if isatty is not None and logger is None else False
        self.tty = tty
        self.interval = interval
        self.redraw = redraw
        if tty:  # a narrower terminal than ``width``: fit it, or every redraw wraps onto a new line
            with contextlib.suppress(AttributeError, OSError, ValueError):
                columns = os.get_terminal_size(self.stream.fileno()).columns
                width = min(width, columns) if columns >= 20 else width  # 0: a pty that was never sized
        self.width = width
        self.window = window
        self.clock = clock
        self.count = 0
        self.started = clock()
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._next = self.started + (redraw if tty else first)
        self._drawn = False  # a bar is on the terminal line
        self.lines = 0  # reports made (lines logged or bars drawn)

    # -- counting --

    def add(self, n: int = 1) -> None:
        """``n`` more units are done."""
        self.update(self.count + n)

    def update(self, count: int) -> None:
        """``count`` units are done in all (for work that knows where it is rather than how much it did)."""
        self.count = count
        now = self.clock()
        if now >= self._next:
            self._report(now)

    # -- measuring --

    def rate(self, now: float | None = None) -> float | None:
        """Units per second over the last ``window`` seconds; None before any time has passed."""
        now = self.clock() if now is None else now
        samples = self._samples
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()  # keep one sample at or past the window's start
        then, before = samples[0]
        if now - then <= 0:
            return None
        return (self.count - before) / (now - then)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left at the current rate; None when there is no total or no rate to go by."""
        rate = self.rate(now)
        if self.total is None or not rate or rate <= 0 or (self.approximate and self.count > self.total):
            return None
        left = self.total - self.count
        return left / rate if left > 0 else None  # done: no "about 0 s left"

    def _amount(self, n: float) -> str:
        return human_bytes(int(n)) if self.unit == "bytes" else format_count(n)

    def _per_second(self, rate: float) -> str:
        if self.unit == "bytes":
            return f"{human_bytes(int(rate))}/s"
        return f"{format_count(rate)} {self.unit}/s"

    def text(self, now: float | None = None) -> str:
        """The line: ``what: done of total unit (pct%), rate, about N s left``."""
        now = self.clock() if now is None else now
        done = self._amount(self.count)
        unit = "" if self.unit == "bytes" else f" {self.unit}"
        parts: list[str]
        if self.total is not None and (self.total >= self.count or not self.approximate):
            about = "about " if self.approximate else ""
            pct = min(100, self.count * 100 // self.total) if self.total else 100
            parts = [f"{self.what}: {done} of {about}{self._amount(self.total)}{unit} ({pct}%)"]
        else:
            parts = [f"{self.what}: {done}{unit}"]
        rate = self.rate(now)
        if rate is not None:
            parts.append(self._per_second(rate))
        left = self.remaining(now)
        if left is not None:
            parts.append(f"about {format_duration(left)} left")
        return ", ".join(parts)

    def _short(self, n: float) -> str:
        """A bar's amounts: ``950``, ``50.0k``, ``1.2M`` (bytes as ``human_bytes``), so the label keeps its room."""
        if self.unit == "bytes":
            return human_bytes(int(n))
        return f"{n:,.0f}" if abs(n) < 10_000 else format_count(n) if abs(n) >= 1_000_000 else f"{n / 1000:.1f}k"

    def bar(self, now: float | None = None) -> str:
        """The terminal form, at most ``width - 1`` columns (the last column would wrap on some terminals):
        ``consumed from ev [#####.....]  48% 24.1k/~50.0k 70.2k/s ETA 1 s``."""
        now = self.clock() if now is None else now
        rate = self.rate(now)
        tail: list[str] = []
        if self.total is not None:
            about = "~" if self.approximate else ""
            tail.append(f"{self._short(self.count)}/{about}{self._short(self.total)}")
        else:
            tail.append(f"{self._short(self.count)}{'' if self.unit == 'bytes' else ' ' + self.unit}")
        if rate is not None:
            tail.append(f"{self._short(rate)}/s")
        left = self.remaining(now)
        if left is not None:
            tail.append(f"ETA {format_duration(left)}")
        right = " ".join(tail)
        limit = self.width - 1
        if self.total:
            fraction = min(1.0, self.count / self.total)
            pct = f"{int(fraction * 100):3d}%"
            room = limit - len(right) - len(pct) - 5  # " [" and "] " around the bar, a space after pct
            cells = max(16, room - len(self.what))
            label = self.what if len(self.what) <= room - cells else self.what[:max(0, room - cells - 2)] + ".."
            if room - len(label) >= 10:
                cells = room - len(label)
                filled = int(fraction * cells)
                return f"{label} [{'#' * filled}{'.' * (cells - filled)}] {pct} {right}"[:limit]
        return f"{self.what}: {right}"[:limit]

    # -- reporting --

    def _report(self, now: float) -> None:
        if self.tty:
            self.stream.write("\r" + self.bar(now) + "\033[K")
            self.stream.flush()
            self._drawn = True
            self._next = now + self.redraw
        else:
            line = self.text(now)
            if self.logger is not None:
                self.logger.info("%s", line)
            else:
                print(line, file=self.stream, flush=True)
            self._next = now + self.interval
        self.lines += 1
        self._samples.append((now, self.count))

    def close(self, line: str | None = None) -> None:
        """The work ended: clear the bar, and write ``line`` (if any) in its place."""
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False
        if line is not None:
            if self.logger is not None and not self.tty:
                self.logger.info("%s", line)
            else:
                print(line, file=self.stream)
        self.stream.flush()
        self._next = math.inf  # nothing more after the end

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """Clear the bar, also when the work failed (its error line then starts on a clean line)."""
        if self._next != math.inf:
            self.close()

    async def __aenter__(self) -> Progress:  # beside an async resource: ``async with opened(...) as b, progress:``
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)

    def done(self, suffix: str = "") -> None:
        """Close with the CLI's closing line: ``what: N unit`` and ``suffix``."""
        self.close(f"{self.what}: {self.count:,} {self.unit}{suffix}")
