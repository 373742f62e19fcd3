"""``millpond top``: a running worker at a glance, in a terminal (80 columns, over SSH).

Everything shown comes from the worker's API: the worker samples itself once a
second (``GET /history``) and computes the rates there, so ``top`` and the
dashboard agree, and a first sample that has no predecessor shows ``-``, not a
made-up ``0/s``. The live view is rich's ``Live`` redrawing in place; single
keys are read from the tty in a thread (no curses), so it works wherever rich
does. ``--once`` prints one snapshot as plain text for scripts and tests. Several
``--api`` show the workers of a cluster together (the Kafka backend).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import select
import sys
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import IO, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from .api.client import TOKEN_ENV, WorkerClient, find_worker
from .errors import MillpondError

DEFAULT_API = "127.0.0.1:8083"
#: samples kept for the lag trend (one a second)
TREND_SAMPLES = 30
SPARKS = "▁▂▃▄▅▆▇█"
KEYS = "↑↓/1-9 select  p pause  r resume  R restart  q quit"


class WorkerUnreachableError(MillpondError):
    """No worker to look at: none holds the log, or none answers."""

    retriable = True


def find_api(api: str | None, log_dir: str | None, token: str | None = None) -> WorkerClient:
    """The worker to show: at ``--api`` as given, else the one holding ``log_dir``, else the default address."""
    if api:
        return WorkerClient(api if "://" in api else f"http://{api}", token=token)
    if log_dir:
        found = find_worker(log_dir)
        if found is None:
            raise WorkerUnreachableError(f"no worker runs on the log {log_dir} (no process holds it); "
                                         "start one with millpond run, or give --api HOST:PORT")
        return WorkerClient(found.url, found.pid, token or found.token)
    return WorkerClient(f"http://{DEFAULT_API}", token=token)


# -- formatting ----------------------------------------------------------------------


def fmt_rate(rate: float | None) -> str:
    """Records per second as top prints them; ``-`` where there is no rate yet."""
    if rate is None:
        return "-"
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def fmt_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= 10 * size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def fmt_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def fmt_time(t: float) -> str:
    """A sample's time as top prints it (UTC, milliseconds): scripts match it against ``/history``."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sparkline(values: list[int]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1
    return "".join(SPARKS[0] if high == low else SPARKS[(v - low) * (len(SPARKS) - 1) // span] for v in values)


def trend(values: list[int]) -> str:
    """The lag's last samples as a sparkline, and its change over them (``+120``, ``-50``, ``=``)."""
    if len(values) < 2:
        return "-"
    change = values[-1] - values[0]
    return f"{sparkline(values[-12:])} {'=' if change == 0 else f'{change:+,}'}"


_STATE_STYLE = {"RUNNING": "green", "PAUSED": "yellow", "STOPPED": "yellow", "FAILED": "bold red",
                "UNASSIGNED": "dim"}


# -- the view --------------------------------------------------------------------------


class Source:
    """One worker as top sees it: its API, identity, samples so far, and why it is not answering."""

    def __init__(self, api: WorkerClient) -> None:
        self.api = api
        self.root: dict[str, Any] = {}
        self.samples: deque[dict[str, Any]] = deque(maxlen=TREND_SAMPLES)
        self.failures: dict[str, str] = {}
        self.error: str | None = None

    def refresh(self) -> None:
        if not self.root:
            self.root = self.api.request("GET", "/")
        since = f"?since={self.samples[-1]['time']}" if self.samples else ""
        self.samples.extend(self.api.request("GET", f"/history{since}")["samples"])
        self.failures = {}
        for name, c in self.latest.get("connectors", {}).items():
            if c["state"] == "FAILED" or "FAILED" in c.get("task_states", []):
                status = self.api.request("GET", f"/connectors/{name}/status")
                traces = [t.get("trace", "") for t in status["tasks"] if t.get("trace")]
                self.failures[name] = traces[0].strip().splitlines()[-1] if traces else "failed"
        self.error = None

    @property
    def latest(self) -> dict[str, Any]:
        return self.samples[-1] if self.samples else {}

    @property
    def label(self) -> str:
        return str(self.root.get("worker_id") or self.api.url)


class View:
    """What top knows about one worker, or several running the same pipeline (a cluster on Kafka).

    Connectors are listed per worker (a connector's tasks can be spread over workers); lag and topics
    are the log's, the same from every worker, so they are shown once, from the newest sample.
    A key acts on the selected connector on every worker that runs it.
    """

    def __init__(self, apis: WorkerClient | list[WorkerClient]) -> None:
        self.sources = [Source(a) for a in (apis if isinstance(apis, list) else [apis])]
        self.selected = 0
        self.message = ""

    def refresh(self) -> None:
        """Ask every worker; one that does not answer is shown as such, unless none answers."""
        for source in self.sources:
            try:
                source.refresh()
            except MillpondError as exc:
                if len(self.sources) == 1:
                    raise
                source.error = str(exc)
        if all(s.error for s in self.sources):
            raise WorkerUnreachableError("; ".join(str(s.error) for s in self.sources))

    @property
    def samples(self) -> deque[dict[str, Any]]:
        """The samples of the worker that sampled last (one worker: its samples)."""
        newest = max(self.sources, key=lambda s: s.latest.get("time", 0.0))
        return newest.samples

    @property
    def latest(self) -> dict[str, Any]:
        return self.samples[-1] if self.samples else {}

    @property
    def names(self) -> list[str]:
        names: dict[str, None] = {}
        for source in self.sources:
            names.update(dict.fromkeys(source.latest.get("connectors", {})))
        return list(names)

    def render(self, *, interactive: bool = False) -> RenderableType:
        latest = self.latest
        cluster = len(self.sources) > 1
        head = Text()
        head.append("millpond top", style="bold")
        pipeline = next((s.root["pipeline"] for s in self.sources if s.root.get("pipeline")), "")
        if cluster:
            head.append(f"  {pipeline}  {len(self.sources)} workers")
            for source in self.sources:
                head.append(f"\n  {source.label}  {source.api.url}")
                if source.error:
                    head.append(f"  {source.error}", style="red")
        else:
            source = self.sources[0]
            head.append(f"  {pipeline}  {source.api.url}  worker {source.root.get('worker_id', '?')}")
        head.append(f"\nsample {fmt_time(latest['time'])}" if latest else "\nno sample yet (the worker just started)")
        parts: list[RenderableType] = [head]

        conns = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False)
        for col, justify in (("CONNECTOR", "left"), ("TYPE", "left"), ("STATE", "left"), ("IN/s", "right"),
                             ("OUT/s", "right"), ("OUT", "right"), ("ERR", "right"), ("DLQ", "right"),
                             ("RST", "right")):
            conns.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        names = self.names
        chosen = names[min(self.selected, len(names) - 1)] if interactive and names else None
        for source in self.sources:
            if cluster:
                conns.add_row(Text(f"@{source.label}", style="dim"))
            for name, c in source.latest.get("connectors", {}).items():
                states = c.get("task_states", [])
                state = Text(c["state"], style=_STATE_STYLE.get(c["state"], ""))
                odd = [s for s in states if s != c["state"]]
                if odd:
                    state.append(f" ({len(odd)}/{len(states)} {odd[0]})", style="red")
                mark = ">" if name == chosen else " "
                conns.add_row(f"{mark}{name}", c["type"], state, fmt_rate(c.get("rate_in")),
                              fmt_rate(c.get("rate_out")), fmt_count(c["records_out"]), str(c["errors"]),
                              str(c["dead_letters"]), str(c["restarts"]), style="reverse" if name == chosen else "")
        parts.append(conns)
        for source in self.sources:
            for name, line in source.failures.items():
                where = f"@{source.label}" if cluster else ""
                parts.append(Text(f"{name}{where} FAILED: {line}", style="red"))

        lag = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col, justify in (("GROUP", "left"), ("TOPIC", "left"), ("P", "right"), ("COMMITTED", "right"),
                             ("END", "right"), ("LAG", "right"), ("TREND", "left")):
            lag.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        history: dict[tuple[str, str, int], list[int]] = {}
        for sample in self.samples:
            for g in sample.get("lag", []):
                history.setdefault((g["group"], g["topic"], g["partition"]), []).append(g["lag"])
        for g in latest.get("lag", []):
            lag.add_row(g["group"], g["topic"], str(g["partition"]),
                        "-" if g["committed"] is None else str(g["committed"]), str(g["log_end_offset"]),
                        str(g["lag"]), trend(history.get((g["group"], g["topic"], g["partition"]), [])))
        if latest.get("lag"):
            parts.append(lag)

        topics = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col, justify in (("TOPIC", "left"), ("PARTITIONS", "right"), ("RECORDS", "right"), ("SIZE", "right")):
            topics.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
        for name, t in latest.get("topics", {}).items():
            topics.add_row(name, str(t["partitions"]), fmt_count(t["records"]), fmt_bytes(t["size_bytes"]))
        if latest.get("topics"):
            parts.append(topics)
        if interactive:
            parts.append(Text(KEYS, style="dim"))
            if self.message:
                parts.append(Text(self.message, style="bold"))
        return Group(*parts)

    def act(self, key: str) -> None:
        """Pause, resume or restart the selected connector on every worker that runs it (in a thread)."""
        names = self.names
        if not names:
            return
        name = names[min(self.selected, len(names) - 1)]
        method, path, what = {"p": ("PUT", "pause", "pause"), "r": ("PUT", "resume", "resume"),
                              "R": ("POST", "restart?includeTasks=true", "restart")}[key]
        targets = [s.api for s in self.sources if name in s.latest.get("connectors", {})]

        def call() -> None:
            problems = []
            for api in targets:
                try:
                    api.request(method, f"/connectors/{name}/{path}")
                except MillpondError as exc:
                    problems.append(str(exc))
            self.message = f"{what} {name}: " + ("; ".join(problems) if problems else "done")

        self.message = f"{what} {name} ..."
        threading.Thread(target=call, daemon=True).start()

    def key(self, key: str) -> bool:
        """Handle one key; False to quit."""
        n = len(self.names)
        if key in ("q", "\x03"):
            return False
        if key in ("k", "UP") and n:
            self.selected = (self.selected - 1) % n
        elif key in ("j", "DOWN") and n:
            self.selected = (self.selected + 1) % n
        elif key.isdigit() and 1 <= int(key) <= n:
            self.selected = int(key) - 1
        elif key in ("p", "r", "R"):
            self.act(key)
        return True


def _read_keys(keys: queue.Queue[str], stop: threading.Event) -> None:
    """Single keys from the tty (cbreak mode, restored on exit); arrows arrive as UP / DOWN."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while not stop.is_set():
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            ch = os.read(fd, 1).decode(errors="replace")
            if ch == "\x1b":
                rest = os.read(fd, 2).decode(errors="replace") if select.select([fd], [], [], 0.05)[0] else ""
                ch = {"[A": "UP", "[B": "DOWN"}.get(rest, "")
            if ch:
                keys.put(ch)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def once(view: View, out: IO[str]) -> None:
    view.refresh()
    console = Console(file=out, width=80, no_color=True, highlight=False, force_terminal=False,
                      legacy_windows=False, emoji=False)
    console.print(view.render())


def live(view: View, interval: float) -> None:
    from rich.live import Live

    keys: queue.Queue[str] = queue.Queue()
    stop = threading.Event()
    reader = None
    if sys.stdin.isatty():
        reader = threading.Thread(target=_read_keys, args=(keys, stop), daemon=True)
        reader.start()
    view.refresh()
    try:
        with Live(view.render(interactive=True), auto_refresh=False, screen=False) as screen:
            next_poll = time.monotonic() + interval
            while True:
                with contextlib.suppress(queue.Empty):
                    if not view.key(keys.get(timeout=0.1)):
                        return
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + interval
                    try:
                        view.refresh()
                    except MillpondError as exc:
                        view.message = str(exc)
                screen.update(view.render(interactive=True), refresh=True)
    finally:
        stop.set()
        if reader is not None:
            reader.join(1.0)


def cmd_top(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    view = View([find_api(api, None, token) for api in args.api] if args.api else find_api(None, args.log, token))
    if args.once:
        once(view, sys.stdout)
        return 0
    try:
        live(view, args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0.1 and 3600")
    return value


def add_parser(sub: Any) -> None:
    """The ``top`` subcommand (``sub`` is the CLI's subparsers)."""
    p = sub.add_parser("top", help="a live view of a running worker: connectors, rates, lag, errors, log size",
                       description="Connectors and tasks with state, records/s in and out, lag per group and "
                       "partition with its trend, errors, dead letters and log size per topic, redrawn every "
                       f"second. Keys: {KEYS}.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--api", metavar="URL", action="append",
                       help=f"a worker's API; repeat it for each worker of a cluster "
                       f"(default: the worker on --log, else {DEFAULT_API})")
    where.add_argument("--log", metavar="DIR", default=os.environ.get("MILLPOND_LOG"),
                       help="find the worker that holds this embedded log (<DIR>/.worker.json)")
    p.add_argument("--token", help=f"the API's bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--once", action="store_true", help="print one snapshot as text and exit")
    p.add_argument("--interval", type=_seconds, default=1.0, metavar="S", help="seconds between redraws (default 1)")
    p.set_defaults(func=cmd_top)
