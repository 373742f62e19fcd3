"""``millpond top --once`` against a running worker, its figures checked against the API.

The worker runs in-process (embedded log, file source -> file sink, API on a free
loopback port) while lines keep arriving; ``millpond top`` runs as a real
subprocess that finds the worker from the log directory, as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from millpond.api.client import WorkerClient
from millpond.api.ui import Views
from millpond.cli import main
from millpond.top import View, fmt_count, fmt_rate, fmt_time
from tests.api.test_worker_api import Running, drained, go, running, until


async def feed(path: Path, stop: asyncio.Event) -> None:
    """Keep appending lines so that the rates are not zero while top looks."""
    n = 0
    while not stop.is_set():
        with path.open("a") as f:
            f.write("".join(f"more {n + i}\n" for i in range(50)))
        n += 50
        await asyncio.sleep(0.05)


async def flowing(w: Running) -> bool:
    samples = (await w.get("/history"))["samples"]
    if len(samples) < 2:
        return False
    c = samples[-1]["connectors"]
    return all((c[n]["rate_out"] or 0) > 0 for n in ("tail", "out"))


def rows(text: str, header: str) -> list[list[str]]:
    """The rows of the table whose header line starts with ``header``, split on runs of spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [header])
    out = []
    for line in lines[start + 2:]:  # past the header and its rule
        if not line.strip():
            break
        out.append(re.split(r"\s{2,}", line.strip()))
    return out


def test_top_once_prints_each_connector_with_the_apis_state_and_rates(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            stop = asyncio.Event()
            feeder = asyncio.create_task(feed(w.input, stop))
            try:
                await until(lambda: flowing(w), "both connectors to move records", timeout=30)
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "millpond.cli", "top", "--once", "--log", str(w.log_dir),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
                out, err = await proc.communicate()
                assert proc.returncode == 0, err.decode()
                counted = await w.metric("millpond_task_records_out_total", connector="tail", task="0")
                history = (await w.get("/history"))["samples"]
            finally:
                stop.set()
                await feeder
        text = out.decode()
        assert all(len(line) <= 80 for line in text.splitlines()), text
        shown = re.search(r"sample (\S+)", text)
        assert shown, text
        i = next(i for i, s in enumerate(history) if fmt_time(s["time"]) == shown[1])
        sample, before = history[i], history[i - 1]
        table = {r[0]: r for r in rows(text, "CONNECTOR")}
        assert sorted(table) == ["out", "tail"], text
        for name, c in sample["connectors"].items():
            _, kind, state, rate_in, rate_out, total, errors, dead, restarts = table[name]
            assert (kind, state) == (c["type"], "RUNNING") and c["state"] == "RUNNING"
            assert (rate_in, rate_out, total) == (fmt_rate(c["rate_in"]), fmt_rate(c["rate_out"]),
                                                  fmt_count(c["records_out"]))
            assert float(rate_out.replace(",", "")) > 0
            # the API's rate is the counts' change over the two samples' times
            dt = sample["time"] - before["time"]
            expected = (c["records_out"] - before["connectors"][name]["records_out"]) / dt
            assert abs(c["rate_out"] - expected) <= 0.051
            assert (errors, dead, restarts) == ("0", "0", "0")
        assert counted is not None and sample["connectors"]["tail"]["records_out"] <= counted
        lag = rows(text, "GROUP")
        assert [r[:6] for r in lag] == [
            ["out", g["topic"], str(g["partition"]), str(g["committed"]), str(g["log_end_offset"]), str(g["lag"])]
            for g in sample["lag"]]
        topics = {r[0]: r for r in rows(text, "TOPIC")}
        assert topics["lines"][1:3] == ["1", fmt_count(sample["topics"]["lines"]["records"])]

    go(scenario())


def test_a_first_sample_shows_no_rate_and_a_missing_worker_is_one_line(
        tmp_path: Path, capsys: Any) -> None:
    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: flowing_once(w), "records to move")
            first = await Views(w.worker).sample()  # a sampler of its own: no predecessor
        assert all(c["rate_in"] is None and c["rate_out"] is None for c in first["connectors"].values())
        view = View(WorkerClient("http://127.0.0.1:1"))  # rendering only: no call is made
        view.samples.append(first)
        buf = io.StringIO()
        Console(file=buf, width=80, no_color=True).print(view.render())
        table = {r[0]: r for r in rows(buf.getvalue(), "CONNECTOR")}
        assert table["tail"][3:5] == ["-", "-"], buf.getvalue()
        assert "0.0" not in " ".join(table["tail"][3:5])

    go(scenario())
    assert main(["top", "--once", "--log", str(tmp_path / "log")]) == 1  # the worker has stopped
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no worker runs on the log {tmp_path / 'log'}" in err[0], err


async def flowing_once(w: Running) -> bool:
    return bool(await w.metric("millpond_task_records_out_total", connector="out", task="0"))


def test_keys_pause_and_resume_the_selected_connector(tmp_path: Path) -> None:
    """The live view in a pseudo-terminal: ``2`` selects the second connector, ``p`` / ``r`` act on it."""

    async def scenario() -> None:
        async with running(tmp_path) as w:
            await until(lambda: flowing_once(w), "records to move")
            fd, tty_end = pty.openpty()  # top's terminal: 80 columns, keys typed into it
            proc = subprocess.Popen([sys.executable, "-m", "millpond.cli", "top", "--log", str(w.log_dir)],
                                    stdin=tty_end, stdout=tty_end, stderr=tty_end, start_new_session=True,
                                    env={**os.environ, "COLUMNS": "80", "LINES": "40"})
            os.close(tty_end)
            os.set_blocking(fd, False)
            screen = bytearray()

            async def shown(text: str) -> bool:
                with contextlib.suppress(BlockingIOError, OSError):
                    screen.extend(os.read(fd, 65536))
                return text.encode() in screen

            async def state(name: str) -> str:
                return str((await w.get(f"/connectors/{name}/status"))["connector"]["state"])

            try:
                await until(lambda: shown("q quit"), "top to draw")
                os.write(fd, b"2p")
                await until(lambda: shown("pause out: done"), "top to say the pause is done")
                assert (await state("out"), await state("tail")) == ("PAUSED", "RUNNING")
                os.write(fd, b"r")
                await until(lambda: shown("resume out: done"), "top to say the resume is done")
                assert await state("out") == "RUNNING"
                os.write(fd, b"q")
                deadline = time.monotonic() + 10
                while proc.poll() is None:
                    assert time.monotonic() < deadline, "top did not quit on q"
                    await shown("")
                    await asyncio.sleep(0.05)
                assert proc.returncode == 0, screen.decode(errors="replace")
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                os.close(fd)

    go(scenario())


def test_several_workers_show_together_and_a_key_acts_on_each(tmp_path: Path) -> None:
    """Two workers (``--api`` twice): each one's connectors under its id, with its own figures;
    pausing the selected connector pauses it on both."""

    async def scenario() -> None:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with running(tmp_path / "a") as a, running(tmp_path / "b") as b:
            for w in (a, b):
                await until(lambda w=w: drained(w), "every line to be written")
            now = time.time()  # from here on the counts stand still: wait for a sample that shows it
            for w in (a, b):
                await until(lambda w=w: sampled_after(w, now), "a sample after the drain")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "millpond.cli", "top", "--once", "--api", a.url, "--api", b.url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            text = out.decode()
            ids = [(await w.get("/"))["worker_id"] for w in (a, b)]
            table = rows(text, "CONNECTOR")
            assert [r[0] for r in table] == [f"@{ids[0]}", "tail", "out", f"@{ids[1]}", "tail", "out"], text
            for w, block in ((a, table[1:3]), (b, table[4:6])):
                sample = (await w.get("/history"))["samples"]
                counts = {n: c["records_out"] for n, c in sample[-1]["connectors"].items()}
                # the drained pipelines stand still: each worker's own totals, as its API says
                assert {r[0]: r[5] for r in block} == {n: fmt_count(v) for n, v in counts.items()}

            view = View([WorkerClient(a.url), WorkerClient(b.url)])
            await asyncio.to_thread(view.refresh)
            assert view.names == ["tail", "out"]
            view.key("2")
            view.key("p")
            for w in (a, b):
                await until(lambda w=w: state_is(w, "out", "PAUSED"), "out paused on each worker")
                assert (await w.get("/connectors/tail/status"))["connector"]["state"] == "RUNNING"
            await until(lambda: said(view, "pause out: done"), "top to say it is done")

    go(scenario())


async def sampled_after(w: Running, t: float) -> bool:
    samples = (await w.get("/history"))["samples"]
    return len(samples) >= 2 and samples[-1]["time"] > t


async def state_is(w: Running, name: str, state: str) -> bool:
    return bool((await w.get(f"/connectors/{name}/status"))["connector"]["state"] == state)


async def said(view: View, message: str) -> bool:
    return view.message == message
